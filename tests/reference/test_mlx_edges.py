#!/usr/bin/env python3
"""The reference kernel against MLX 0.32.4 on the rows where every key is
masked, run through `qsdpa run --kernel cpu.reference` with plain (unquantized)
K/V so that MLX's SDPA sees the very same numbers:
  - causal with Lq > Lk: the first Lq - Lk rows see no key (MLX: mean of V;
    with sinks, 0);
  - an all-false boolean mask row (same);
in f32, f16 and bf16, with and without sinks. SPEC section 3 says the same;
a difference here means SPEC, MLX and the reference disagree.
Exit 0 only if every case matches within a few units in the last place of
the output dtype (8 for f32, 2 for f16 and bf16, relative to max|V|); a missing mlx is a failure, never a skip.
"""
import argparse
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import mlx.core as mx
except ImportError as e:
    print(f"FAIL: needs mlx and numpy ({e}); run tools/setup_python.sh", file=sys.stderr)
    sys.exit(1)

# f32 allows 8 ulps: MLX accumulates its own f32 softmax and sum in f32, and a
# 2-ulp bound failed on it once in a few hundred draws (CI, 2026-11-25).
DTYPES = {"f32": (mx.float32, 2.0**-20), "f16": (mx.float16, 2.0**-9), "bf16": (mx.bfloat16, 2.0**-6)}


def to_file(x, dtype):
    """numpy array for `qsdpa run`: bf16 travels as its uint16 bit pattern."""
    if dtype == "bf16":
        return np.array(mx.array(x).astype(mx.bfloat16).view(mx.uint16))
    return np.array(mx.array(x).astype(DTYPES[dtype][0]))


def case(qsdpa, d, rng, dtype, lq, lk, causal, all_false, sinks):
    hq, hkv, dim = 4, 2, 64
    q = rng.standard_normal((1, hq, lq, dim)).astype(np.float32)
    k = rng.standard_normal((1, hkv, lk, dim)).astype(np.float32)
    v = rng.standard_normal((1, hkv, lk, dim)).astype(np.float32)
    mask = None
    if all_false:
        mask = rng.uniform(size=(lq, lk)) >= 0.3
        mask[1::2, :] = False  # every other row fully masked
    sk = rng.standard_normal(hq).astype(np.float32) if sinks else None
    mxd = DTYPES[dtype][0]
    # round q/k/v to the dtype once, so MLX and qsdpa see identical values
    qr, kr, vr = (mx.array(a).astype(mxd) for a in (q, k, v))
    for f in ("q", "k", "v", "mask", "sinks", "k_scales", "v_scales"):
        p = os.path.join(d, f + ".npy")
        if os.path.exists(p):
            os.remove(p)
    np.save(os.path.join(d, "q.npy"), to_file(q, dtype))
    np.save(os.path.join(d, "k.npy"), to_file(k, dtype))
    np.save(os.path.join(d, "v.npy"), to_file(v, dtype))
    if mask is not None:
        np.save(os.path.join(d, "mask.npy"), mask)
    if sk is not None:
        np.save(os.path.join(d, "sinks.npy"), sk)
    out = os.path.join(d, "out.npy")
    # explicit files: plain formats have no scales (`--dir` would look for them)
    cmd = [qsdpa, "run", "--format", dtype, "--scale", "0.125", "--out", out, "--kernel", "cpu.reference"]
    for f in ("q", "k", "v") + (("mask",) if mask is not None else ()) + (("sinks",) if sk is not None else ()):
        cmd += [f"--{f}", os.path.join(d, f + ".npy")]
    if dtype == "bf16":
        cmd += ["--q-dtype", "bf16"]
    if causal:
        cmd.append("--causal")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"qsdpa run failed ({r.returncode}): {r.stderr.strip()} [{' '.join(cmd)}]"
    got = np.load(out)
    if dtype == "bf16":
        got = np.array(mx.array(got).view(mx.bfloat16).astype(mx.float32))
    got = got.astype(np.float64)
    m = "causal" if causal else (None if mask is None else mx.array(mask))
    kw = {} if sk is None else {"sinks": mx.array(sk).astype(mxd)}
    want = mx.fast.scaled_dot_product_attention(qr, kr, vr, scale=0.125, mask=m, **kw)
    want = np.array(want.astype(mx.float32)).astype(np.float64)
    vmax = float(np.abs(np.array(vr.astype(mx.float32))).max())
    err = float(np.abs(got - want).max())
    tol = DTYPES[dtype][1] * vmax
    masked_rows = want[0, 0, 0 if causal else 1]  # row 0 (causal) / row 1 (mask) is fully masked
    vmean = np.array(vr.astype(mx.float32))[0, 0].mean(axis=0)
    kind = "0" if sinks else "mean of V"
    expect = np.zeros_like(vmean) if sinks else vmean
    mlx_semantics = float(np.abs(masked_rows - expect).max()) <= 4 * tol
    return err <= tol, (f"err {err:.3g} (tol {tol:.3g}); MLX's fully masked row is "
                        f"{kind if mlx_semantics else 'NOT ' + kind}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qsdpa", required=True)
    args = ap.parse_args()
    rng = np.random.default_rng()
    failures = 0
    with tempfile.TemporaryDirectory() as d:
        for dtype in DTYPES:
            for sinks in (False, True):
                for name, lq, lk, causal, all_false in (("causal Lq 7 > Lk 4", 7, 4, True, False),
                                                        ("causal Lq 3 > Lk 1", 3, 1, True, False),
                                                        ("all-false bool rows", 5, 9, False, True)):
                    ok, detail = case(args.qsdpa, d, rng, dtype, lq, lk, causal, all_false, sinks)
                    label = f"{dtype} {name}{' sinks' if sinks else ''}"
                    print(f"{'ok  ' if ok else 'FAIL'} {label}: {detail}")
                    failures += not ok
    print(f"test_mlx_edges: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
