#!/usr/bin/env python3
"""Toy decode loop over a qsdpa.Cache: tokens/s and memory per KV format.

A small random "model" (n layers of q/k/v projections and a residual stream,
no real weights) prefills a prompt, then decodes token by token. Every layer
appends its new K/V rows to the cache (quantized on append) and attends over
everything stored. The same loop runs with each cache format and with an
unquantized f16 cache; the table shows decode speed, the bytes the cache
holds, and how far the last hidden state drifts from the f16 cache's.

    pip install .   # from the repository root
    python examples/python_decode_loop.py --prompt 1024 --tokens 64
"""
import argparse
import time

import numpy as np

import qsdpa


def run(fmt, args, weights, prompt, residual=0):
    b, hq, hkv, d = 1, args.heads, args.kv_heads, args.head_dim
    cache = qsdpa.Cache(args.layers, b, hkv, d, k_format=fmt, step=256, residual=residual)
    model = hq * d

    def forward(h):  # h [T, model] -> new h, one token row per position
        t = h.shape[0]
        for layer, (wq, wk, wv, wo) in enumerate(weights):
            x = h.astype(np.float32)
            q = (x @ wq).reshape(t, hq, d).transpose(1, 0, 2)[None].astype(np.float16)
            k = (x @ wk).reshape(t, hkv, d).transpose(1, 0, 2)[None].astype(np.float16)
            v = (x @ wv).reshape(t, hkv, d).transpose(1, 0, 2)[None].astype(np.float16)
            cache.append(layer, k, v)  # strided views: no copies on the way in
            o = cache.attend(layer, q, causal=True)  # [1, hq, t, d]
            h = h + o[0].transpose(1, 0, 2).reshape(t, model).astype(np.float32) @ wo
        return h

    h = forward(prompt)
    x = h[-1:]
    start = time.perf_counter()
    for _ in range(args.tokens):
        x = forward(x)[-1:]
        x = x / np.linalg.norm(x) * np.sqrt(model)  # keep the toy stream bounded
    elapsed = time.perf_counter() - start
    return args.tokens / elapsed, cache.nbytes, x


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--prompt", type=int, default=1024, help="prompt tokens (prefill)")
    p.add_argument("--tokens", type=int, default=32, help="decoded tokens")
    p.add_argument("--formats", default="f16,affine:8:64,affine:4:64,mxfp8,mxfp4,nvfp4")
    p.add_argument("--residual", type=int, default=128, help="window for the extra KIVI row (0 = skip it)")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    model, kvd = args.heads * args.head_dim, args.kv_heads * args.head_dim
    s = 1 / np.sqrt(model)
    weights = [tuple((rng.standard_normal(shape) * s).astype(np.float32)
                     for shape in ((model, model), (model, kvd), (model, kvd), (model, model)))
               for _ in range(args.layers)]
    prompt = rng.standard_normal((args.prompt, model)).astype(np.float32)

    runs = [(f, 0) for f in args.formats.split(",")]
    if args.residual:
        runs.append(("affine:4:64", args.residual))
    print(f"qsdpa {qsdpa.__version__}: {args.layers} layers, Hq {args.heads}, Hkv {args.kv_heads}, "
          f"D {args.head_dim}, prompt {args.prompt}, {args.tokens} decoded tokens")
    print(f"{'cache format':<24}{'tokens/s':>10}{'cache MiB':>11}{'vs f16':>8}{'drift':>10}")
    base = None
    for fmt, residual in runs:
        tps, nbytes, x = run(fmt, args, weights, prompt, residual)
        if base is None and fmt == "f16" and not residual:
            base = (nbytes, x)
        name = fmt + (f" + window {residual}" if residual else "")
        ratio = f"{nbytes / base[0]:.3f}" if base else "-"
        drift = f"{np.abs(x - base[1]).max() / np.abs(base[1]).max():.2e}" if base else "-"
        print(f"{name:<24}{tps:>10.1f}{nbytes / 2**20:>11.2f}{ratio:>8}{drift:>10}")
    print("drift: max |h - h_f16| / max |h_f16| of the last hidden state (f16 cache = reference)")


if __name__ == "__main__":
    main()
