#!/usr/bin/python3
"""PyTorch side of the decoding benchmarks (bench/generate_bench.sh, bench/gpu_generate_bench.sh).

GLM blank filling with greedy decoding and a KV cache, in plain PyTorch, on the same safetensors
weights and the same prompts as `glmrt generate`:

- Queries: one prompt of token ids per line, all of the same length, each ending with the
  config's [gMASK] id. Context = prompt + [sop]; positions 0..len(prompt) for the context, then
  counting on (gMASK); attention bidirectional over the prompt (keys < len(prompt)), causal from
  sop on (inference/SEMANTICS.md, /work/shared/GLM130B.md §5). All queries run as one batch.
- Model (GLM130B.md §2-3): embedding without scaling; per layer a = LN1(x), x' = α·a + Attn(a),
  m = LN2(x'), out = α·m + GeGLU(m) (α = sqrt(2·num_layers) unless the config names it);
  query_key_value rows interleaved per head (q | k | v of head j at rows [3dj, 3dj+3d)),
  rotate-half RoPE with exact tables (float64 angles rounded once to fp32) or the released fp16
  tables (rotary_fp16_tables), scores q·kᵀ/sqrt(d) with masked entries filled with -10000,
  softmax in fp32, GeGLU = first half · erf-GELU(second half), final LayerNorm, tied head
  (no bias) computed for the last token of each row only.
- KV cache: per layer the keys (after RoPE) and values of every token so far (the released code's
  `mems`), kept in buffers preallocated for the whole run ([batch, heads, context + tokens,
  head dim]; the released code concatenates a new tensor every step, which only adds copying), so
  each decoding step feeds one token per row and attends over the cached keys.
- Greedy: argmax of the fp32 logits of the last token (lowest id among equal maxima); for the
  first --min-gen-length tokens the logits of eop and eos are set to -65504 first, so with
  --tokens G every query generates exactly G tokens.
- Precision: fp32, or bf16 (weights cast to bfloat16 and every op in bfloat16 — as the released
  code runs in fp16 on a GPU — except the softmax, computed in fp32 and cast back, and the logits,
  cast to fp32 for the argmax). On a CPU without bf16 units, torch 1.13's bf16 matmul for more
  than one row runs a generic kernel of ~1-2 GFLOP/s.

Device: --device cpu (default) or cuda. With cuda the weights, the KV cache and every tensor of
the forward live on the GPU; fp32 matmuls are exact fp32 (torch.backends.cuda.matmul.allow_tf32
= torch.backends.cudnn.allow_tf32 = False); bf16 runs as above (cuBLAS bf16 matmuls with
PyTorch's default settings); torch.cuda.synchronize() comes before every clock read that
brackets timed work; the untimed warm-up is a whole prefill of the run's shape plus one decoding
step on a scratch cache (first-use kernel loading and cuBLAS heuristics stay out of the
timings); the banned end ids are a device tensor (no host copy inside a step); there is no
estimate mode (--budget-s is ignored), and the JSON line also carries "device" (the GPU's name).
--init-weights always runs on the CPU.

Timing (time.perf_counter, after one untimed warm-up forward of a couple of tokens through every
layer): the prefill = the forward of the whole context of every row + the head and argmax of
the last token (it yields the first generated token), then every decoding step (one token per
row → the next token). With --budget-s, a run whose predicted time exceeds the budget (the bf16
matmul above) switches to the estimate mode, said so in the JSON ("mode": "estimate"):
  - prefill: one layer's forward on the prefill shape for --estimate-rows rows, timed once,
    × num_layers × batch / rows, + the embedding, final LayerNorm and head, timed at full size;
  - the KV cache is then filled by an fp32 prefill (untimed) whose keys/values are cast to the
    run's precision, and the first token is taken from its logits;
  - decoding: only as many timed steps as fit in the budget (at least --min-decode-steps); the
    per-step time is their mean, and the tokens compared are the ones generated.

    /usr/bin/python3 bench/torch_generate.py --config C.yaml --weights W.safetensors \
        --prompts Q.txt --tokens 16 --precision fp32 --threads 2
prints progress on stderr and one JSON line on stdout:
    {"impl": "pytorch", "precision", "threads", "batch", "prompt_len", "mode", "prefill_seconds",
     "decode_step_seconds": [...], "decode_ms_per_step", "outputs": [[ids of query 0], ...], ...}

Other modes:
    --init-weights W.safetensors --config C.yaml [--seed S]   write seeded random full weights
    --gemm-peak [--gemm-size 4096]                              the fp32 sgemm rate (JSON line)
    --device-ceilings --device cuda|cpu                          the device's ceilings (JSON line):
        {"device", "torch", "gemm_size", "bf16_gemm_tflops", "copy_bytes", "copy_gbs",
         "copy_gbs_best"}: cuda: torch.matmul bf16 8192³ (--ceiling-gemm-size), mean of 10 after
        3 warm-ups (CUDA events); copy = dst.copy_(src) of a --copy-gib (default 2) GiB tensor,
        bytes read + written / time, mean (copy_gbs) and best of 10 after 3 warm-ups. cpu: no
        GEMM rate (null), the copy of a 0.25 GiB tensor (a plumbing check, not a ceiling).
        (--gemm-peak with --device cuda prints the same line.)
"""

