#!/usr/bin/env python3
"""Plot `qsdpa bench --json` output: time vs context, one line per format, one panel per Lq.

usage: qsdpa bench --json > bench.json
       python tools/plot_bench.py bench.json -o bench.png

Needs matplotlib (pip install matplotlib). The 4K causal prefill rows (Lq == context)
are shown as a bar panel beside the decode panels.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="output of `qsdpa bench --json` ('-' for stdin)")
    ap.add_argument("-o", "--output", default="bench.png", help="PNG to write (default bench.png)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_bench.py: matplotlib is not installed (pip install matplotlib)")

    rows = json.load(sys.stdin if args.json == "-" else open(args.json))
    decode = [r for r in rows if not r.get("causal")]
    prefill = [r for r in rows if r.get("causal")]
    lqs = sorted({r["lq"] for r in decode})
    formats = list(dict.fromkeys(r["format"] for r in rows))
    panels = len(lqs) + (1 if prefill else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    for ax, lq in zip(axes[0], lqs):
        for fmt in formats:
            pts = sorted((r["context"], r["ms"]) for r in decode if r["format"] == fmt and r["lq"] == lq)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fmt)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (keys)")
        ax.set_ylabel("time per call (ms, median)")
        ax.set_title(f"decode, Lq = {lq}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if prefill:
        ax = axes[0][-1]
        names = [r["format"] for r in prefill]
        ax.bar(range(len(prefill)), [r["ms"] for r in prefill])
        ax.set_xticks(range(len(prefill)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("time per call (ms)")
        ax.set_title(f"causal prefill, Lq = context = {prefill[0]['context']}")
    shape = rows[0].get("shape", "") if rows else ""
    threads = rows[0].get("threads", "") if rows else ""
    fig.suptitle(args.title or f"qsdpa CPU: {shape}, threads {threads}")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
