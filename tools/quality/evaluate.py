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


def markdown(rows, n_tokens, backend_name):
    base = rows[0]["ppl"]
    lines = [
        "| KV format (K and V) | bits/value | perplexity | Δ ppl | Δ ppl % | mean KL | KL p99 | top-1 agree |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "kl_mean" not in r:
            lines.append(f"| {r['name']} | {r['bpv']:.2f} | {r['ppl']:.4f} | – | – | – | – | – |")
            continue
        d = r["ppl"] - base
        lines.append(f"| {r['name']} | {r['bpv']:.2f} | {r['ppl']:.4f} | {d:+.4f} | "
                     f"{100 * d / base:+.2f}% | {r['kl_mean']:.5f} | {r['kl_p99']:.4f} | "
                     f"{100 * r['top1']:.2f}% |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=0)
    ap.add_argument("--formats", default="")
    ap.add_argument("--backend", default="auto", choices=["auto", "qsdpa", "mlx"])
    ap.add_argument("--write", help="write the markdown table into this QUALITY.md")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--export", help="export real Q/K/V .npy files into this folder")
    args = ap.parse_args(argv)

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
    backend = pick_backend(args.backend)
    backend_name = "mlx" if backend is None else backend.NAME
    print(f"model SmolLM2-135M-Instruct (Q4_1 weights), {len(ids)} tokens, backend {backend_name}")
    rows = run(model, ids, formats, backend)
    info = {"commit": git_commit(), "tokens": len(ids), "backend": backend_name, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    if args.write:
        import report
        report.write(args.write, markdown(rows, len(ids), backend_name), info)
    else:
        print(markdown(rows, len(ids), backend_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
