#!/usr/bin/python3
"""Independent PyTorch reference of the GLM-130B forward pass, and the golden-file generator.

This is a plain-PyTorch port of the math of the released reference model (class ``GLM130B`` in
SwissArmyTransformer ``model/official/glm130B_model.py`` with its ``RotaryEmbedding``, as used by
THUDM/GLM-130B), written from /work/shared/GLM130B.md sections 1-3 and 7.  It shares no code with
the C++ runtime.  Everything is computed in float64 (the golden logits are then stored as float32),
except where the released model's numerics are part of the definition: the fp16 RoPE tables.

Layout here is batch-first ``[b, s, h]`` (the reference is sequence-first ``[s, b, h]``; the math is
the same).

Run with Debian's torch:  /usr/bin/python3 tests/reference/glm_reference.py [--out tests/golden]
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys

import torch

# ----------------------------------------------------------------------------------------------
# safetensors (stdlib only: struct + json)
# ----------------------------------------------------------------------------------------------

_ST_DTYPES = {  # safetensors dtype name <-> torch dtype
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I8": torch.int8,
    "U8": torch.uint8,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def _tensor_bytes(t):
    """Raw little-endian bytes of a tensor (row-major)."""
    assert sys.byteorder == "little", "this writer assumes a little-endian host"
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Write ``tensors`` (name -> torch tensor, packed in the given order) to ``path``.

    Format: u64 little-endian header length N, N bytes of JSON header (padded with spaces so the
    data starts 8-byte aligned), then the raw tensor data; offsets are relative to the data start.
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        data = _tensor_bytes(t)
        header[name] = {
            "dtype": _ST_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-(8 + len(hjson))) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def log_written(paths, log=print):
    """One line per written file: size, sha256 prefix, path."""
    for path in paths:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        log(f"{os.path.getsize(path):9d}  {digest}  {os.path.relpath(path)}")


def read_safetensors(path):
    """Read a safetensors file; returns ``(tensors, metadata)`` (tensors: name -> torch tensor)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = raw[8 + n:]
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _ST_DTYPES[info["dtype"]]
        shape = info["shape"]
        buf = bytearray(data[begin:end])
        if dtype == torch.bfloat16:
            t = torch.frombuffer(buf, dtype=torch.int16).view(torch.bfloat16) if buf else torch.empty(0, dtype=dtype)
        else:
            t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        count = math.prod(shape)
        assert t.numel() == count, f"{name}: {t.numel()} elements for shape {shape}"
        tensors[name] = t.reshape(shape)
    return tensors, metadata


# ----------------------------------------------------------------------------------------------
# Model configuration
# ----------------------------------------------------------------------------------------------

TINY_MODEL = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "ffn_hidden_size": 128,
    "vocab_size": 256,
    "max_sequence_length": 2048,
    "layernorm_epsilon": 1.0e-5,
    "rotary_base": 10000,
    "rotary_fp16_tables": True,
    "deepnorm_alpha": None,
}

TINY_TOKENS = {"MASK": 250, "gMASK": 251, "sMASK": 252, "eod": 253, "sop": 254, "eop": 255,
               "eos": 249, "pad": 0}


def deepnorm_alpha(cfg):
    """Residual scale α: the config value, else sqrt(2·num_layers) as in DeepNormWithGLUMixin."""
    a = cfg.get("deepnorm_alpha")
    return float(a) if a is not None else math.sqrt(2.0 * cfg["num_layers"])


def head_dim(cfg):
    assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
    return cfg["hidden_size"] // cfg["num_attention_heads"]


def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v != 0.0 and abs(v) < 1e-3:  # 1e-05 -> "1.0e-5" (YAML 1.2 float syntax)
            mant, exp = f"{v:e}".split("e")
            mant = mant.rstrip("0")
            return f"{mant}0e{int(exp)}" if mant.endswith(".") else f"{mant}e{int(exp)}"
        return repr(v)
    return str(v)


