"""Turns benchmark CSVs into a PNG.

splat.csv (post-conv benchmark): median time per provider, forward and full, one panel per CSV.
ops.csv (op-level benchmark, benchmarks/test_bench_ops.py): speedup over eager per shape, provider and dtype, one
panel per op x mode.

    python -m benchmarks.plot benchmarks/results/splat.csv [more.csv ...] -o benchmarks/results/splat.png
    python -m benchmarks.plot benchmarks/results/ops.csv -o benchmarks/results/ops.png
An existing PNG is refused unless --overwrite.
"""
import argparse
import os
import sys

from benchmarks import report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__)
    parser.add_argument("csv", nargs="+")
    parser.add_argument("-o", "--output", required=True, help="the .png to write")
    report.add_overwrite_argument(parser)
    args = parser.parse_args(argv)
    report.check_output_file(parser, args.output, "--output", args.overwrite, suffix=".png")
    tables = report.read_csvs(parser, args.csv, ("bench",))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = list(tables)
    ops_paths = [p for p in paths if {r.get("bench") for r in tables[p]} == {"splat_op"}]
    if ops_paths:
        if len(paths) != 1:
            parser.error(f"plot an op-level CSV ({ops_paths[0]}) on its own, one per output file")
        rows = [r for r in tables[ops_paths[0]] if r.get("bench") == "splat_op" and r.get("speedup_vs_eager")]
        if not rows:
            parser.error(f"{ops_paths[0]} has no op-level rows with a speedup (the eager provider must have run)")
        report.require_columns(parser, ops_paths[0], rows, OPS_COLUMNS)
        try:
            plot_ops(rows, args.output, plt)
        except ValueError as exc:  # a cell that is not a number
            parser.error(f"cannot plot {ops_paths[0]}: {exc}")
        return 0
    per_path = {}
    for path in paths:
        rows = [r for r in tables[path] if r.get("bench") == "splat_post_conv" and r.get("shape") == "issue"]
        report.require_columns(parser, path, rows, SPLAT_COLUMNS)
        per_path[path] = rows
    if not any(per_path.values()):
        parser.error(f"{', '.join(paths)}: no rows of the post-conv benchmark at the issue shape (bench "
                     "splat_post_conv, shape issue) and no op-level rows (bench splat_op)")
    try:
        plot_splat(per_path, args.output, plt)
    except ValueError as exc:  # a cell that is not a number
        parser.error(f"cannot plot {', '.join(paths)}: {exc}")
    return 0


def plot_splat(per_path, output, plt):
    """One panel per CSV: median ms per provider at the issue shape, forward and full."""
    fig, axes = plt.subplots(1, len(per_path), figsize=(6 * len(per_path), 4), squeeze=False)
    first = None
    for ax, (path, rows) in zip(axes[0], per_path.items()):
        if not rows:
            ax.set_title(f"{os.path.basename(path)}: no issue-shape rows")
            continue
        first = first or rows[0]
        providers = [p for p in ("eager", "compiled", "ours-cpu", "ours-cuda", "copy")
                     if any(r["provider"] == p for r in rows)]
        for i, mode in enumerate(("forward", "full")):
            vals = [next((_float(r, "median_ms") for r in rows if r["provider"] == p and r["mode"] == mode), 0.0)
                    for p in providers]
            xs = [j + 0.4 * i for j in range(len(providers))]
            bars = ax.bar(xs, vals, width=0.4, label=mode)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks([j + 0.2 for j in range(len(providers))], providers)
        ax.set_ylabel("median ms (lower is better)")
        ax.set_title(f"{rows[0]['y_shape']} fp32, malloc: {rows[0].get('malloc', '?')[:30]}", fontsize=8)
        ax.legend()
    fig.suptitle(f"split attention after the conv; {first.get('machine', '?')[:80]}; git {first.get('git', '?')}",
                 fontsize=8)
    fig.tight_layout()
    report.save_figure(fig, output)
    plt.close(fig)
    print(f"wrote {output}")


SPLAT_COLUMNS = ("provider", "mode", "median_ms", "y_shape")
OPS_COLUMNS = ("op", "mode", "shape", "provider", "dtype", "speedup_vs_eager")


def _float(row, column):
    """The number in a cell; an empty one (not measured) is no bar (0); ValueError naming the column otherwise."""
    value = report.cell_number(row, column)
    return 0.0 if value is None else value


def plot_ops(rows, output, plt):
    """One panel per (op, mode): speedup over eager (log scale) per shape, a bar per provider and dtype."""
    from matplotlib import ticker

    def ordered(key):
        return list(dict.fromkeys(r[key] for r in rows))

    ops, modes, shapes, dtypes = ordered("op"), ordered("mode"), ordered("shape"), ordered("dtype")
    providers = [p for p in ordered("provider") if p != "eager"]
    series = [(p, d) for p in providers for d in dtypes]
    width = 0.8 / len(series)
    fig, axes = plt.subplots(len(ops), len(modes), figsize=(max(6.0, 0.3 * len(shapes) * len(series)) * len(modes)
                                                           / 2 + 2, 3.2 * len(ops)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, op in enumerate(ops):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for k, (provider, dtype) in enumerate(series):
                xs, vals = [], []
                for n, shape in enumerate(shapes):
                    match = [r for r in rows if (r["op"], r["mode"], r["shape"], r["provider"], r["dtype"])
                             == (op, mode, shape, provider, dtype)]
                    if match:
                        xs.append(n + (k - (len(series) - 1) / 2) * width)
                        vals.append(_float(match[0], "speedup_vs_eager"))
                bars = ax.bar(xs, vals, width=width, color=colours[providers.index(provider) % len(colours)],
                              hatch="//" if dtype != dtypes[0] else None, edgecolor="white",
                              label=f"{provider} {dtype}")
                if len(shapes) <= 4:
                    ax.bar_label(bars, fmt="%.1f", fontsize=6)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")
            for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis_formatter(ticker.FormatStrFormatter("%g"))
            ax.set_xticks(range(len(shapes)), shapes, rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{op}, {mode}", fontsize=9)
            if j == 0:
                ax.set_ylabel("speedup over eager (x)")
            if i == 0 and j == len(modes) - 1:
                ax.legend(fontsize=7)
    fig.suptitle(f"split-attention ops vs mmseg eager (median time ratio; > 1 is faster); "
                 f"{rows[0].get('machine', '?')[:70]}; git {rows[0].get('git', '?')}", fontsize=8)
    fig.tight_layout()
    report.save_figure(fig, output)
    plt.close(fig)
    print(f"wrote {output}")


if __name__ == "__main__":
    sys.exit(main())
