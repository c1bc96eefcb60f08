"""Quality of every KV format on a real model: perplexity, KL divergence of the
next-token distributions against the f32 cache, and top-1 agreement.

One command regenerates docs/QUALITY.md (about 10 minutes on 2 cores):

    .venv/bin/python tools/quality/evaluate.py --write docs/QUALITY.md

Options: --tokens N (first N tokens of the text; default all), --formats "a,b",
--backend auto|qsdpa|mlx, --json FILE (raw numbers), --export DIR (real Q/K/V .npy
for the tests and `qsdpa bench --data`).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from model import Model, attention_f32  # noqa: E402
import formats as fmts  # noqa: E402

TEXT = os.path.join(HERE, "text.txt")


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def metrics(logits, ids, base_logp):
    """logits [L, V] -> ppl of ids[1:], and against base log-probs [L-1, V]:
    mean and 99th-percentile KL(base || this), top-1 agreement."""
    lp = log_softmax(logits[:-1].astype(np.float64)).astype(np.float32)
    nll = -lp[np.arange(len(ids) - 1), ids[1:]]
    out = {"ppl": float(np.exp(nll.astype(np.float64).mean()))}
    if base_logp is not None:
        kl = (np.exp(base_logp) * (base_logp - lp)).sum(axis=-1, dtype=np.float64)
        out["kl_mean"] = float(kl.mean())
        out["kl_p99"] = float(np.percentile(kl, 99))
        out["top1"] = float((lp.argmax(-1) == base_logp.argmax(-1)).mean())
    return out, lp


def pick_backend(name):
    if name in ("auto", "qsdpa"):
        try:
            import qsdpa_backend
            return qsdpa_backend
        except ImportError as e:
            if name == "qsdpa":
                raise
            print(f"qsdpa backend unavailable ({e}); using the mlx oracle", file=sys.stderr)
    return None


def attend_fn(fmt, scale, backend):
    if fmt.k is None and fmt.v is None:
        return lambda layer, q, k, v: attention_f32(q, k, v, scale)
    if backend is None:
        return fmts.mlx_attend(fmt, scale)
    return backend.attend(fmt, scale)


def run(model, ids, formats, backend, log=print):
    scale = 1.0 / np.sqrt(model.cfg.head_dim)
    rows, base = [], None
    for fmt in formats:
        t = time.time()
        logits = model.forward(ids, attend_fn(fmt, scale, backend))
        m, lp = metrics(logits, np.asarray(ids), base)
        if base is None:
            if fmt.k is not None:
                raise ValueError("the first format must be the f32 baseline")
            base = lp
        m.update(name=fmt.name, bpv=fmt.bits_per_value(), seconds=time.time() - t)
        rows.append(m)
        log(f"{fmt.name:24s} ppl {m['ppl']:.4f}  kl {m.get('kl_mean', 0):.5f}  "
            f"top1 {m.get('top1', 1):.4f}  ({m['seconds']:.0f} s)")
    return rows


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(rows, oracle=None):
    """The table; with oracle rows (same formats through the mlx oracle) two more
    columns show how far two correct implementations land apart (the noise)."""
    base = rows[0]["ppl"]
    orc = {r["name"]: r for r in oracle or []}
    extra_h = " ppl, MLX oracle | KL, MLX oracle |" if orc else ""
    lines = ["| KV format (K and V) | bits/value | perplexity | Δ ppl | Δ ppl % | mean KL | "
             "KL p99 | top-1 agree |" + extra_h,
             "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if orc else "")]
    for r in rows:
        o = orc.get(r["name"])
        tail = ""
        if orc:
            tail = (f" {o['ppl']:.4f} | {o['kl_mean']:.5f} |" if o and "kl_mean" in o
                    else f" {o['ppl']:.4f} | – |" if o else " – | – |")
        if "kl_mean" not in r:
            lines.append(f"| {r['name']} | {r['bpv']:.2f} | {r['ppl']:.4f} | – | – | – | – | – |" + tail)
            continue
        d = r["ppl"] - base
        lines.append(f"| {r['name']} | {r['bpv']:.2f} | {r['ppl']:.4f} | {d:+.4f} | "
                     f"{100 * d / base:+.2f}% | {r['kl_mean']:.5f} | {r['kl_p99']:.4f} | "
                     f"{100 * r['top1']:.2f}% |" + tail)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=0)
    ap.add_argument("--formats", default="")
    ap.add_argument("--backend", default="auto", choices=["auto", "qsdpa", "mlx"])
    ap.add_argument("--write", help="measure through qsdpa and the mlx oracle, and the "
                    "real-tensor table, into this QUALITY.md")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--from-json", help="with --write: take the rows from two files "
                    "QSDPA.json,MLX.json written by --json instead of measuring")
    ap.add_argument("--export", help="export real Q/K/V .npy files into this folder")
    args = ap.parse_args(argv)

    if args.write and args.from_json:
        runs = []
        for path in args.from_json.split(","):
            with open(path) as f:
                runs.append(json.load(f))
        return write_doc(args.write, runs[0], runs[1])

    model = Model()
    ids = model.tokenizer.encode(open(TEXT).read())
    if args.tokens:
        ids = ids[:args.tokens]
    if args.export:
        import export
        export.export(model, ids, args.export)
        return 0
    names = [n.strip() for n in args.formats.split(",") if n.strip()]
    formats = fmts.by_name(["f32"] + [n for n in names if n != "f32"]) if names else fmts.FORMATS
    backends = [pick_backend("qsdpa"), None] if args.write else [pick_backend(args.backend)]
    runs = []
    for backend in backends:
        name = "mlx" if backend is None else backend.NAME
        print(f"model SmolLM2-135M-Instruct (Q4_1 weights), {len(ids)} tokens, backend {name}")
        rows = run(model, ids, formats, backend)
        runs.append({"commit": git_commit(), "tokens": len(ids), "backend": name, "rows": rows})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs[0] if len(runs) == 1 else runs, f, indent=1)
    if args.write:
        return write_doc(args.write, runs[0], runs[1])
    print(markdown(runs[0]["rows"]))
    return 0


def write_doc(path, main_run, oracle_run):
    import realdata
    import report
    real = realdata.table([realdata.measure(d, f) for d in realdata.folders()
                           for f in realdata.formats()])
    report.write(path, markdown(main_run["rows"], oracle_run["rows"]), real, main_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
