#!/usr/bin/env python3
"""The 10 MLX quantized-SDPA scenarios of SPEC section 6, run through `qsdpa run`.

Each subtest: fresh q/k/v = 0.1*N(0,1) f32 (B=1, Hq=2, Hkv=1, Lk=640, D=128,
scale 1.0), K/V quantized with mx.quantize and written as .npy; `qsdpa run`
computes attention (automatic kernel) and, separately, with the reference
kernel (--kernel cpu.reference). Checks:
  1. qsdpa vs mx.fast.scaled_dot_product_attention over mx.dequantize'd K/V,
     max abs error <= MLX's tolerance of the scenario, and <= 2e-5 * max|V|
     (SPEC section 4, f32: MLX's tolerances alone exceed |out| here);
  2. qsdpa (auto kernel) vs qsdpa's reference kernel, max abs error
     <= 2e-5 * max|V| (SPEC section 4, f32);
  3. qsdpa vs unquantized SDPA (what MLX's own test compares), <= MLX's
     tolerance; the error is reported per format.
Scenario 10 (causal together with a bool mask) must exit 1 with a message.
Extra subtests rerun every scenario at Lq=1 (decode) and with GQA 4.

Exit status 0 only if everything passes; a missing mlx is a failure (the MLX
scenarios are part of the contract), never a skip.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

try:
    import numpy as np
    import mlx.core as mx
except ImportError as e:  # a failure, not a skip: see tools/setup_python.sh
    print(f"FAIL: the MLX scenarios need mlx and numpy ({e}); run tools/setup_python.sh", file=sys.stderr)
    sys.exit(1)

B, LK, D = 1, 640, 128
FP_MODES = ["mxfp4", "mxfp8", "nvfp4"]
AFFINE_BITS = [4, 6, 8]
SPEC_F32_TOL = 2e-5  # SPEC section 4: max abs error <= 2e-5 * max|V|


def fp_tol(mode):
    return 2e-2 if mode == "mxfp8" else 5e-2


def affine_tol(bits):
    return {4: 5e-2, 6: 1e-1, 8: 2e-2}[bits]


def subtests():
    """The 54 subtests of SPEC section 6 scenarios 1-9, as dicts."""
    out = []

    def add(scenario, mode, bits, lq, tol, mask=None, sinks=None, causal=False):
        out.append(dict(scenario=scenario, mode=mode, bits=bits, lq=lq, tol=tol, mask=mask, sinks=sinks,
                        causal=causal))

    for m in FP_MODES:  # 1
        add(1, m, None, 4, fp_tol(m))
    for b in AFFINE_BITS:  # 2
        add(2, "affine", b, 4, affine_tol(b))
    for m in FP_MODES:  # 3
        for lq in (4, 9):
            for mask in ("bool", "additive"):
                add(3, m, None, lq, fp_tol(m), mask=mask)
    for b in AFFINE_BITS:  # 4
        for lq in (4, 9):
            for mask in ("bool", "additive"):
                add(4, "affine", b, lq, affine_tol(b), mask=mask)
    for m in FP_MODES:  # 5
        for lq in (4, 9):
            add(5, m, None, lq, fp_tol(m), sinks=[0.7, -0.4])
    for lq in (4, 9):  # 6
        for mask in ("bool", "additive"):
            add(6, "mxfp4", None, lq, 5e-2, mask=mask, sinks=[0.5, -0.3])
    for lq in (4, 9):  # 7
        add(7, "affine", 4, lq, 5e-2, mask="bool", sinks=[0.2, -0.1])
    for m in FP_MODES:  # 8
        for lq in (4, 9):
            add(8, m, None, lq, fp_tol(m), causal=True)
    for b in AFFINE_BITS:  # 9
        for lq in (4, 9):
            add(9, "affine", b, lq, affine_tol(b), causal=True)
    return out


def format_name(t):
    return f"affine:{t['bits']}:32" if t["mode"] == "affine" else t["mode"]


def quantize(x, t):
    """mx.quantize as MLX's quantized SDPA takes it: affine group 32, fp modes default groups."""
    if t["mode"] == "affine":
        w, s, b = mx.quantize(x, group_size=32, bits=t["bits"], mode="affine")
        return w, s, b, mx.dequantize(w, s, b, group_size=32, bits=t["bits"], mode="affine")
    w, s = mx.quantize(x, mode=t["mode"])
    # fp modes dequantize to bf16 by default (their scales carry no dtype); ask for f32.
    return w, s, None, mx.dequantize(w, s, mode=t["mode"], dtype=mx.float32)


