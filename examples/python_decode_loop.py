#!/usr/bin/env python3
"""Toy decode loop over a qsdpa.Cache: tokens/s and memory per KV format.

A small random "model" (n layers of q/k/v projections and a residual stream,
no real weights) prefills a prompt, then decodes token by token. Every layer
appends its new K/V rows to the cache (quantized on append) and attends over
everything stored. The same loop runs with each cache format and with an
unquantized f16 cache; the table shows decode speed (whole loop, and the time
spent in the cache's append + attend), the bytes the cache holds, and the
attention error of the quantized cache: layer 0's output for one fixed query
after the prefill (same K/V in every run), against the f16 cache's.

    pip install .   # from the repository root
    python examples/python_decode_loop.py --prompt 1024 --tokens 64

On a GPU (library built with `QSDPA_CUDA=1 pip install .`, PyTorch installed)
`--device cuda` keeps the model in torch tensors and the cache in device
memory; tensors go to qsdpa through DLPack, without copies.
"""
import argparse
import time

import numpy as np

import qsdpa


class Ops:
    """The few array operations of the toy model, for NumPy (cpu) or torch (cuda)."""

    def __init__(self, device):
        self.device = device
        if device == "cuda":
            import torch

            self.torch = torch
            self.context = qsdpa.Context("cuda")

    def array(self, x):
        return self.torch.from_numpy(x).cuda() if self.device == "cuda" else x

    def heads(self, x, t, h, d):  # [t, h*d] f32 -> [1, h, t, d] f16 (a strided view, then one cast)
        if self.device == "cuda":
            return x.reshape(t, h, d).permute(1, 0, 2)[None].half()
        return x.reshape(t, h, d).transpose(1, 0, 2)[None].astype(np.float16)

    def merge(self, o, t):  # [1, h, t, d] -> [t, h*d] f32
        if self.device == "cuda":
            return o[0].permute(1, 0, 2).reshape(t, -1).float()
        return o[0].transpose(1, 0, 2).reshape(t, -1).astype(np.float32)

    def normalize(self, x, n):
        return x / (x.norm() if self.device == "cuda" else np.linalg.norm(x)) * np.sqrt(n)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def numpy(self, x):
        return x.cpu().numpy() if self.device == "cuda" else x


def run(fmt, args, ops, weights, prompt, probe_q, residual=0):
    b, hq, hkv, d = 1, args.heads, args.kv_heads, args.head_dim
    ctx = ops.context if ops.device == "cuda" else None
    k_fmt, _, v_fmt = fmt.partition("/")  # "K/V": different formats for K and V
    cache = qsdpa.Cache(args.layers, b, hkv, d, k_format=k_fmt, v_format=v_fmt or None, step=256,
                        residual=residual, context=ctx)
    model = hq * d

    in_cache = [0.0]

    def forward(h):  # h [T, model] -> new h, one token row per position
        t = h.shape[0]
        for layer, (wq, wk, wv, wo) in enumerate(weights):
            q, k, v = ops.heads(h @ wq, t, hq, d), ops.heads(h @ wk, t, hkv, d), ops.heads(h @ wv, t, hkv, d)
            ops.sync()
            t0 = time.perf_counter()
            cache.append(layer, k, v)  # quantized on append (on the GPU for a device cache)
            o = cache.attend(layer, q, causal=True)  # [1, hq, t, d]
            ops.sync()
            in_cache[0] += time.perf_counter() - t0
            h = h + ops.merge(o, t) @ wo
        return h

    forward(prompt)
    probe = cache.attend(0, probe_q, causal=False)  # layer 0 holds the same prompt K/V in every run
    x = prompt[-1:]
    ops.sync()
    in_cache[0] = 0.0
    start = time.perf_counter()
    for _ in range(args.tokens):
        x = ops.normalize(forward(x)[-1:], model)  # keep the toy stream bounded
    ops.sync()
    elapsed = time.perf_counter() - start
    return args.tokens / elapsed, 1e3 * in_cache[0] / args.tokens, cache.nbytes, ops.numpy(probe).astype(np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--prompt", type=int, default=1024, help="prompt tokens (prefill)")
    p.add_argument("--tokens", type=int, default=32, help="decoded tokens")
    p.add_argument("--formats", default="f16,affine:8:64,affine:8:64/affine:4:64,affine:4:64,mxfp8,mxfp8/mxfp4,mxfp4,nvfp4",
                   help="cache formats, comma-separated; K/V for different K and V formats")
    p.add_argument("--residual", type=int, default=128, help="window for the extra KIVI row (0 = skip it)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()
    ops = Ops(args.device)

    rng = np.random.default_rng(0)
    model, kvd = args.heads * args.head_dim, args.kv_heads * args.head_dim
    s = 1 / np.sqrt(model)
    weights = [tuple(ops.array((rng.standard_normal(shape) * s).astype(np.float32))
                     for shape in ((model, model), (model, kvd), (model, kvd), (model, model)))
               for _ in range(args.layers)]
    prompt = ops.array(rng.standard_normal((args.prompt, model)).astype(np.float32))
    probe_q = ops.array(rng.standard_normal((1, args.heads, 1, args.head_dim)).astype(np.float16))

    runs = [(f, 0) for f in args.formats.split(",")]
    if args.residual:
        runs.append(("affine:4:64", args.residual))
    print(f"qsdpa {qsdpa.__version__} on {args.device}: {args.layers} layers, Hq {args.heads}, Hkv {args.kv_heads}, "
          f"D {args.head_dim}, prompt {args.prompt}, {args.tokens} decoded tokens")
    print(f"{'cache format':<26}{'tokens/s':>9}{'cache ms/tok':>13}{'cache MiB':>10}{'vs f16':>8}{'attn err':>10}")
    base = None
    for fmt, residual in runs:
        tps, cache_ms, nbytes, probe = run(fmt, args, ops, weights, prompt, probe_q, residual)
        if base is None and fmt == "f16" and not residual:
            base = (nbytes, probe)
        name = fmt + (f" + window {residual}" if residual else "")
        ratio = f"{nbytes / base[0]:.3f}" if base else "-"
        err = f"{np.abs(probe - base[1]).max() / np.abs(base[1]).max():.2e}" if base else "-"
        print(f"{name:<26}{tps:>9.1f}{cache_ms:>13.3f}{nbytes / 2**20:>10.2f}{ratio:>8}{err:>10}")
    print("cache ms/tok: append + attend over all layers per decoded token; attn err: max |o - o_f16| / max |o_f16|")


if __name__ == "__main__":
    main()
