#!/usr/bin/env python3
"""Golden vectors for the quantization formats (SPEC §2), produced by MLX on CPU.

For every format (affine bits 2,3,4,5,6,8 x group 32,64,128 x input dtype
f32/f16/bf16; mxfp4, mxfp8, nvfp4 without and with a global scale, each x
input dtype) it writes, under tests/data/golden/:

  <case>.x.npy       input rows [rows, dim] (bf16 as uint16 bit patterns)
  <case>.codes.npy   mx.quantize codes [rows, dim*bits/32] uint32
  <case>.scales.npy  scales [rows, dim/group] (affine: input dtype; fp: uint8)
  <case>.biases.npy  affine only
  <case>.deq.npy     mx.dequantize in MLX's output dtype (manifest column deq)
  <case>.deq32.npy   the same codes dequantized in f32 (affine: from the
                     scales and biases upcast to f32), as qsdpa_dequantize_row

and manifest.txt, one case per line:
  name format x_dtype scale_dtype global_scale(hex) rows dim deq_dtype
plus codec tables (fp8 encode of many f32 values, fp8 decode of all bytes).

Rows are random normal data at several magnitudes and the SPEC edge cases:
constant groups, all zeros, one outlier per group, negative-only groups,
values on the FP4 rounding thresholds and on affine code midpoints, and tiny
values giving subnormal scales. A fixed seed makes the output reproducible:
--check regenerates into a temporary folder and fails on any byte difference.
"""
import argparse
import filecmp
import os
import sys
import tempfile

import numpy as np

try:
    import mlx.core as mx
except ImportError as e:  # the check is part of the contract: fail, never skip
    print(f"gen_golden: mlx is not importable ({e}); run tools/setup_python.sh", file=sys.stderr)
    sys.exit(1)

MLX_VERSION = "0.32.4"
DIM = 256
MX_DTYPES = {"f32": mx.float32, "f16": mx.float16, "bf16": mx.bfloat16}
NP_DTYPES = {"f32": np.float32, "f16": np.float16}


def to_numpy(a):
    """MLX array -> numpy, bf16 as its uint16 bit patterns."""
    if a.dtype == mx.bfloat16:
        return np.array(a.view(mx.uint16))
    return np.array(a)


def dtype_name(a):
    return {mx.float32: "f32", mx.float16: "f16", mx.bfloat16: "bf16", mx.uint8: "u8"}[a.dtype]


def fp4_threshold_group(rng, g):
    """A group whose max|w| is 6, so the scale is 1 (mx: 2^0; nvfp4: e4m3 1.0)
    and the other values land on the FP4 midpoints and just beside them."""
    mids = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    vals = [6.0]
    for m in mids:
        vals += [m, -m, np.nextafter(np.float32(m), np.float32(0)), np.nextafter(np.float32(m), np.float32(9))]
    vals += [7.0, -6.5, 0.1, -0.1, -0.0]
    vals = np.array(vals[:g] + [0.0] * max(0, g - len(vals)), np.float32)
    return rng.permutation(vals) if g > 0 else vals


def edge_rows(rng, mode, bits, g, xd):
    """Rows [n, DIM] of SPEC edge cases, built group by group."""
    ng = DIM // g
    rows = []
    # constant groups (positive, negative, one of each sign per row)
    rows.append(np.repeat(rng.choice([-3.0, -0.5, 0.25, 1.0, 7.0], ng), g))
    rows.append(np.zeros(DIM))
    # one outlier per group
    r = rng.normal(0, 0.01, DIM)
    for k in range(ng):
        r[k * g + rng.integers(g)] = rng.choice([100.0, -100.0, 8.0])
    rows.append(r)
    # negative-only groups
    rows.append(-np.abs(rng.normal(0, 1, DIM)) - 0.01)
    # FP4 thresholds (mx/nv modes); for affine: code midpoints of a 0..2^bits-1 grid
    if mode in ("mxfp4", "nvfp4", "mxfp8"):
        rows.append(np.concatenate([fp4_threshold_group(rng, g) for _ in range(ng)]))
    else:
        top = (1 << bits) - 1
        r = np.concatenate([np.concatenate([[0.0, float(top)], rng.integers(0, top, g - 2) + 0.5]) for _ in range(ng)])
        rows.append(r)
    # tiny values: subnormal scales in the input dtype (and the 1e-7 floor of affine)
    tiny = {"f32": 1e-39, "bf16": 1e-39, "f16": 1e-6}[xd]
    rows.append(rng.normal(0, 1, DIM) * tiny)
    rows.append(rng.normal(0, 1, DIM) * 1e-9)
    # max|w| just above a power of two times the format's max (exponent edges)
    top = 448.0 if mode == "mxfp8" else 6.0
    r = rng.normal(0, 0.1, DIM)
    for k in range(ng):
        ulps = (23, 22, 21, 16, 10, 7)[k % 6]
        r[k * g] = top * 2.0 ** rng.integers(-6, 6) * (1 + 2.0 ** -ulps)
    rows.append(r)
    return np.array(rows)


def random_rows(rng):
    return np.array([rng.normal(0, s, DIM) for s in (1.0, 0.02, 30.0, 1e-3)])


def write(out, name, arr):
    np.save(os.path.join(out, name), np.ascontiguousarray(arr), allow_pickle=False)


def hexf(x):
    return float(np.float32(x)).hex()