import argparse
import json
import math
import mmap
import os
import struct
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="model config (YAML, glmrt's format)")
    ap.add_argument("--weights", help="full weights (safetensors, released names)")
    ap.add_argument("--prompts", help="queries: token ids, comma-separated, one query per line")
    ap.add_argument("--tokens", type=int, default=16, help="tokens to generate per query (G)")
    ap.add_argument("--min-gen-length", type=int, default=None,
                    help="no eop/eos before this many tokens (default: --tokens)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="estimate mode when prefill + decoding would take longer (0 = never)")
    ap.add_argument("--estimate-rows", type=int, default=1,
                    help="estimate mode: rows of the one-layer prefill probe")
    ap.add_argument("--min-decode-steps", type=int, default=2,
                    help="estimate mode: at least this many timed decoding steps")
    ap.add_argument("--init-weights", metavar="PATH", help="write seeded random weights and exit")
    ap.add_argument("--seed", type=int, default=1234, help="--init-weights: seed")
    ap.add_argument("--weight-gain", type=float, default=1.75,
                    help="--init-weights: matrices ~ N(0, (gain/sqrt(fan_in))^2)")
    ap.add_argument("--gemm-peak", action="store_true", help="print the fp32 sgemm rate and exit")
    ap.add_argument("--gemm-size", type=int, default=4096)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the weights, the KV cache and the forward run")
    ap.add_argument("--device-ceilings", action="store_true",
                    help="print the device's bf16 GEMM rate and copy bandwidth and exit")
    ap.add_argument("--ceiling-gemm-size", type=int, default=8192)
    ap.add_argument("--copy-gib", type=float, default=2.0,
                    help="--device-ceilings on cuda: size of the copied tensor (GiB)")
    return ap.parse_args(argv)


ARGS = parse_args()
# One thread count for every pool torch may use: its OpenMP pool (set_num_threads) and the BLAS
# it calls for fp32 GEMMs (Debian's torch uses the system OpenBLAS, whose pool reads
# OPENBLAS_NUM_THREADS when it is loaded, so it must be set before torch is imported).
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

DEV = ARGS.device
if DEV == "cuda":
    # fp32 matmuls exact (no TF32). The legacy flags only: torch >= 2.9 also has the
    # fp32_precision settings, and setting both kinds leaves torch in a "mix of the legacy and
    # new APIs" state that some of its getters refuse.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def clock():
    """time.perf_counter() once the device's queued work is done."""
    sync()
    return time.perf_counter()


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# safetensors (struct + json; tensors read straight into their torch storage)
# ----------------------------------------------------------------------------------------------

_ST = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
       "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8}
_ST_NAME = {v: k for k, v in _ST.items()}


def read_safetensors(path, dtype):
    """name -> tensor converted to `dtype` (float tensors), read tensor by tensor."""
    out = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
        header.pop("__metadata__", None)
        base = 8 + n
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for name, info in header.items():
                b, e = info["data_offsets"]
                st = _ST[info["dtype"]]
                t = torch.empty(info["shape"], dtype=st)
                if e > b:
                    raw = t.view(torch.int16) if st in (torch.bfloat16, torch.float16) else t
                    raw.numpy().reshape(-1).view("u1")[:] = memoryview(mm)[base + b:base + e]
                out[name] = t.to(dtype) if t.is_floating_point() and st != dtype else t
    return out


def write_safetensors(path, tensors, metadata=None):
    """Write name -> tensor (in order); the data starts 8-byte aligned."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_NAME[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-(8 + len(hjson))) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for t in tensors.values():
            t = t.contiguous()
            raw = t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t
            f.write(memoryview(raw.numpy().reshape(-1).view("u1")))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Config, weights
# ----------------------------------------------------------------------------------------------

def load_config(path):
    with open(path) as f:
        rc = yaml.safe_load(f)
    cfg, tok = rc["model"], rc["tokens"]
    cfg = dict(cfg)
    cfg["alpha"] = float(cfg["deepnorm_alpha"]) if cfg.get("deepnorm_alpha") is not None \
        else math.sqrt(2.0 * cfg["num_layers"])
    cfg["eps"] = float(cfg.get("layernorm_epsilon", 1e-5))
    return cfg, tok


def weight_shapes(cfg):
    h, f, V = cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["vocab_size"]
    shapes = {"transformer.word_embeddings.weight": [V, h]}
    for i in range(cfg["num_layers"]):
        p = f"transformer.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": [h], p + "input_layernorm.bias": [h],
            p + "attention.query_key_value.weight": [3 * h, h],
            p + "attention.query_key_value.bias": [3 * h],
            p + "attention.dense.weight": [h, h], p + "attention.dense.bias": [h],
            p + "post_attention_layernorm.weight": [h], p + "post_attention_layernorm.bias": [h],
            p + "mlp.dense_h_to_4h.weight": [2 * f, h], p + "mlp.dense_h_to_4h.bias": [2 * f],
            p + "mlp.dense_4h_to_h.weight": [h, f], p + "mlp.dense_4h_to_h.bias": [h],
        })
    shapes["transformer.final_layernorm.weight"] = [h]
    shapes["transformer.final_layernorm.bias"] = [h]
    return shapes


def init_weights(cfg, tok, seed, gain):
    """Random fp32 weights under which greedy decoding moves around the vocabulary.

    glmrt init's GLM-130B initialisation (Xavier with the DeepNorm gain β on the residual
    branches, embedding std 0.0052) leaves every layer's branch far below the α-scaled residual,
    so the last layer's output is the input token's own embedding, normalised, and greedy
    decoding repeats the last token (sop) forever: the token comparison would test nothing.
    Here matrices ~ N(0, (gain/sqrt(fan_in))²) (branch outputs comparable to α·LN(x)), linear
    biases ~ N(0, 0.02²), LayerNorm weights 1 + N(0, 0.1²), biases N(0, 0.1²), embedding N(0, 1),
    except the rows of MASK, sMASK and gMASK, scaled by 0.01: their logits stay near 0, so greedy
    never generates a mask id (in glmrt a generated mask id opens another blank, whose prefill
    would land in the timings).
    """
    g = torch.Generator().manual_seed(seed)
    w = {}
    for name, shape in weight_shapes(cfg).items():
        if name.endswith("word_embeddings.weight"):
            w[name] = torch.randn(shape, generator=g)
        elif "layernorm.weight" in name:
            w[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif "layernorm.bias" in name:
            w[name] = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".weight"):
            w[name] = torch.randn(shape, generator=g) * (gain / math.sqrt(shape[1]))
        else:
            w[name] = 0.02 * torch.randn(shape, generator=g)
    E = w["transformer.word_embeddings.weight"]
    for t in ("MASK", "sMASK", "gMASK"):
        E[tok[t]] *= 0.01
    return w


class Model:
    def __init__(self, cfg, tensors, dtype):
        self.cfg, self.dtype = cfg, dtype
        self.h, self.nh = cfg["hidden_size"], cfg["num_attention_heads"]
        self.d = self.h // self.nh
        self.E = tensors["transformer.word_embeddings.weight"]
        self.layers = []
        for i in range(cfg["num_layers"]):
            p = f"transformer.layers.{i}."
            self.layers.append({k: tensors[p + k] for k in (
                "input_layernorm.weight", "input_layernorm.bias",
                "attention.query_key_value.weight", "attention.query_key_value.bias",
                "attention.dense.weight", "attention.dense.bias",
                "post_attention_layernorm.weight", "post_attention_layernorm.bias",
                "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias",
                "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias")})
        self.lnf_w = tensors["transformer.final_layernorm.weight"]
        self.lnf_b = tensors["transformer.final_layernorm.bias"]
        cos, sin = rope_tables(cfg)
        self.cos, self.sin = cos.to(dtype), sin.to(dtype)
        if self.E.device.type != "cpu":
            self.cos, self.sin = self.cos.to(self.E.device), self.sin.to(self.E.device)

    def weight_bytes(self):
        n = self.E.numel() + self.lnf_w.numel() + self.lnf_b.numel()
        n += sum(t.numel() for lw in self.layers for t in lw.values())
        return n * torch.finfo(self.dtype).bits // 8


def rope_tables(cfg):
    """cos/sin [max_sequence_length, d], rotate-half (the d/2 angles twice), fp32 values."""
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    P = cfg["max_sequence_length"]
    if cfg.get("rotary_fp16_tables", True):  # the released model's fp16 tables
        inv = (1.0 / (float(cfg.get("rotary_base", 10000)) ** (torch.arange(0, d, 2).float() / d))).half()
        ang = (torch.arange(P).half()[:, None].double() * inv.double()[None, :]).half()
        cos, sin = ang.float().cos().half().float(), ang.float().sin().half().float()
    else:  # exact: float64 angles, rounded once to fp32 (model/rope_tables.cpp)
        inv = 1.0 / (float(cfg.get("rotary_base", 10000)) ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        ang = torch.arange(P, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = ang.cos().float(), ang.sin().float()
    return torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# ----------------------------------------------------------------------------------------------
# Forward with a KV cache
# ----------------------------------------------------------------------------------------------

class KvCache:
    def __init__(self, model, batch, capacity):
        shape = (batch, model.nh, capacity, model.d)
        dev = model.E.device
        self.k = [torch.empty(shape, dtype=model.dtype, device=dev) for _ in model.layers]
        self.v = [torch.empty(shape, dtype=model.dtype, device=dev) for _ in model.layers]
        self.length = 0  # tokens cached (the same for every row)


def layer_forward(model, lw, li, x, cos, sin, cache, mask_add):
    """x: [b, s, h] (the s new tokens of every row); writes their k, v at cache.length."""
    b, s, h = x.shape
    nh, d, alpha, eps = model.nh, model.d, model.cfg["alpha"], model.cfg["eps"]
    a = F.layer_norm(x, (h,), lw["input_layernorm.weight"], lw["input_layernorm.bias"], eps)
    qkv = F.linear(a, lw["attention.query_key_value.weight"], lw["attention.query_key_value.bias"])
    qkv = qkv.view(b, s, nh, 3 * d)
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    q = q * cos + rotate_half(q) * sin  # cos, sin: [1, s, 1, d]
    k = k * cos + rotate_half(k) * sin
    n0 = cache.length
    n1 = n0 + s
    cache.k[li][:, :, n0:n1] = k.transpose(1, 2)
    cache.v[li][:, :, n0:n1] = v.transpose(1, 2)
    keys, values = cache.k[li][:, :, :n1], cache.v[li][:, :, :n1]  # [b, nh, n1, d]
    scores = torch.matmul(q.transpose(1, 2), keys.transpose(-1, -2)) * (1.0 / math.sqrt(d))
    scores = scores.float()
    if mask_add is not None:
        scores = scores + mask_add
    probs = torch.softmax(scores, dim=-1).to(model.dtype)
    ctx = torch.matmul(probs, values).transpose(1, 2).reshape(b, s, h)
    x = a * alpha + F.linear(ctx, lw["attention.dense.weight"], lw["attention.dense.bias"])
    m = F.layer_norm(x, (h,), lw["post_attention_layernorm.weight"], lw["post_attention_layernorm.bias"], eps)
    u1, u2 = F.linear(m, lw["mlp.dense_h_to_4h.weight"], lw["mlp.dense_h_to_4h.bias"]).chunk(2, dim=-1)
    return m * alpha + F.linear(u1 * F.gelu(u2), lw["mlp.dense_4h_to_h.weight"], lw["mlp.dense_4h_to_h.bias"])


def prefix_mask(s, sep, device="cpu"):
    """Additive [s, s] mask of one context: key j visible to query i when j < sep or j <= i."""
    i = torch.arange(s)[:, None]
    j = torch.arange(s)[None, :]
    visible = (j < sep) | (j <= i)
    return torch.zeros(s, s).masked_fill(~visible, -10000.0).to(device)


def head_tokens(model, x_last, ban):
    """Greedy next token per row from the last token's hidden state [b, h]."""
    y = F.layer_norm(x_last, (model.h,), model.lnf_w, model.lnf_b, model.cfg["eps"])
    logits = F.linear(y, model.E).float()  # tied head, no bias
    if ban is not None and len(ban):  # a list of ids, or a tensor of them (--device cuda)
        logits[:, ban] = -65504.0
    return torch.argmax(logits, dim=-1)