def make_inputs(rng, t, hq, hkv, lq):
    q = (0.1 * rng.standard_normal((B, hq, lq, D))).astype(np.float32)
    k = (0.1 * rng.standard_normal((B, hkv, LK, D))).astype(np.float32)
    v = (0.1 * rng.standard_normal((B, hkv, LK, D))).astype(np.float32)
    mask = None
    if t["mask"] == "bool":
        mask = rng.uniform(size=(B, hq, lq, LK)) >= 0.2  # 20% false
    elif t["mask"] == "additive":
        mask = np.where(rng.uniform(size=(B, hq, lq, LK)) >= 0.2, 0.0, -1e9).astype(np.float32)
    sinks = None if t["sinks"] is None else np.array(t["sinks"] * (hq // 2), dtype=np.float32)
    return q, k, v, mask, sinks


def mlx_sdpa(q, k, v, mask, sinks, causal):
    m = "causal" if causal else (None if mask is None else mx.array(mask))
    kwargs = {} if sinks is None else {"sinks": mx.array(sinks)}
    out = mx.fast.scaled_dot_product_attention(mx.array(q), k, v, scale=1.0, mask=m, **kwargs)
    return np.array(out)


def write_dir(d, q, kq, vq, mask, sinks):
    np.save(os.path.join(d, "q.npy"), q)
    for name, (w, s, b, _) in (("k", kq), ("v", vq)):
        np.save(os.path.join(d, f"{name}.npy"), np.array(w))
        np.save(os.path.join(d, f"{name}_scales.npy"), np.array(s))
        path = os.path.join(d, f"{name}_biases.npy")
        if b is not None:
            np.save(path, np.array(b))
        elif os.path.exists(path):
            os.remove(path)
    for name, arr in (("mask", mask), ("sinks", sinks)):
        path = os.path.join(d, f"{name}.npy")
        if arr is not None:
            np.save(path, arr)
        elif os.path.exists(path):
            os.remove(path)


def run_args(fmt, causal):
    return ["--format", fmt, "--scale", "1.0"] + (["--causal"] if causal else [])


def run_qsdpa(qsdpa, d, fmt, causal, out_path, kernel=None, backend="cpu"):
    cmd = [qsdpa, "run", "--dir", d, *run_args(fmt, causal), "--backend", backend, "--out", out_path]
    if kernel:
        cmd += ["--kernel", kernel]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, r.stderr.strip(), " ".join(cmd)


class Runner:
    """Where the output under test comes from: `qsdpa run` here (on --backend),
    or, for a backend on another machine, --export writes every case to a
    folder (case_NNN/ with args.txt) and --outputs reads what that machine's
    `qsdpa run --dir case_NNN $(cat args.txt) --out NNN.npy` left (NNN.npy,
    NNN.rc, NNN.err). The same --seed regenerates the same cases."""

    def __init__(self, args, workdir):
        self.args, self.workdir, self.index = args, workdir, 0

    def case_dir(self):
        self.index += 1
        if self.args.export:
            d = os.path.join(self.args.export, f"case_{self.index:03d}")
            os.makedirs(d, exist_ok=True)
            return d
        return self.workdir

    def main_output(self, d, fmt, causal, out_name):
        """(exit code, stderr, command) and the output path of the output under test."""
        if self.args.export:
            with open(os.path.join(d, "args.txt"), "w") as f:
                f.write(" ".join(run_args(fmt, causal)) + "\n")
            return None
        if self.args.outputs:
            base = os.path.join(self.args.outputs, f"{self.index:03d}")
            with open(base + ".rc") as f:
                rc = int(f.read().strip() or "-1")
            with open(base + ".err") as f:
                err = f.read().strip()
            return (rc, err, f"qsdpa run --dir case_{self.index:03d} (imported)"), base + ".npy"
        path = os.path.join(d, out_name)
        if os.path.exists(path):
            os.remove(path)
        return run_qsdpa(self.args.qsdpa, d, fmt, causal, path, backend=self.args.backend), path


class Results:
    def __init__(self):
        self.passed = self.total = 0
        self.failures = []
        self.quant_err = {}  # format -> worst error vs unquantized SDPA
        self.worst_dq = 0.0  # worst error vs MLX over dequantized K/V, in units of max|V|

    def record(self, name, ok, detail):
        self.total += 1
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{name}: {detail}")
            print(f"FAIL {name}: {detail}", file=sys.stderr)


def check_subtest(runner, rng, t, hq, hkv, lq, res, label):
    d = runner.case_dir()
    q, k, v, mask, sinks = make_inputs(rng, t, hq, hkv, lq)
    kq, vq = quantize(mx.array(k), t), quantize(mx.array(v), t)
    write_dir(d, q, kq, vq, mask, sinks)
    fmt = format_name(t)
    name = (f"{label} scenario {t['scenario']} {fmt} Lq={lq} Hq={hq} Hkv={hkv}"
            f"{' mask=' + t['mask'] if t['mask'] else ''}{' sinks' if t['sinks'] else ''}"
            f"{' causal' if t['causal'] else ''}")
    got = runner.main_output(d, fmt, t["causal"], "out.npy")
    if got is None:  # --export: the case is written, nothing to check here
        return
    (rc, err, cmd), out_path = got
    if rc != 0:
        res.record(name, False, f"`{cmd}` exited {rc}: {err}")
        return
    ref_path = os.path.join(d, "out_ref.npy")
    rc, err, cmd = run_qsdpa(runner.args.qsdpa, d, fmt, t["causal"], ref_path, kernel="cpu.reference")
    if rc != 0:
        res.record(name, False, f"`{cmd}` exited {rc}: {err}")
        return
    out = np.load(out_path)
    ref = np.load(ref_path)
    if out.shape != (B, hq, lq, D) or out.dtype != np.float32:
        res.record(name, False, f"out.npy has shape {out.shape} dtype {out.dtype}, want {(B, hq, lq, D)} float32")
        return
    expected_dq = mlx_sdpa(q, kq[3], vq[3], mask, sinks, t["causal"])
    expected_fp = mlx_sdpa(q, mx.array(k), mx.array(v), mask, sinks, t["causal"])
    max_v = float(np.abs(np.array(vq[3])).max())
    e_dq = float(np.abs(out - expected_dq).max())
    e_ref = float(np.abs(out - ref).max())
    e_fp = float(np.abs(out - expected_fp).max())
    if not np.isfinite(out).all():
        res.record(name, False, "non-finite values in out.npy")
        return
    res.quant_err[fmt] = max(res.quant_err.get(fmt, 0.0), e_fp)
    res.worst_dq = max(res.worst_dq, e_dq / max_v)
    problems = []
    if e_dq > t["tol"]:
        problems.append(f"vs MLX SDPA over dequantized K/V {e_dq:.3g} > MLX tol {t['tol']}")
    # MLX's tolerances are far above the outputs here (|out| ~ 0.1/sqrt(Lk)), so a
    # wrong decode would pass them: also hold qsdpa to SPEC section 4 against MLX.
    if e_dq > SPEC_F32_TOL * max_v:
        problems.append(f"vs MLX SDPA over dequantized K/V {e_dq:.3g} > 2e-5*max|V| = {SPEC_F32_TOL * max_v:.3g}")
    if e_ref > SPEC_F32_TOL * max_v:
        problems.append(f"vs reference kernel {e_ref:.3g} > 2e-5*max|V| = {SPEC_F32_TOL * max_v:.3g}")
    if e_fp > t["tol"]:
        problems.append(f"vs unquantized SDPA {e_fp:.3g} > MLX tol {t['tol']}")
    res.record(name, not problems, "; ".join(problems) +
               f" (errors: vs dequantized SDPA {e_dq:.3g}, vs reference {e_ref:.3g}, vs unquantized {e_fp:.3g})")


def check_scenario_10(runner, rng):
    """Causal together with a bool mask is an error: exit 1 and a message, no output file."""
    t = dict(scenario=10, mode="affine", bits=4, lq=4, tol=5e-2, mask="bool", sinks=None, causal=True)
    d = runner.case_dir()
    q, k, v, mask, sinks = make_inputs(rng, t, 2, 1, 4)
    write_dir(d, q, quantize(mx.array(k), t), quantize(mx.array(v), t), mask, sinks)
    got = runner.main_output(d, format_name(t), True, "out_err.npy")
    if got is None:
        return True
    (rc, msg, cmd), out_path = got
    ok = rc == 1 and "causal" in msg.lower() and "mask" in msg.lower() and not os.path.exists(out_path)
    print(f"scenario 10 (causal + bool mask): exit {rc}, message: {msg}")
    if not ok:
        print(f"FAIL scenario 10: `{cmd}` should exit 1 naming causal and mask and write nothing", file=sys.stderr)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qsdpa", help="path of the qsdpa executable (not needed with --export)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "cuda"], help="backend of the output under test")
    ap.add_argument("--export", metavar="DIR", help="write every case to DIR/case_NNN/ for another machine; no checks")
    ap.add_argument("--outputs", metavar="DIR", help="check DIR/NNN.npy|.rc|.err made from an --export (same --seed)")
    args = ap.parse_args()
    if not args.export and not args.qsdpa:
        ap.error("--qsdpa is required (except with --export)")
    seed = args.seed if args.seed is not None else time.time_ns() % (2**32)
    print(f"MLX {mx.__version__}, seed {seed} (replay with --seed {seed}), backend under test: "
          f"{'from ' + args.outputs if args.outputs else args.backend}")
    mx.set_default_device(mx.cpu)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    main_res, extra_res = Results(), Results()
    tests = subtests()
    assert len(tests) == 54, len(tests)
    with tempfile.TemporaryDirectory(prefix="qsdpa_mlx_") as d:
        runner = Runner(args, d)
        for t in tests:
            check_subtest(runner, rng, t, 2, 1, t["lq"], main_res, "")
        ok10 = check_scenario_10(runner, rng)
        for t in tests:  # extras: decode (Lq=1), and GQA 4 (Hq=8, Hkv=2)
            check_subtest(runner, rng, t, 2, 1, 1, extra_res, "extra Lq=1")
            check_subtest(runner, rng, t, 8, 2, t["lq"], extra_res, "extra GQA4")
    if args.export:
        print(f"exported {runner.index} cases to {args.export} (seed {seed})")
        return 0
    print("quantized vs unquantized attention, worst max abs error per format (MLX tolerance):")
    tol_of = {format_name(t): t["tol"] for t in tests if t["scenario"] in (1, 2)}
    for fmt, e in sorted(main_res.quant_err.items()):
        print(f"  {fmt:12s} {e:.3e}  (tol {tol_of.get(fmt, 0):.0e})")
    print(f"worst error vs MLX SDPA over dequantized K/V: {max(main_res.worst_dq, extra_res.worst_dq):.3g} x max|V|"
          f" (limit {SPEC_F32_TOL:g})")
    print(f"{main_res.passed}/{main_res.total} MLX subtests passed")
    print(f"{extra_res.passed}/{extra_res.total} extra subtests (Lq=1, GQA 4) passed")
    print(f"scenario 10: {'passed' if ok10 else 'FAILED'}; {time.time() - t0:.1f} s")
    ok = main_res.passed == main_res.total == 54 and extra_res.passed == extra_res.total and ok10
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