def config_yaml(model, tokens):
    """The glmrt model config (fixed keys, exactly these two sections)."""
    lines = ["model:"]
    for k in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size",
              "max_sequence_length", "layernorm_epsilon", "rotary_base", "rotary_fp16_tables",
              "deepnorm_alpha"):
        lines.append(f"  {k}: {_yaml_scalar(model[k])}")
    toks = ", ".join(f"{k}: {tokens[k]}" for k in ("MASK", "gMASK", "sMASK", "eod", "sop", "eop", "eos", "pad"))
    lines.append(f"tokens: {{{toks}}}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Weights (released names and shapes, GLM130B.md section 7; [out, in] for linear weights)
# ----------------------------------------------------------------------------------------------

def weight_shapes(cfg):
    h, F, V, L = cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["vocab_size"], cfg["num_layers"]
    shapes = {"transformer.word_embeddings.weight": [V, h]}
    for i in range(L):
        p = f"transformer.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": [h],
            p + "input_layernorm.bias": [h],
            p + "attention.query_key_value.weight": [3 * h, h],
            p + "attention.query_key_value.bias": [3 * h],
            p + "attention.dense.weight": [h, h],
            p + "attention.dense.bias": [h],
            p + "post_attention_layernorm.weight": [h],
            p + "post_attention_layernorm.bias": [h],
            p + "mlp.dense_h_to_4h.weight": [2 * F, h],
            p + "mlp.dense_h_to_4h.bias": [2 * F],
            p + "mlp.dense_4h_to_h.weight": [h, F],
            p + "mlp.dense_4h_to_h.bias": [h],
        })
    shapes["transformer.final_layernorm.weight"] = [h]
    shapes["transformer.final_layernorm.bias"] = [h]
    return shapes


def make_weights(cfg, seed):
    """Random F32 weights with non-trivial values that keep the activations O(1).

    Matrices ~ N(0, 0.1²) (fan-in 64 or 128 gives O(1) outputs from O(1) LayerNorm outputs);
    the embedding ~ N(0, 0.25²) so the tied logits have std ≈ 2; biases nonzero; LN weights 1+noise.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * std + mean).float()

    w = {}
    for name, shape in weight_shapes(cfg).items():
        if name.endswith("word_embeddings.weight"):
            w[name] = normal(shape, 0.25)
        elif "layernorm.weight" in name:
            w[name] = normal(shape, 0.1, 1.0)
        elif "layernorm.bias" in name:
            w[name] = normal(shape, 0.1)
        elif name.endswith(".weight"):
            w[name] = normal(shape, 0.1)
        else:  # linear biases
            w[name] = normal(shape, 0.05)
    return w


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

def rope_tables(cfg, num_positions, precision=None):
    """cos/sin tables ``[num_positions, d]`` (float64 holding the table values), d = head dim.

    As RotaryEmbedding: ``freqs[t, i] = t · inv_freq[i]``, ``emb = cat(freqs, freqs)`` (so column i
    and i + d/2 share an angle: rotate-half pairing), ``cos = emb.cos()``, ``sin = emb.sin()``.

    precision:
      "fp16"  -- the released model (rotary_fp16_tables: true):
                 inv_freq = fp16(1 / base ** (arange(0, d, 2).float() / d))  (computed in fp32),
                 t = fp16(position), angle = fp16(t · inv_freq)  (fp16 product: exact product,
                 rounded once to fp16), cos = fp16(cosf(float(angle))), likewise sin.
      "exact" -- (false) angle = position · base^(-2i/d), all in float64.
      "fp32"  -- not a config mode: fp32 tables as a C++ runtime would naturally build them for
                 the exact mode (used only by the self-check that measures that gap).
    Default: from cfg["rotary_fp16_tables"].
    """
    if precision is None:
        precision = "fp16" if cfg["rotary_fp16_tables"] else "exact"
    d = head_dim(cfg)
    base = cfg["rotary_base"]
    if precision == "fp16":
        # 1. / (base ** (torch.arange(0, dim, 2).float() / dim)), then .half()
        inv_freq = (1.0 / (base ** (torch.arange(0, d, 2).float() / d))).half()
        t = torch.arange(num_positions, dtype=torch.float64).half()  # positions as fp16
        # fp16 × fp16 product is exact in float64; one rounding to fp16 = the fp16 einsum
        angle = (t.double()[:, None] * inv_freq.double()[None, :]).half()
        # cosf of the fp16 angle: a correctly rounded fp32 cos (cos in float64, rounded to fp32),
        # then rounded to fp16.  (Rounding the float64 cos straight to fp16 can differ at ties.)
        a64 = angle.double()
        cos = a64.cos().float().half().double()
        sin = a64.sin().float().half().double()
    elif precision == "exact":
        inv_freq = 1.0 / (float(base) ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        angle = torch.arange(num_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
        cos, sin = angle.cos(), angle.sin()
    elif precision == "fp32":
        inv_freq = 1.0 / (float(base) ** (torch.arange(0, d, 2).float() / d))
        angle = torch.arange(num_positions).float()[:, None] * inv_freq[None, :]
        cos, sin = angle.cos().double(), angle.sin().double()
    else:
        raise ValueError(precision)
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def rotate_half(x):
    """cat(-x[d/2:], x[:d/2]) over the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def build_mask(seq_len, seps, segment_lengths=None):
    """Dense ``[s, s]`` 0/1 float64 attention mask of one batch row (1 = may attend).

    The row is a concatenation of segments (packed sub-sequences); segment k starts at o_k, has
    length l_k and separator sep_k (0 <= sep_k <= l_k).  Query i of segment k sees key j iff j is in
    segment k and (j - o_k < sep_k or j <= i): bidirectional prefix, causal after it; segments never
    see each other.  ``segment_lengths`` omitted = one segment spanning the whole row.
    """
    if segment_lengths is None:
        segment_lengths = [seq_len]
    assert len(seps) == len(segment_lengths), "one sep per segment"
    assert sum(segment_lengths) == seq_len, "segment lengths must sum to the row length"
    mask = torch.zeros(seq_len, seq_len, dtype=torch.float64)
    o = 0
    for length, sep in zip(segment_lengths, seps):
        assert 0 <= sep <= length
        block = torch.ones(length, length, dtype=torch.float64).tril()  # j <= i
        block[:, :sep] = 1.0  # every token sees the prefix
        mask[o:o + length, o:o + length] = block
        o += length
    return mask