def forward(model, tokens, positions, cache, mask_add, ban):
    """tokens [b, s] at positions [s] (the same for every row) -> next token per row."""
    x = F.embedding(tokens, model.E)
    cos, sin = model.cos[positions][None, :, None, :], model.sin[positions][None, :, None, :]
    for li, lw in enumerate(model.layers):
        x = layer_forward(model, lw, li, x, cos, sin, cache, mask_add)
    cache.length += tokens.shape[1]
    return head_tokens(model, x[:, -1], ban)


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------

def gemm_peak(n, reps=3):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def device_ceilings(gemm_n, copy_gib, warm=3, reps=10):
    """The device's bf16 GEMM rate and copy bandwidth (see the module docstring)."""
    out = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
           "torch": torch.__version__, "gemm_size": None, "bf16_gemm_tflops": None}
    if DEV == "cuda":
        def timed(fn):  # ms per call of each of `reps` calls after `warm` untimed ones
            for _ in range(warm):
                fn()
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
            torch.cuda.synchronize()
            ev[0].record()
            for i in range(reps):
                fn()
                ev[i + 1].record()
            torch.cuda.synchronize()
            return [ev[i].elapsed_time(ev[i + 1]) for i in range(reps)]

        n = gemm_n
        a = torch.randn(n, n, device=DEV).to(torch.bfloat16)
        b = torch.randn(n, n, device=DEV).to(torch.bfloat16)
        c = torch.empty(n, n, device=DEV, dtype=torch.bfloat16)
        ms = timed(lambda: torch.matmul(a, b, out=c))
        out.update({"gemm_size": n, "bf16_gemm_tflops": 2.0 * n ** 3 / (sum(ms) / reps / 1e3) / 1e12})
        del a, b, c
        nbytes = int(copy_gib * 2 ** 30) // 4 * 4
    else:
        nbytes = 2 ** 28
    src = torch.ones(nbytes // 4, device=DEV)
    dst = torch.empty_like(src)
    if DEV == "cuda":
        ms = timed(lambda: dst.copy_(src))
    else:
        for _ in range(warm):
            dst.copy_(src)
        ms = []
        for _ in range(reps):
            t = time.perf_counter()
            dst.copy_(src)
            ms.append(1e3 * (time.perf_counter() - t))
    out.update({"copy_bytes": nbytes, "copy_gbs": 2.0 * nbytes / (sum(ms) / reps / 1e3) / 1e9,
                "copy_gbs_best": 2.0 * nbytes / (min(ms) / 1e3) / 1e9})
    return out


def linear_rate(h, rows_out, m, dtype, reps=2):
    """Seconds of one [m, h] x [rows_out, h]ᵀ linear in dtype (best of reps after a warm-up)."""
    w, x = torch.randn(rows_out, h).to(dtype), torch.randn(m, h).to(dtype)
    F.linear(x, w)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        F.linear(x, w)
        best = min(best, time.perf_counter() - t)
    return best


def main():
    torch.set_num_threads(ARGS.threads)
    if ARGS.device_ceilings or (ARGS.gemm_peak and DEV == "cuda"):
        print(json.dumps(device_ceilings(ARGS.ceiling_gemm_size, ARGS.copy_gib)), flush=True)
        return 0
    if ARGS.gemm_peak:
        print(json.dumps({"threads": ARGS.threads, "gemm_size": ARGS.gemm_size,
                          "sgemm_gflops": gemm_peak(ARGS.gemm_size), "torch": torch.__version__}))
        return 0
    cfg, tok = load_config(ARGS.config)
    if ARGS.init_weights:
        t = time.perf_counter()
        w = init_weights(cfg, tok, ARGS.seed, ARGS.weight_gain)
        write_safetensors(ARGS.init_weights, w, {"format": "pt", "generator": "bench/torch_generate.py",
                                                 "seed": ARGS.seed, "gain": ARGS.weight_gain})
        log(f"wrote {ARGS.init_weights} ({sum(x.numel() for x in w.values()) / 1e6:.1f} M parameters) "
            f"in {time.perf_counter() - t:.1f} s")
        return 0

    dtype = torch.float32 if ARGS.precision == "fp32" else torch.bfloat16
    G = ARGS.tokens
    min_gen = G if ARGS.min_gen_length is None else ARGS.min_gen_length
    ban = [tok["eop"], tok["eos"]]
    with open(ARGS.prompts) as f:
        prompts = [[int(x) for x in line.split(",")] for line in f if line.strip()]
    P = len(prompts[0])
    assert all(len(p) == P for p in prompts), "prompts must have equal length"
    assert all(p[-1] == tok["gMASK"] for p in prompts), "every prompt must end with [gMASK]"
    B, S = len(prompts), P + 1
    h, L = cfg["hidden_size"], cfg["num_layers"]
    ctx = torch.tensor([p + [tok["sop"]] for p in prompts], dtype=torch.long)

    t = time.perf_counter()
    tensors = read_safetensors(ARGS.weights, dtype)
    if DEV != "cpu":
        tensors = {k: v.to(DEV) for k, v in tensors.items()}
        ctx = ctx.to(DEV)
    model = Model(cfg, tensors, dtype)
    where = f"{ARGS.threads} threads" if DEV == "cpu" else f"{DEV} ({torch.cuda.get_device_name()})"
    log(f"torch {torch.__version__}, {where}, {ARGS.precision}: weights "
        f"{model.weight_bytes() / 1e9:.2f} GB loaded in {clock() - t:.1f} s; batch {B}, "
        f"context {S}, {G} tokens")

    out = {"impl": "pytorch", "torch": torch.__version__, "precision": ARGS.precision,
           "threads": ARGS.threads, "batch": B, "prompt_len": P, "tokens": G,
           "weight_bytes": model.weight_bytes()}
    if DEV != "cpu":
        out["device"] = torch.cuda.get_device_name()
    with torch.no_grad():
        if DEV != "cpu":
            return run_on_device(model, ctx, out, S, P, G, min_gen, ban)
        # Warm-up: two tokens of one row through every layer (thread pools, first-touch pages).
        warm = KvCache(model, 1, 2)
        forward(model, ctx[:1, :2], torch.arange(2), warm, None, ban)
        del warm

        # Predicted time (for the budget): one h -> 2F linear at the prefill and decoding shapes,
        # scaled by the layers' matrix sizes.
        f = cfg["ffn_hidden_size"]
        mats = 3 * h * h + h * h + 3 * f * h  # per layer; the h->2F linear has 2fh of them
        probe_m = min(B * S, 64)
        t_pre = linear_rate(h, 2 * f, probe_m, dtype, reps=1) * (B * S / probe_m) * mats / (2 * f * h) * L
        t_dec = linear_rate(h, 2 * f, B, dtype) * mats / (2 * f * h) * L
        predicted = t_pre + (G - 1) * t_dec
        run_start = time.perf_counter()
        mode = "full" if ARGS.budget_s <= 0 or predicted <= ARGS.budget_s else "estimate"
        log(f"predicted: prefill {t_pre:.1f} s, decoding step {t_dec * 1e3:.0f} ms -> {predicted:.0f} s "
            f"({mode} mode)")
        out.update({"mode": mode, "predicted_seconds": predicted})

        cache = KvCache(model, B, S + G)
        mask = prefix_mask(S, P)
        if mode == "full":
            t = time.perf_counter()
            nxt = forward(model, ctx, torch.arange(S), cache, mask, ban if min_gen > 0 else None)
            prefill = time.perf_counter() - t
            steps = G - 1
        else:
            r = max(1, min(ARGS.estimate_rows, B))
            one = KvCache(model, r, S)
            x = torch.randn(r, S, h).to(dtype)
            cos, sin = model.cos[:S][None, :, None, :], model.sin[:S][None, :, None, :]
            t = time.perf_counter()
            layer_forward(model, model.layers[0], 0, x, cos, sin, one, mask)
            layer_s = time.perf_counter() - t
            del one
            xl = torch.randn(B, h).to(dtype)
            t = time.perf_counter()
            F.embedding(ctx, model.E)
            head_tokens(model, xl, ban)
            head_s = time.perf_counter() - t
            prefill = layer_s * L * B / r + head_s
            log(f"estimate: one layer on {r} x {S} tokens {layer_s:.2f} s, embedding + head "
                f"{head_s:.2f} s -> prefill ≈ {prefill:.1f} s")
            out.update({"estimate_layer_seconds": layer_s, "estimate_rows": r,
                        "estimate_head_seconds": head_s})
            # The cache from an fp32 prefill (untimed), cast to the run's precision.
            t = time.perf_counter()
            m32 = Model(cfg, {k: v.float() for k, v in tensors.items()}, torch.float32)
            c32 = KvCache(m32, B, S)
            nxt = forward(m32, ctx, torch.arange(S), c32, mask, ban if min_gen > 0 else None)
            for li in range(L):
                cache.k[li][:, :, :S] = c32.k[li]
                cache.v[li][:, :, :S] = c32.v[li]
            cache.length = S
            del m32, c32
            log(f"estimate: KV cache filled by an fp32 prefill in {time.perf_counter() - t:.1f} s")
            left = ARGS.budget_s - (time.perf_counter() - run_start)
            steps = min(G - 1, max(ARGS.min_decode_steps, int(left / max(t_dec, 1e-9))))
        del tensors
        log(f"prefill {prefill:.3f} s ({B * S} tokens)")
        return decode_and_report(model, nxt, cache, out, prefill, S, steps, min_gen, ban)


def decode_and_report(model, nxt, cache, out, prefill, S, steps, min_gen, ban):
    """The timed decoding steps after a prefill that gave `nxt` (one token per row), then the JSON line."""
    B = nxt.shape[0]
    gen = [[x] for x in nxt.tolist()]
    times = []
    for i in range(1, steps + 1):
        pos = torch.tensor([S - 1 + i], device=DEV)
        t = clock()
        nxt = forward(model, nxt[:, None], pos, cache, None, ban if i < min_gen else None)
        times.append(clock() - t)
        for r, x in enumerate(nxt.tolist()):
            gen[r].append(x)
    if times:
        log(f"decode: {len(times)} steps, {1e3 * sum(times) / len(times):.2f} ms/step "
            f"(first {1e3 * times[0]:.2f}, best {1e3 * min(times):.2f})")
    out.update({"prefill_seconds": prefill, "prefill_tokens": B * S, "decode_steps": len(times),
                "decode_step_seconds": times,
                "decode_ms_per_step": 1e3 * sum(times) / len(times) if times else 0.0,
                "generated": len(gen[0]), "outputs": gen})
    print(json.dumps(out), flush=True)
    return 0


def run_on_device(model, ctx, out, S, P, G, min_gen, ban):
    """The full run on the GPU: a warm-up of the run's own shapes, then the timed prefill and steps."""
    B = ctx.shape[0]
    ban = torch.tensor(ban, dtype=torch.long, device=DEV)
    pos_ctx = torch.arange(S, device=DEV)
    mask = prefix_mask(S, P, DEV)
    t = clock()
    warm = KvCache(model, B, S + 1)
    nxt = forward(model, ctx, pos_ctx, warm, mask, ban if min_gen > 0 else None)
    forward(model, nxt[:, None], torch.tensor([S], device=DEV), warm, None, ban if min_gen > 1 else None)
    del warm
    log(f"warm-up (prefill + one step, untimed) {clock() - t:.2f} s")
    out.update({"mode": "full", "predicted_seconds": None})

    cache = KvCache(model, B, S + G)
    t = clock()
    nxt = forward(model, ctx, pos_ctx, cache, mask, ban if min_gen > 0 else None)
    prefill = clock() - t
    log(f"prefill {prefill * 1e3:.2f} ms ({B * S} tokens)")
    return decode_and_report(model, nxt, cache, out, prefill, S, G - 1, min_gen, ban)


if __name__ == "__main__":
    sys.exit(main())
