"""Attention error of every KV format on real SmolLM2 Q/K/V (tests/data/real/).

For each exported layer and each format: quantize K and V with qsdpa.quantize (and
check the bytes equal mx.quantize's), run qsdpa.attention (causal, the 64 queries
are the newest of 512 positions), and report
  kernel  max |qsdpa - reference| / max|V|, reference = float64 attention over the
          same dequantized K/V (SPEC 4: at most 2e-5 for f32);
  quant   the error quantization itself costs, against f32 attention over the
          unquantized K/V: relative RMS ||o - o_f32|| / ||o_f32|| and max abs / max|V|.

    .venv/bin/python tools/quality/realdata.py
"""
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
DATA = os.path.join(ROOT, "tests", "data", "real")

import formats as fmts  # noqa: E402


def load(folder):
    q, k, v = (np.load(os.path.join(folder, f"{n}.npy")) for n in "qkv")
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    return q, k, v, meta


def reference(q, k, v, scale):
    """float64 causal (bottom-right) GQA attention: q [1,Hq,Lq,D], k/v [1,Hkv,Lk,D]."""
    q, k, v = (x[0].astype(np.float64) for x in (q, k, v))
    rep = q.shape[0] // k.shape[0]
    k, v = np.repeat(k, rep, 0), np.repeat(v, rep, 0)
    lq, lk = q.shape[1], k.shape[1]
    s = q @ k.transpose(0, 2, 1) * scale
    keep = np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq)
    s = np.where(keep, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return ((p / p.sum(-1, keepdims=True)) @ v)[None]


def bytes_equal_mlx(x, side, parts):
    import mlx.core as mx
    ref = mx.quantize(mx.array(x), group_size=side.group, bits=side.bits, mode=side.mode)
    ref = list(ref) if side.mode == "affine" else [ref[0], ref[1], None]
    return all((a is None and b is None) or np.array_equal(np.asarray(a), np.array(b))
               for a, b in zip(parts, ref))


def measure(folder, fmt):
    import qsdpa_backend as qb
    import qsdpa
    q, k, v, meta = load(folder)
    scale = meta["scale"]
    kq, vq = qb.quantize(k, fmt.k), qb.quantize(v, fmt.v)
    exact = bytes_equal_mlx(k, fmt.k, kq) and bytes_equal_mlx(v, fmt.v, vq)
    out = qsdpa.attention(q, *kq, *vq, scale=scale, causal=True, group_size=fmt.k.group,
                          bits=fmt.k.bits, mode=fmt.k.mode, v_group_size=fmt.v.group,
                          v_bits=fmt.v.bits, v_mode=fmt.v.mode)
    kd = fmts.mlx_roundtrip(k[0], fmt.k)[None]
    vd = fmts.mlx_roundtrip(v[0], fmt.v)[None]
    vmax = float(np.abs(vd).max())
    ref_q = reference(q, kd, vd, scale)
    ref_f = reference(q, k, v, scale)
    return {"layer": meta["layer"], "format": fmt.name, "bytes_equal_mlx": bool(exact),
            "kernel_err": float(np.abs(out - ref_q).max() / vmax),
            "quant_rel_rms": float(np.linalg.norm(out - ref_f) / np.linalg.norm(ref_f)),
            "quant_max": float(np.abs(out - ref_f).max() / np.abs(v).max())}


def folders():
    found = sorted(glob.glob(os.path.join(DATA, "smollm2_layer*")))
    if not found:
        raise FileNotFoundError(f"no exported tensors in {DATA} (evaluate.py --export)")
    return found


def formats():
    return [f for f in fmts.FORMATS if f.k is not None and not f.residual]


def table(rows):
    layers = sorted({r["layer"] for r in rows})
    head = "| KV format | " + " | ".join(f"rel. RMS err, layer {l}" for l in layers) \
        + " | kernel err (x max abs V) | bytes = mx.quantize |"
    lines = [head, "|---|" + "---:|" * len(layers) + "---:|:---:|"]
    for f in formats():
        rs = [r for r in rows if r["format"] == f.name]
        errs = " | ".join(f"{r['quant_rel_rms']:.2e}" for r in sorted(rs, key=lambda r: r["layer"]))
        kern = max(r["kernel_err"] for r in rs)
        same = "yes" if all(r["bytes_equal_mlx"] for r in rs) else "NO"
        lines.append(f"| {f.name} | {errs} | {kern:.1e} | {same} |")
    return "\n".join(lines)


def main():
    rows = [measure(d, f) for d in folders() for f in formats()]
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