def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last dim, biased variance, eps inside the sqrt."""
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def gelu(x):
    """Exact (erf) GELU, F.gelu's default."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def linear(x, weight, bias=None):
    """x · Wᵀ + b with W stored [out, in]."""
    y = x @ weight.transpose(0, 1)
    return y if bias is None else y + bias


def attention(a, w, prefix, mask, cos, sin, cfg, mask_mode="fill"):
    """Self-attention of one layer.  a: [b, s, h]; mask: [b, s, s] 0/1; cos/sin: [b, s, d]
    (already gathered by position id).

    mask_mode "fill" is the reference literally (scores·mask - 10000·(1-mask)); "exclude" drops
    masked keys from the softmax (what a fused kernel does) -- used only by the self-check.
    """
    b, s, h = a.shape
    nh = cfg["num_attention_heads"]
    d = h // nh
    # 1. qkv = a·W_qkvᵀ + b, rows interleaved per head: [b, s, 3h] -> [b, s, nh, 3d] -> q | k | v
    qkv = linear(a, w[prefix + "query_key_value.weight"], w[prefix + "query_key_value.bias"])
    qkv = qkv.view(b, s, nh, 3 * d)
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    # 2. RoPE on q and k (cos/sin broadcast over heads)
    c, sn = cos[:, :, None, :], sin[:, :, None, :]
    q = q * c + rotate_half(q) * sn
    k = k * c + rotate_half(k) * sn
    # 3. scores [b, nh, s_q, s_k] = q·kᵀ / sqrt(d).  (The reference divides q by sqrt(d)·(layer+1)
    #    and multiplies the scores by (layer+1) again: the same math, for fp16 range only.)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, nh, s, d]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    m = mask[:, None, :, :]
    if mask_mode == "fill":
        scores = scores * m - 10000.0 * (1.0 - m)
        probs = torch.softmax(scores, dim=-1)
    elif mask_mode == "exclude":
        scores = scores.masked_fill(m == 0, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
    else:
        raise ValueError(mask_mode)
    ctx = probs @ v  # [b, nh, s, d]
    ctx = ctx.transpose(1, 2).reshape(b, s, h)  # heads concatenated: [b, s, nh·d]
    # 4. output projection
    return linear(ctx, w[prefix + "dense.weight"], w[prefix + "dense.bias"])


def geglu_ffn(m, w, prefix):
    """u = m·W_h4hᵀ + b (width 2F); x1 = first half (linear), x2 = second half (erf GELU);
    FFN = (x1 ⊙ gelu(x2))·W_4hhᵀ + b."""
    u = linear(m, w[prefix + "dense_h_to_4h.weight"], w[prefix + "dense_h_to_4h.bias"])
    x1, x2 = u.chunk(2, dim=-1)
    return linear(x1 * gelu(x2), w[prefix + "dense_4h_to_h.weight"], w[prefix + "dense_4h_to_h.bias"])


def layer_forward(x, w, layer_id, mask, cos, sin, cfg, mask_mode="fill"):
    """One DeepNorm layer (DeepNormWithGLUMixin.layer_forward)."""
    p = f"transformer.layers.{layer_id}."
    eps = cfg["layernorm_epsilon"]
    alpha = deepnorm_alpha(cfg)
    a = layer_norm(x, w[p + "input_layernorm.weight"], w[p + "input_layernorm.bias"], eps)
    x = alpha * a + attention(a, w, p + "attention.", mask, cos, sin, cfg, mask_mode)
    m = layer_norm(x, w[p + "post_attention_layernorm.weight"], w[p + "post_attention_layernorm.bias"], eps)
    return alpha * m + geglu_ffn(m, w, p + "mlp.")


def _as_f64(weights):
    return {k: v.double() for k, v in weights.items()}


def glm_forward(weights, cfg, tokens, position_ids, sep, segment_lengths=None, *,
                rope_precision=None, mask_mode="fill"):
    """Logits ``[b, s, V]`` (float64) of the tiny GLM.

    tokens, position_ids: int lists / tensors [b, s]; sep[b]: one separator per segment of row b;
    segment_lengths[b]: lengths of row b's segments (None, or a None row: one segment).
    """
    w = _as_f64(weights)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    position_ids = torch.as_tensor(position_ids, dtype=torch.long)
    b, s = tokens.shape
    assert position_ids.shape == (b, s)
    assert int(position_ids.min()) >= 0 and int(position_ids.max()) < cfg["max_sequence_length"]
    if segment_lengths is None:
        segment_lengths = [None] * b
    mask = torch.stack([build_mask(s, sep[r], segment_lengths[r]) for r in range(b)])  # [b, s, s]
    cos_t, sin_t = rope_tables(cfg, cfg["max_sequence_length"], rope_precision)
    cos, sin = cos_t[position_ids], sin_t[position_ids]  # gather rows by position id: [b, s, d]

    E = w["transformer.word_embeddings.weight"]
    x = E[tokens]  # no scaling, no position embedding
    for i in range(cfg["num_layers"]):
        x = layer_forward(x, w, i, mask, cos, sin, cfg, mask_mode)
    y = layer_norm(x, w["transformer.final_layernorm.weight"], w["transformer.final_layernorm.bias"],
                   cfg["layernorm_epsilon"])
    return y @ E.transpose(0, 1)  # tied output head, no bias


def forward_case(weights, cfg, case, **kw):
    return glm_forward(weights, cfg, case["tokens"], case["position_ids"], case["sep"],
                       case.get("segment_lengths"), **kw)


# ----------------------------------------------------------------------------------------------
# Golden inputs
# ----------------------------------------------------------------------------------------------

def make_cases(cfg, tok, seed):
    """The three forward cases (inputs only; the same input serves both RoPE modes)."""
    g = torch.Generator().manual_seed(seed)
    V = cfg["vocab_size"]

    def rand_tokens(n):
        return torch.randint(0, V, (n,), generator=g).tolist()

    cases = {}

    # 1. plain: batch 2, seq 24, one segment per row (segment_lengths omitted), arange positions;
    #    row 0 fully causal (sep 0), row 1 bidirectional prefix of 10.
    s = 24
    r0 = rand_tokens(s)
    r0[7], r0[15], r0[23] = tok["eos"], tok["eod"], tok["pad"]
    r1 = rand_tokens(s)
    r1[3], r1[9], r1[10] = tok["sMASK"], tok["gMASK"], tok["sop"]
    cases["plain"] = {
        "tokens": [r0, r1],
        "position_ids": [list(range(s)), list(range(s))],
        "sep": [[0], [10]],
    }

    # 2. packed: batch 2, seq 32; positions restart at 0 in each segment.
    #    Row 0: [12 | 20], seps [5, 7].
    #      Segment 0 is [gMASK]-style: 4 context tokens + [gMASK] (sep = 4+1) + sop + 6 generated.
    #      Segment 1 is [MASK]-style: Part A (7 tokens, two [MASK] at offsets 1 and 4, sep = 7),
    #      Part B = the spans in shuffled order, each [sop]+span, every token at its [MASK]'s
    #      position: [sop + 6 tokens] at position 4, then [sop + 5 tokens] at position 1.
    seg0 = rand_tokens(4) + [tok["gMASK"], tok["sop"]] + rand_tokens(6)
    pos0 = list(range(12))
    part_a = rand_tokens(7)
    part_a[1], part_a[4] = tok["MASK"], tok["MASK"]
    part_b = [tok["sop"]] + rand_tokens(6) + [tok["sop"]] + rand_tokens(5)
    seg1 = part_a + part_b
    pos1 = list(range(7)) + [4] * 7 + [1] * 6
    assert len(seg1) == len(pos1) == 20
    row0, prow0 = seg0 + seg1, pos0 + pos1
    #    Row 1: [8 | 8 | 16], seps [8, 1, 16] (sep == len: fully bidirectional), arange per segment.
    s0 = rand_tokens(8)
    s0[5], s0[7] = tok["sMASK"], tok["eos"]
    s1 = rand_tokens(8)
    s1[0] = tok["sop"]
    s2 = rand_tokens(16)
    s2[2], s2[9], s2[15] = tok["eop"], tok["pad"], tok["eod"]
    row1, prow1 = s0 + s1 + s2, list(range(8)) + list(range(8)) + list(range(16))
    cases["packed"] = {
        "tokens": [row0, row1],
        "position_ids": [prow0, prow1],
        "sep": [[5, 7], [8, 1, 16]],
        "segment_lengths": [[12, 20], [8, 8, 16]],
    }

    # 3. longpos: batch 1, seq 16, one segment sep 6, positions random distinct in [1000, 2047]
    #    (unsorted: the tables are gathered by position id).
    s = 16
    lo, hi = 1000, cfg["max_sequence_length"] - 1
    pos = (torch.randperm(hi - lo + 1, generator=g)[:s] + lo).tolist()
    t = rand_tokens(s)
    t[5], t[6] = tok["gMASK"], tok["sop"]
    cases["longpos"] = {
        "tokens": [t],
        "position_ids": [pos],
        "sep": [[6]],
        "segment_lengths": [[16]],
    }
    return cases


def input_json(case):
    """The `glmrt forward --input` JSON, one batch row per line."""
    keys = [k for k in ("tokens", "position_ids", "sep", "segment_lengths") if k in case]
    parts = []
    for k in keys:
        rows = ",\n    ".join(json.dumps(r, separators=(", ", ": ")) for r in case[k])
        parts.append(f'  "{k}": [\n    {rows}\n  ]')
    return "{\n" + ",\n".join(parts) + "\n}\n"


# ----------------------------------------------------------------------------------------------
# Self-checks (run on every generation)
# ----------------------------------------------------------------------------------------------

def rel_diff(a, b):
    """max|a-b| / max|b| (the tolerance measure of the C++ comparison)."""
    return float((a - b).abs().max() / b.abs().max())


def self_checks(weights, cfg_fp16, cfg_exact, cases, logits, log):
    w = weights

    # (a) fp16 RoPE tables really differ from exact ones at long positions.
    d_long = float((logits[("longpos", "fp16rope")] - logits[("longpos", "exactrope")]).abs().max())
    d_plain = float((logits[("plain", "fp16rope")] - logits[("plain", "exactrope")]).abs().max())
    log(f"check: max|fp16rope - exactrope| logits: longpos {d_long:.6g}, plain {d_plain:.6g}")
    assert d_long > 1e-2, "fp16 RoPE tables should differ visibly from exact ones at long positions"
    ct16, _ = rope_tables(cfg_fp16, cfg_fp16["max_sequence_length"])
    cte, _ = rope_tables(cfg_exact, cfg_exact["max_sequence_length"])
    log(f"check: max|cos_fp16 - cos_exact| over positions 0..2047: {float((ct16 - cte).abs().max()):.4g}")

    # (b) the fp16 table recipe: the correctly rounded cosf used above vs torch's own fp32 cos.
    d = head_dim(cfg_fp16)
    inv = (1.0 / (cfg_fp16["rotary_base"] ** (torch.arange(0, d, 2).float() / d))).half()
    ang = (torch.arange(2048, dtype=torch.float64).half().double()[:, None] * inv.double()).half()
    alt = torch.cat([ang.float().cos().half().double()] * 2, dim=-1)
    n_alt = int((alt != ct16).sum())
    once = torch.cat([ang.double().cos().half().double()] * 2, dim=-1)
    n_once = int((once != ct16).sum())
    log(f"check: fp16 cos table entries differing from torch.float32.cos()->fp16: {n_alt}; "
        f"from double cos rounded once to fp16: {n_once} (of {ct16.numel()})")
    inv64 = (1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))).half()
    assert torch.equal(inv, inv64), "fp16 inv_freq should not depend on fp32 pow rounding"

    # (c) literal -10000 fill == softmax excluding masked keys.
    for (name, mode), ref in logits.items():
        cfg = cfg_fp16 if mode == "fp16rope" else cfg_exact
        alt = forward_case(w, cfg, cases[name], mask_mode="exclude")
        dd = float((alt - ref).abs().max())
        assert dd <= 1e-12, (name, mode, dd)
    log("check: -10000-fill softmax == masked-key-excluding softmax (<= 1e-12) on all cases")

    # (d) packed rows == each segment run alone (block-diagonal mask, per-segment positions).
    worst = 0.0
    for mode, cfg in (("fp16rope", cfg_fp16), ("exactrope", cfg_exact)):
        c = cases["packed"]
        ref = logits[("packed", mode)]
        for r in range(len(c["tokens"])):
            o = 0
            for length, sep in zip(c["segment_lengths"][r], c["sep"][r]):
                alone = glm_forward(w, cfg, [c["tokens"][r][o:o + length]],
                                    [c["position_ids"][r][o:o + length]], [[sep]])
                worst = max(worst, float((alone[0] - ref[r, o:o + length]).abs().max()))
                o += length
        assert worst <= 1e-10, worst
    log(f"check: packed segments == segments run alone (max |Δ| {worst:.3g})")

    # (e) causality: in the sep-0 row of `plain`, logits at i do not depend on tokens after i;
    #     in the sep-10 row, an early position does depend on a later prefix token.
    c = cases["plain"]
    ref = logits[("plain", "fp16rope")]
    toks = [list(r) for r in c["tokens"]]
    toks[0][20] = (toks[0][20] + 1) % cfg_fp16["vocab_size"]
    toks[1][8] = (toks[1][8] + 1) % cfg_fp16["vocab_size"]
    pert = glm_forward(w, cfg_fp16, toks, c["position_ids"], c["sep"])
    assert float((pert[0, :20] - ref[0, :20]).abs().max()) == 0.0
    assert float((pert[0, 20:] - ref[0, 20:]).abs().max()) > 1e-3
    assert float((pert[1, :8] - ref[1, :8]).abs().max()) > 1e-3  # bidirectional prefix
    log("check: causal row is causal; the prefix row sees later prefix tokens")

    # (f) head-interleaved QKV: an explicit per-head loop that slices rows [3dj, 3dj+d) q,
    #     [3dj+d, 3dj+2d) k, [3dj+2d, 3dj+3d) v agrees with the vectorised attention...
    cfg = cfg_fp16
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    d = h // nh
    w64 = _as_f64(w)
    c = cases["packed"]
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(2, 32, h, generator=gen, dtype=torch.float64)
    mask = torch.stack([build_mask(32, c["sep"][r], c["segment_lengths"][r]) for r in range(2)])
    ct, st = rope_tables(cfg, 2048)
    pos = torch.tensor(c["position_ids"])
    cos, sin = ct[pos], st[pos]
    p = "transformer.layers.1.attention."
    vec = attention(a, w64, p, mask, cos, sin, cfg)
    W, B = w64[p + "query_key_value.weight"], w64[p + "query_key_value.bias"]
    heads = []
    for j in range(nh):
        q = a @ W[3 * d * j:3 * d * j + d].T + B[3 * d * j:3 * d * j + d]
        k = a @ W[3 * d * j + d:3 * d * j + 2 * d].T + B[3 * d * j + d:3 * d * j + 2 * d]
        v = a @ W[3 * d * j + 2 * d:3 * d * (j + 1)].T + B[3 * d * j + 2 * d:3 * d * (j + 1)]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        sc = q @ k.transpose(-1, -2) / math.sqrt(d)
        sc = sc.masked_fill(mask == 0, float("-inf"))
        heads.append(torch.softmax(sc, dim=-1) @ v)
    loop = torch.cat(heads, dim=-1) @ w64[p + "dense.weight"].T + w64[p + "dense.bias"]
    assert float((loop - vec).abs().max()) <= 1e-12
    #     ...and reading the same weights as stacked [Q; K; V] changes the output.
    perm = []
    for part in range(3):  # row r of the stacked layout -> its interleaved row
        for j in range(nh):
            perm += list(range(3 * d * j + part * d, 3 * d * j + (part + 1) * d))
    inv_perm = torch.empty(3 * h, dtype=torch.long)
    inv_perm[torch.tensor(perm)] = torch.arange(3 * h)
    wp = dict(w)
    for i in range(cfg["num_layers"]):
        for sfx in ("weight", "bias"):
            key = f"transformer.layers.{i}.attention.query_key_value.{sfx}"
            wp[key] = w[key][inv_perm]
    ref = logits[("packed", "fp16rope")]
    dd = rel_diff(forward_case(wp, cfg, c), ref)
    assert dd > 1e-2, dd
    log(f"check: QKV rows are per-head interleaved (per-head loop agrees; stacked reading "
        f"changes logits by {dd:.3g} rel)")

    # (g) GLU convention: GELU on the second half.  Swapping the halves changes the output, and a
    #     per-unit formula g_i = u_i · gelu(u_{F+i}) agrees with the chunked implementation.
    F_ = cfg["ffn_hidden_size"]
    wp = dict(w)
    for i in range(cfg["num_layers"]):
        for sfx in ("weight", "bias"):
            key = f"transformer.layers.{i}.mlp.dense_h_to_4h.{sfx}"
            wp[key] = torch.cat((w[key][F_:], w[key][:F_]))
    dd = rel_diff(forward_case(wp, cfg, c), ref)
    assert dd > 1e-2, dd
    p = "transformer.layers.0.mlp."
    m = torch.randn(3, h, generator=gen, dtype=torch.float64)
    u = m @ w64[p + "dense_h_to_4h.weight"].T + w64[p + "dense_h_to_4h.bias"]
    gl = torch.stack([u[:, i] * gelu(u[:, F_ + i]) for i in range(F_)], dim=-1)
    ffn = gl @ w64[p + "dense_4h_to_h.weight"].T + w64[p + "dense_4h_to_h.bias"]
    assert float((ffn - geglu_ffn(m, w64, p)).abs().max()) <= 1e-12
    assert float((gelu(u) - torch.nn.functional.gelu(u)).abs().max()) <= 1e-14
    log(f"check: GeGLU = first half · gelu(second half), erf GELU (swapping halves changes "
        f"logits by {dd:.3g} rel)")

    # (h) LayerNorm matches torch's (biased variance, eps inside the sqrt).
    x = torch.randn(5, h, generator=gen, dtype=torch.float64) * 3 + 1
    lw, lb = w64["transformer.final_layernorm.weight"], w64["transformer.final_layernorm.bias"]
    ln = torch.nn.functional.layer_norm(x, (h,), lw, lb, cfg["layernorm_epsilon"])
    assert float((ln - layer_norm(x, lw, lb, cfg["layernorm_epsilon"])).abs().max()) <= 1e-13
    log("check: LayerNorm == torch.nn.functional.layer_norm")

    # (i) information only: how far fp32 tables (what a C++ exact-mode runtime likely builds)
    #     are from the float64 exact tables, in the tolerance measure of the C++ comparison.
    for name in ("plain", "packed", "longpos"):
        f32 = forward_case(w, cfg_exact, cases[name], rope_precision="fp32")
        log(f"info: exactrope {name}: fp32 RoPE tables vs float64 tables, rel diff "
            f"{rel_diff(f32, logits[(name, 'exactrope')]):.3g}")


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

