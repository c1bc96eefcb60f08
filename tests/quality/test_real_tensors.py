"""Every KV format on real SmolLM2-135M Q/K/V (tests/data/real/, exported by
tools/quality/evaluate.py --export): qsdpa.quantize gives mx.quantize's bytes, qsdpa.attention
is within SPEC 4 of a float64 reference over the same dequantized K/V, and the error
that quantization costs against unquantized attention stays where it was measured
(limits = 1.25x the largest relative RMS error over the three layers, 2026-11-25;
the computation is deterministic, so a change beyond that is a change in a format).
Exit 0 = pass, 1 = fail.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "quality"))

import realdata  # noqa: E402

KERNEL_TOL = 2e-5  # SPEC 4, f32 q/out, in units of max|V|
# name: max relative RMS error of the output against unquantized attention, any layer
QUANT_LIMITS = {
    "affine 8/g64": 1.25 * 1.89e-2,
    "affine 4/g64": 1.25 * 3.26e-1,
    "affine 4/g32": 1.25 * 2.18e-1,
    "affine 3/g64": 1.25 * 9.08e-1,
    "affine 2/g64": 1.25 * 1.21,
    "mxfp4": 1.25 * 4.01e-1,
    "mxfp8": 1.25 * 7.51e-2,
    "nvfp4": 1.25 * 2.44e-1,
    "K8V4 (g64)": 1.25 * 9.23e-2,
    "K4V8 (g64)": 1.25 * 3.08e-1,
    "K8V4 (g32)": 1.25 * 7.69e-2,  # measured 2026-11-27
    "K mxfp8 / V mxfp4": 1.25 * 1.30e-1,  # measured 2026-11-27
    "affine 6/g64": 1.25 * 8.71e-2,  # measured 2026-11-27 (session 21)
    "affine 6/g32": 1.25 * 6.12e-2,  # measured 2026-11-27 (session 21)
}


def main():
    import qsdpa  # noqa: F401  (an ImportError here names the missing package)
    passed, failures = 0, []
    for folder in realdata.folders():
        for fmt in realdata.formats():
            r = realdata.measure(folder, fmt)
            where = f"layer {r['layer']} {fmt.name}"
            bad = []
            if not r["bytes_equal_mlx"]:
                bad.append("qsdpa.quantize bytes differ from mx.quantize")
            if not r["kernel_err"] <= KERNEL_TOL:
                bad.append(f"kernel error {r['kernel_err']:.2e} > {KERNEL_TOL} max|V|")
            if not r["quant_rel_rms"] <= QUANT_LIMITS[fmt.name]:
                bad.append(f"quantization error {r['quant_rel_rms']:.3e} > {QUANT_LIMITS[fmt.name]:.3e}")
            print(f"{'FAIL' if bad else 'ok  '} {where}: kernel {r['kernel_err']:.1e}, "
                  f"rel RMS {r['quant_rel_rms']:.3e} {'; '.join(bad)}")
            failures += [f"{where}: {b}" for b in bad]
            passed += not bad
    print(f"real tensors: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