def gen_case(out, manifest, rng, name, fmt, mode, bits, g, xd, G=None):
    x32 = np.concatenate([random_rows(rng), edge_rows(rng, mode, bits, g, xd)]).astype(np.float32)
    x = mx.array(x32).astype(MX_DTYPES[xd])
    kw = {"global_scale": mx.array(G, mx.float32)} if G is not None else {}
    if mode == "affine":
        q, s, b = mx.quantize(x, group_size=g, bits=bits, mode="affine")
        deq = mx.dequantize(q, s, b, group_size=g, bits=bits, mode="affine")
        deq32 = mx.dequantize(q, s.astype(mx.float32), b.astype(mx.float32), group_size=g, bits=bits, mode="affine")
    else:
        q, s = mx.quantize(x, mode=mode, **kw)
        b = None
        deq = mx.dequantize(q, s, mode=mode, dtype=MX_DTYPES[xd], **kw)
        deq32 = mx.dequantize(q, s, mode=mode, dtype=mx.float32, **kw)
    mx.eval(q, s, deq, deq32)
    write(out, name + ".x.npy", to_numpy(x))
    write(out, name + ".codes.npy", np.array(q))
    write(out, name + ".scales.npy", to_numpy(s))
    if b is not None:
        write(out, name + ".biases.npy", to_numpy(b))
    write(out, name + ".deq.npy", to_numpy(deq))
    write(out, name + ".deq32.npy", to_numpy(deq32))
    manifest.append(f"{name} {fmt} {xd} {dtype_name(s)} {hexf(G or 0.0)} {x32.shape[0]} {DIM} {dtype_name(deq)}")


def gen_codecs(out, rng):
    """FP8 encode of every bf16 and every f16 bit pattern (inputs implied by the
    index, taken as f32), and of random f32 values at and beside the E4M3
    rounding points; FP8 decode of every byte."""
    allbf = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)
    allf16 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    write(out, "codec_fp8_encode_bf16.out.npy", np.array(mx.to_fp8(mx.array(allbf))))
    write(out, "codec_fp8_encode_f16.out.npy", np.array(mx.to_fp8(mx.array(allf16))))
    grid = np.array([(1 + m / 8) * 2.0 ** e for e in range(-6, 9) for m in range(8)] +
                    [m * 2.0 ** -9 for m in range(8)], np.float32)
    grid.sort()
    mids = (grid[:-1] + grid[1:]) / 2
    near = np.concatenate([mids, np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(1e9)),
                           rng.uniform(-500, 500, 2048).astype(np.float32),
                           (rng.normal(0, 1, 2048) * 2.0 ** rng.integers(-14, 2, 2048)).astype(np.float32)])
    vals = np.concatenate([near, -near]).astype(np.float32)
    write(out, "codec_fp8_encode.in.npy", vals)
    write(out, "codec_fp8_encode.out.npy", np.array(mx.to_fp8(mx.array(vals))))
    write(out, "codec_fp8_decode.out.npy", np.array(mx.from_fp8(mx.array(np.arange(256, dtype=np.uint8)),
                                                                 dtype=mx.float32)))


def generate(out, seed=20260525):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifest = []
    for xd in ("f32", "f16", "bf16"):
        for bits in (2, 3, 4, 5, 6, 8):
            for g in (32, 64, 128):
                gen_case(out, manifest, rng, f"affine_b{bits}_g{g}_{xd}", f"affine:{bits}:{g}", "affine", bits, g, xd)
        for mode, bits, g in (("mxfp4", 4, 32), ("mxfp8", 8, 32), ("nvfp4", 4, 16)):
            gen_case(out, manifest, rng, f"{mode}_{xd}", mode, mode, bits, g, xd)
        # nvfp4 with global scales: a natural one (max|x| / 2688), 1, and a small
        # one that saturates the E4M3 scales (codes of huge scaled values)
        for tag, G in (("gnat", np.float32(30.0 * 4 / 2688)), ("g1", 1.0), ("gsmall", 1e-3)):
            gen_case(out, manifest, rng, f"nvfp4_{tag}_{xd}", "nvfp4", "nvfp4", 4, 16, xd, G=float(np.float32(G)))
    gen_codecs(out, rng)
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.write(f"# mlx {mx.__version__}: name format x_dtype scale_dtype global_scale rows dim deq_dtype\n")
        f.write("\n".join(manifest) + "\n")


def check(golden):
    if not os.path.isdir(golden) or not os.listdir(golden):
        print(f"gen_golden --check: {golden} is missing or empty", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp)
        new, old = sorted(os.listdir(tmp)), sorted(os.listdir(golden))
        bad = sorted(set(new) ^ set(old))
        bad += [f for f in new if f in old and not filecmp.cmp(os.path.join(tmp, f), os.path.join(golden, f), shallow=False)]
    for f in bad:
        print(f"gen_golden --check: {f} differs from a fresh MLX run", file=sys.stderr)
    print(f"gen_golden --check: {len(new)} files, {len(bad)} differ (mlx {mx.__version__})")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "golden"))
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare byte for byte")
    ap.add_argument("--seed", type=int, default=20260525,
                    help="other seeds give fresh data for ad hoc runs (with --out elsewhere; the checked-in set uses the default)")
    args = ap.parse_args()
    if mx.__version__ != MLX_VERSION:
        print(f"gen_golden: mlx {mx.__version__} found, the goldens pin {MLX_VERSION}", file=sys.stderr)
        return 1
    mx.set_default_device(mx.cpu)
    if args.check:
        return check(args.out)
    generate(args.out, args.seed)
    print(f"gen_golden: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