WEIGHT_SEED = 130
INPUT_SEED = 2048
MODES = {"fp16rope": True, "exactrope": False}


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "golden")),
                    help="output directory (default: ../golden next to this script)")
    ap.add_argument("--no-checks", action="store_true", help="skip the self-checks")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # fixed reduction order: byte-identical goldens
    os.makedirs(args.out, exist_ok=True)
    log = print

    cfgs = {mode: dict(TINY_MODEL, rotary_fp16_tables=fp16) for mode, fp16 in MODES.items()}
    weights = make_weights(cfgs["fp16rope"], WEIGHT_SEED)
    cases = make_cases(cfgs["fp16rope"], TINY_TOKENS, INPUT_SEED)

    written = []

    def out(name):
        path = os.path.join(args.out, name)
        written.append(path)
        return path

    write_safetensors(out("tiny_weights.safetensors"), weights,
                      {"format": "pt", "model": "glm-tiny", "generator": "tests/reference/glm_reference.py",
                       "seed": WEIGHT_SEED})
    back, _ = read_safetensors(written[-1])
    assert list(back) == list(weights) and all(torch.equal(back[k], weights[k]) for k in weights)

    for mode, cfg in cfgs.items():
        with open(out(f"tiny_{mode}.yaml"), "w") as f:
            f.write(config_yaml(cfg, TINY_TOKENS))

    logits = {}
    for name, case in cases.items():
        with open(out(f"forward_{name}.json"), "w") as f:
            f.write(input_json(case))
        for mode, cfg in cfgs.items():
            lg = forward_case(weights, cfg, case)
            logits[(name, mode)] = lg
            path = out(f"forward_{name}_{mode}.logits.safetensors")
            write_safetensors(path, {"logits": lg.float()},
                              {"config": f"tiny_{mode}.yaml", "input": f"forward_{name}.json",
                               "weights": "tiny_weights.safetensors",
                               "max_abs": f"{float(lg.abs().max()):.9g}"})
            back, _ = read_safetensors(path)
            assert torch.equal(back["logits"], lg.float())
            log(f"{name:8s} {mode:9s} logits {list(lg.shape)}  max|logit| {float(lg.abs().max()):.6f}  "
                f"std {float(lg.std()):.4f}")

    if not args.no_checks:
        self_checks(weights, cfgs["fp16rope"], cfgs["exactrope"], cases, logits, log)

    log("")
    log_written(written, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
