"""Turns the model benchmark's CSVs (benchmarks/models.py) into one PNG for people to look at:
  fps per model and provider (mmseg's fps: timed iterations / their total time), each bar labelled with its speedup
  over the reference (ratio of medians); peak-memory growth of inference per model and provider; peak memory.
A module.csv from benchmarks/test_bench_module.py given too adds a panel: speedup over mmseg's block per shape,
provider and mode.

    python -m benchmarks.plot_models benchmarks/results/models*.csv -o benchmarks/results/models.png
    python -m benchmarks.plot_models benchmarks/results/models.csv benchmarks/results/module.csv -o both.png
Rows of several files (e.g. models.csv and models-tuned-malloc.csv) are told apart by their malloc setting; an empty
cell (a speedup without the reference provider) is left out of the labels. An existing PNG is refused unless
--overwrite.
"""
import argparse
import sys

from benchmarks import report

REFERENCES = ("mmseg", "reference-backend")
PROVIDER_ORDER = ("mmseg", "reference-backend", "ours", "ours-optimized", "mmseg-compiled",
                  "reference-backend-compiled", "ours-compiled", "ours-optimized-compiled")


BENCHES = ("eval_forward", "eval_peak_memory", "split_attention_block")
# the columns each kind of row must have to be drawn (models.py and benchmarks/test_bench_module.py write them)
COLUMNS = {"eval_forward": ("model", "input", "provider", "fps"),
           "eval_peak_memory": ("model", "input", "provider", "peak_mib", "growth_mib", "measure"),
           "split_attention_block": ("shape", "x_shape", "dilation", "mode", "provider", "median_ms")}


def read_rows(parser, paths):
    """All rows of the CSVs; parser.error (exit 2) naming the file when one is missing, not a readable CSV, lacks
    the columns of its rows' kind, or when none has benchmark rows."""
    tables = report.read_csvs(parser, paths, ("bench",))
    rows = []
    for path, table in tables.items():
        for bench, columns in COLUMNS.items():
            report.require_columns(parser, path, [r for r in table if r.get("bench") == bench], columns)
        rows += table
    if not any(r.get("bench") in BENCHES for r in rows):
        parser.error(f"{', '.join(paths)}: no model or module benchmark rows (bench column {', '.join(BENCHES)}): "
                     "run `python -m benchmarks.models` first")
    return rows


def _short(config):
    from benchmarks.models import short_name

    return short_name(config)


def _group_key(row, several_mallocs):
    label = _short(row["model"]).replace("-", "\n", 1) + "\n" + row["input"]
    if several_mallocs:
        label += "\n" + ("tuned malloc" if row.get("malloc", "glibc default") != "glibc default" else "glibc malloc")
    return label


def _providers(rows):
    seen = {r["provider"] for r in rows}
    return [p for p in PROVIDER_ORDER if p in seen] + sorted(seen - set(PROVIDER_ORDER))


def _grouped_bars(ax, groups, providers, value, label=None):
    """Bars of value(group, provider) (None: no bar), one cluster per group, one colour per provider."""
    width = 0.8 / max(len(providers), 1)
    for i, provider in enumerate(providers):
        xs, vals, labels = [], [], []
        for j, group in enumerate(groups):
            v = value(group, provider)
            if v is None:
                continue
            xs.append(j + i * width)
            vals.append(v)
            labels.append(label(group, provider) if label else f"{v:.3g}")
        bars = ax.bar(xs, vals, width=width, label=provider)
        ax.bar_label(bars, labels=labels, fontsize=6, rotation=90, padding=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups, fontsize=7)
    ax.margins(y=0.2)


def plot(rows, output):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several_mallocs = len({r.get("malloc", "") for r in rows}) > 1
    timing = [r for r in rows if r.get("bench") == "eval_forward"]
    memory = [r for r in rows if r.get("bench") == "eval_peak_memory"]
    module = [r for r in rows if r.get("bench") == "split_attention_block"]
    panels = [p for p, rs in (("fps", timing), ("growth", memory), ("peak", memory), ("module", module)) if rs]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 4.2 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        if panel == "fps":
            table = {(_group_key(r, several_mallocs), r["provider"]): r for r in timing}
            groups = list(dict.fromkeys(g for g, _ in table))
            _grouped_bars(ax, groups, _providers(timing),
                          lambda g, p: report.cell_number(table[g, p], "fps") if (g, p) in table else None,
                          lambda g, p: _fps_label(table[g, p]))
            ax.set_ylabel("fps, batch 1 (higher is better)")
            ax.set_title("eval forward; labels: fps and speedup over the reference (ratio of medians)", fontsize=9)
        elif panel in ("growth", "peak"):
            column = "growth_mib" if panel == "growth" else "peak_mib"
            table = {(_group_key(r, several_mallocs), r["provider"]): r for r in memory}
            groups = list(dict.fromkeys(g for g, _ in table))
            _grouped_bars(ax, groups, _providers(memory),
                          lambda g, p: report.cell_number(table[g, p], column) if (g, p) in table else None,
                          lambda g, p: f"{report.cell_number(table[g, p], column):.0f}")
            what = ("growth during inference (peak - after building), MiB" if panel == "growth" else
                    "peak during inference, MiB (includes the interpreter and the libraries)")
            ax.set_ylabel("MiB (lower is better)")
            ax.set_title(f"memory: {what}; {memory[0]['measure']}", fontsize=9)
        else:
            base = {(r["shape"], r["mode"], r.get("malloc", "")): report.cell_number(r, "median_ms") for r in module
                    if r["provider"] == "mmseg"}
            table = {}
            for r in module:
                key = (r["shape"], r["mode"], r.get("malloc", ""))
                ms = report.cell_number(r, "median_ms")
                if r["provider"] != "mmseg" and base.get(key) and ms:
                    group = f"{r['shape']}\n{r['x_shape']} d{r['dilation']}\n{r['mode']}"
                    table[group, r["provider"]] = base[key] / ms
            groups = list(dict.fromkeys(g for g, _ in table))
            providers = [p for p in dict.fromkeys(r["provider"] for r in module) if p != "mmseg"]
            if not table:
                ax.set_title("module.csv: no mmseg rows to compare with (mmseg was not installed)", fontsize=9)
                continue
            _grouped_bars(ax, groups, providers, lambda g, p: table.get((g, p)), lambda g, p: f"{table[g, p]:.2f}x")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_ylabel("speedup over mmseg's block")
            ax.set_title("SplitAttentionConv2d (conv included): mmseg's median / provider's median; "
                         "forward = eval, full = train forward + backward", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    first = rows[0]
    fig.suptitle(f"{first.get('machine', '?')[:90]}; torch {first.get('torch', '?')}; git {first.get('git', '?')}; "
                 f"{first.get('date', '?')}", fontsize=8)
    fig.tight_layout()
    report.save_figure(fig, output)
    plt.close(fig)


def _fps_label(row):
    fps, speedup = report.cell_number(row, "fps"), report.cell_number(row, "speedup_vs_reference")
    return f"{fps:.3g} fps" + (f", {speedup:.2f}x" if speedup is not None else "")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot_models", description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="+", help="CSVs written by benchmarks/models.py (and module.csv)")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    report.add_overwrite_argument(parser)
    args = parser.parse_args(argv)
    report.check_output_file(parser, args.output, "--output", args.overwrite, suffix=".png")
    rows = read_rows(parser, args.csv)
    try:
        plot(rows, args.output)
    except ValueError as exc:  # a cell that is not a number
        parser.error(f"cannot plot {', '.join(args.csv)}: {exc}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
