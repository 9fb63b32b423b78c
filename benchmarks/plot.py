"""Turns benchmark CSVs into a PNG: median time per provider, forward and full, one panel per CSV.

    python -m benchmarks.plot benchmarks/results/splat.csv [more.csv ...] -o benchmarks/results/splat.png
"""
import argparse
import csv
import os


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("csv", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [p for p in args.csv if os.path.exists(p)]
    if not paths:
        raise SystemExit(f"none of {args.csv} exists: run the benchmarks first")
    fig, axes = plt.subplots(1, len(paths), figsize=(6 * len(paths), 4), squeeze=False)
    for ax, path in zip(axes[0], paths):
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r.get("bench") == "splat_post_conv" and r["shape"] == "issue"]
        if not rows:
            ax.set_title(f"{os.path.basename(path)}: no issue-shape rows")
            continue
        providers = [p for p in ("eager", "compiled", "ours-cpu", "ours-cuda", "copy")
                     if any(r["provider"] == p for r in rows)]
        for i, mode in enumerate(("forward", "full")):
            vals = [next((float(r["median_ms"]) for r in rows if r["provider"] == p and r["mode"] == mode), 0.0)
                    for p in providers]
            xs = [j + 0.4 * i for j in range(len(providers))]
            bars = ax.bar(xs, vals, width=0.4, label=mode)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks([j + 0.2 for j in range(len(providers))], providers)
        ax.set_ylabel("median ms (lower is better)")
        ax.set_title(f"{rows[0]['y_shape']} fp32, malloc: {rows[0].get('malloc', '?')[:30]}", fontsize=8)
        ax.legend()
    fig.suptitle(f"split attention after the conv; {rows[0]['machine'][:80]}; git {rows[0]['git']}", fontsize=8)
    fig.tight_layout()
    tmp = args.output + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
