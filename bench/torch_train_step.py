#!/usr/bin/python3
"""PyTorch side of the training-step benchmark (bench/train_bench.sh).

The GLM of bench/configs/train_bench.yaml in efficient, idiomatic PyTorch, trained like glmrt's
Trainer: nn.Linear for the four layer linears (query_key_value with rows interleaved per head:
q, k, v of head j at rows [3dj, 3dj+3d)), nn.LayerNorm, GeGLU with exact (erf) GELU on the second
half, rotate-half RoPE with exact tables gathered by position id, a dense additive attention mask
built once per micro-batch outside the timed region, explicit matmul + softmax attention (torch
1.13 has no scaled_dot_product_attention), DeepNorm residuals x·α + f(x) on the LayerNorm output
with α = sqrt(2·num_layers), the output head tied to the word embedding, fp32 cross-entropy
weighted by the loss mask (Σ loss·mask / Σ mask per micro-batch, averaged over micro-batches),
the embedding gradient shrink (gradient × α_EGS on both uses of the embedding, as glmrt),
torch.nn.utils.clip_grad_norm_ and torch.optim.AdamW (weight decay on matrices only) with the
config's hyper-parameters and cosine schedule.

fp32, or bf16 through torch.autocast(device, dtype=torch.bfloat16) (fp32 weights, bf16 compute).

--device cuda runs the same step on a GPU (torch 2.x there): attention then goes through
F.scaled_dot_product_attention with the boolean mask (its fused kernels) instead of the explicit
matmul + softmax, and timings synchronize the device.

Timing: 1 warm-up step, then --steps timed steps (time.perf_counter). When a full step would
blow the time budget (PyTorch's bf16 matmul on a CPU without AVX512-BF16/AMX falls back to a
reference kernel of ~1 GFLOP/s), --mode auto switches to an estimate: one layer's forward +
backward, the embedding/head/loss forward + backward (a model with 0 layers) and the optimizer
are timed once each at the benchmark's shapes, and
    step ≈ micro_batches · (head + num_layers · layer) + optimizer.
The JSON line says which mode produced the figure.

Model FLOPs per step (the formula of bench/train_step_bench.cpp):
    6 · (non-embedding matmul parameters + h·V) · tokens + 12 · s² · h · num_layers · sequences
(attention counted over the full s×s score matrix).

Run with Debian's torch:
    /usr/bin/python3 bench/torch_train_step.py --config bench/configs/train_bench.yaml \
        --steps 3 --threads 2 --precision fp32
Prints progress on stderr and one JSON line on stdout.
"""

import argparse
import json
import math
import os
import resource
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="bench/configs/train_bench.yaml")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after 1 warm-up step")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--mode", choices=("auto", "full", "estimate"), default="auto",
                    help="full steps, the per-part estimate, or auto (estimate only when the full "
                         "run would exceed --budget-s)")
    ap.add_argument("--budget-s", type=float, default=240.0,
                    help="auto mode: most seconds the warm-up + timed steps may take")
    ap.add_argument("--gemm-size", type=int, default=2048)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    return ap.parse_args(argv)


ARGS = parse_args()
# Same thread count for every pool torch may use: its OpenMP pool (set_num_threads) and the
# BLAS it calls for fp32 GEMMs (Debian's torch uses the system libblas, OpenBLAS, whose own pool
# reads OPENBLAS_NUM_THREADS at load time, so it must be set before torch is imported).
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# CPU accounting: how much of the machine other processes used while we were timing
# ----------------------------------------------------------------------------------------------

def _busy_seconds():
    """Busy CPU seconds of the whole machine (user+nice+system+irq+softirq), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def _own_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class LoadMeter:
    """CPU cores used by other processes during a timed region (≈0 on a quiet machine)."""

    def __enter__(self):
        self.t, self.busy, self.own = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t
        other = (_busy_seconds() - self.busy) - (_own_seconds() - self.own)
        self.other_cores = max(0.0, other / wall) if wall > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class GlmLayer(nn.Module):
    """a = LN1(x); x' = α·a + Attn(a); m = LN2(x'); out = α·m + FFN(m)  (DeepNorm, GLM-130B)."""

    def __init__(self, h, heads, ffn, eps, alpha):
        super().__init__()
        self.heads, self.d, self.ffn, self.alpha = heads, h // heads, ffn, alpha
        self.input_layernorm = nn.LayerNorm(h, eps=eps)
        self.query_key_value = nn.Linear(h, 3 * h)  # rows interleaved per head: q | k | v
        self.dense = nn.Linear(h, h)
        self.post_attention_layernorm = nn.LayerNorm(h, eps=eps)
        self.dense_h_to_4h = nn.Linear(h, 2 * ffn)
        self.dense_4h_to_h = nn.Linear(ffn, h)

    def forward(self, x, cos, sin, mask):
        b, s, h = x.shape
        nh, d = self.heads, self.d
        a = self.input_layernorm(x)
        qkv = self.query_key_value(a).view(b, s, nh, 3 * d)
        q, k, v = qkv.split(d, dim=-1)  # [b, s, nh, d] each
        q = q * cos + rotate_half(q) * sin  # cos, sin: [b, s, 1, d]
        k = k * cos + rotate_half(k) * sin
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, nh, s, d]
        if mask.dtype == torch.bool:  # GPU: the fused kernels, True = attend
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d)) + mask
            probs = torch.softmax(scores, dim=-1)
            ctx = torch.matmul(probs.to(v.dtype), v)
        ctx = ctx.transpose(1, 2).reshape(b, s, h)
        x = a * self.alpha + self.dense(ctx)
        m = self.post_attention_layernorm(x)
        u1, u2 = self.dense_h_to_4h(m).chunk(2, dim=-1)
        return m * self.alpha + self.dense_4h_to_h(u1 * F.gelu(u2))  # exact erf GELU


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient × alpha (the embedding gradient shrink)."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.alpha, None


class Glm(nn.Module):
    def __init__(self, cfg, egs, num_layers=None):
        super().__init__()
        h, V = cfg["hidden_size"], cfg["vocab_size"]
        L = cfg["num_layers"] if num_layers is None else num_layers
        alpha = cfg.get("deepnorm_alpha") or math.sqrt(2.0 * cfg["num_layers"])
        eps = float(cfg.get("layernorm_epsilon", 1e-5))
        self.egs = egs
        self.word_embeddings = nn.Embedding(V, h)
        self.layers = nn.ModuleList(
            GlmLayer(h, cfg["num_attention_heads"], cfg["ffn_hidden_size"], eps, alpha) for _ in range(L))
        self.final_layernorm = nn.LayerNorm(h, eps=eps)
        self.init_weights(cfg["num_layers"])

    def init_weights(self, total_layers):
        """GLM-130B's init: Xavier normal (DeepNorm gain β on the value path and the FFN),
        embedding N(0, 0.0052), biases 0 (values matter only to keep the numbers realistic)."""
        beta = (2.0 * total_layers) ** -0.5
        with torch.no_grad():
            nn.init.normal_(self.word_embeddings.weight, std=0.0052)
            for layer in self.layers:
                for lin in (layer.query_key_value, layer.dense, layer.dense_h_to_4h, layer.dense_4h_to_h):
                    gain = 1.0 if lin is layer.query_key_value else beta
                    nn.init.xavier_normal_(lin.weight, gain=gain)
                    nn.init.zeros_(lin.bias)

    def forward(self, tokens, cos, sin, mask_add):
        # Gradient × EGS on both uses of the tied embedding, as glmrt: shrink the weight's grad.
        w = _ScaleGrad.apply(self.word_embeddings.weight, self.egs) if self.egs != 1.0 else \
            self.word_embeddings.weight
        x = F.embedding(tokens, w)
        for layer in self.layers:
            x = layer(x, cos, sin, mask_add)
        return F.linear(self.final_layernorm(x), w)  # tied output head, no bias


# ----------------------------------------------------------------------------------------------
# Data: the synthetic GLM rows of train_step_bench.cpp ([gMASK] mode, sep ≈ 200)
# ----------------------------------------------------------------------------------------------

def make_sample(cfg, tok, r, gen):
    seq = cfg["max_sequence_length"]
    ctx_len = min(199 + 8 * r, seq - 2)
    top = min(tok["eos"], tok["MASK"], tok["gMASK"], tok["sop"])
    rand = lambda n: torch.randint(1, top, (n,), generator=gen)  # noqa: E731
    full = torch.cat([rand(ctx_len), torch.tensor([tok["gMASK"], tok["sop"]]), rand(seq + 1 - ctx_len - 2)])
    pos = torch.arange(seq)
    return {"tokens": full[:-1], "targets": full[1:], "loss_mask": (pos > ctx_len).float(),
            "position_ids": pos, "sep": ctx_len + 1}


def rope_tables(cfg):
    """Exact angles position · base^(-2i/d) in float64, rounded once to fp32; [P, d] (cat twice)."""
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / (float(cfg.get("rotary_base", 10000)) ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(cfg["max_sequence_length"], dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos().float(), ang.sin().float()
    return torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)


class MicroBatch:
    """Everything a micro-batch needs, built once outside the timed region."""

    def __init__(self, samples, tables, device="cpu"):
        cos_t, sin_t = tables
        self.tokens = torch.stack([s["tokens"] for s in samples])
        self.targets = torch.stack([s["targets"] for s in samples])
        self.loss_mask = torch.stack([s["loss_mask"] for s in samples])
        pos = torch.stack([s["position_ids"] for s in samples])
        self.cos, self.sin = cos_t[pos][:, :, None, :], sin_t[pos][:, :, None, :]  # [b, s, 1, d]
        b, s = self.tokens.shape
        visible = torch.ones(s, s).tril().bool().expand(b, s, s).clone()  # key j <= query i
        for r, smp in enumerate(samples):
            visible[r, :, :smp["sep"]] = True  # the bidirectional prefix
        self.mask_add = torch.zeros(b, 1, s, s).masked_fill(~visible[:, None], -10000.0)
        if device != "cpu":
            self.mask_add = visible[:, None]  # boolean, for scaled_dot_product_attention
            for name in ("tokens", "targets", "loss_mask", "cos", "sin", "mask_add"):
                setattr(self, name, getattr(self, name).to(device))


def sync():
    if ARGS.device == "cuda":
        torch.cuda.synchronize()


def micro_batch_loss(model, mb, autocast):
    with torch.autocast(ARGS.device, dtype=torch.bfloat16, enabled=autocast):
        logits = model(mb.tokens, mb.cos, mb.sin, mb.mask_add)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.float().view(-1, V), mb.targets.reshape(-1), reduction="none")
    m = mb.loss_mask.reshape(-1)
    return (loss * m).sum() / m.sum()


# ----------------------------------------------------------------------------------------------
# Training step
# ----------------------------------------------------------------------------------------------

def learning_rate(o, train_steps, t):
    """glmrt's schedule (train/train_config.cpp): warm-up, then cosine/linear/constant decay."""
    lr, min_lr, warm = float(o.get("lr", 1e-4)), float(o.get("min_lr", 1e-5)), int(o.get("warmup_steps", 0))
    if warm > 0 and t <= warm:
        return lr * t / warm
    decay_steps = o.get("decay_steps") or train_steps
    decay = o.get("decay", "cosine")
    if decay == "constant" or decay_steps <= warm:
        return lr
    p = min(1.0, (t - warm) / (decay_steps - warm))
    if decay == "linear":
        return lr - (lr - min_lr) * p
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


class Trainer:
    def __init__(self, model, opt_cfg, train_cfg, micro_batches, autocast):
        self.model, self.opt_cfg, self.train_cfg = model, opt_cfg, train_cfg
        self.mbs, self.autocast, self.t = micro_batches, autocast, 0
        decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2]
        no_decay = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() == 2)]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(opt_cfg.get("weight_decay", 0.1))},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=float(opt_cfg.get("lr", 1e-4)),
            betas=(float(opt_cfg.get("beta1", 0.9)), float(opt_cfg.get("beta2", 0.95))),
            eps=float(opt_cfg.get("eps", 1e-8)), foreach=True)
        self.clip = float(opt_cfg.get("clip_grad", 1.0))

    def optimizer_step(self):
        self.t += 1
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        lr = learning_rate(self.opt_cfg, int(self.train_cfg.get("steps", 100)), self.t)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for mb in self.mbs:  # gradient accumulation
            loss = micro_batch_loss(self.model, mb, self.autocast) / len(self.mbs)
            loss.backward()
            total += float(loss)
        self.optimizer_step()
        return total


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------

def step_flops(cfg, sequences):
    h, f, L, V, s = (cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["num_layers"], cfg["vocab_size"],
                     cfg["max_sequence_length"])
    params = L * (3 * h * h + h * h + 2 * f * h + f * h) + h * V
    return 6.0 * params * s * sequences + 12.0 * s * s * h * L * sequences


def gemm_rate(n, autocast, reps=5, max_seconds=3.0):
    """GFLOP/s of PyTorch's own n×n×n matmul (fp32, or bf16 under autocast), best of `reps`
    after a warm-up (fewer when slow): information only, beside glmrt's GEMM peak."""
    a, b = torch.randn(n, n, device=ARGS.device), torch.randn(n, n, device=ARGS.device)
    best, start = float("inf"), time.perf_counter()
    with torch.autocast(ARGS.device, dtype=torch.bfloat16, enabled=autocast):
        for i in range(reps + 1):
            sync()
            t = time.perf_counter()
            torch.matmul(a, b)
            sync()
            best = min(best, time.perf_counter() - t) if i or best == float("inf") else best
            if time.perf_counter() - start > max_seconds:
                break
    return 2.0 * n ** 3 / best / 1e9


def probe_layer_gemm(cfg, autocast):
    """GFLOP/s of a dense_h_to_4h forward on a quarter of a sequence (for the auto mode)."""
    h, f, s = cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["max_sequence_length"] // 4
    lin, x = nn.Linear(h, 2 * f).to(ARGS.device), torch.randn(1, s, h, device=ARGS.device)
    with torch.no_grad(), torch.autocast(ARGS.device, dtype=torch.bfloat16, enabled=autocast):
        lin(x)
        sync()
        t = time.perf_counter()
        lin(x)
        sync()
        dt = time.perf_counter() - t
    return 2.0 * s * h * 2 * f / dt / 1e9


def estimate_step(cfg, egs, trainer, mbs, autocast):
    """Seconds per step from its parts: micro · (head + L · layer) + optimizer (see the doc)."""
    L = cfg["num_layers"]
    mb = mbs[0]
    # The embedding, final LayerNorm, tied head and loss, forward + backward: a 0-layer model.
    head_model = Glm(cfg, egs, num_layers=0)
    t = time.perf_counter()
    micro_batch_loss(head_model, mb, autocast).backward()
    head = time.perf_counter() - t
    log(f"  estimate: embedding + head + loss fwd+bwd {head:.1f} s")
    # One layer, forward + backward (gradient of a random projection of its output).
    layer = trainer.model.layers[0]
    x = torch.randn(mb.tokens.shape + (cfg["hidden_size"],), requires_grad=True)
    t = time.perf_counter()
    with torch.autocast(ARGS.device, dtype=torch.bfloat16, enabled=autocast):
        y = layer(x, mb.cos, mb.sin, mb.mask_add)
    y.float().backward(torch.randn(y.shape) * 1e-3)
    one_layer = time.perf_counter() - t
    log(f"  estimate: one layer fwd+bwd {one_layer:.1f} s")
    # The optimizer on the full model, with gradients in place.
    for p in trainer.model.parameters():
        p.grad = torch.randn_like(p) * 1e-4
    t = time.perf_counter()
    trainer.optimizer_step()
    opt = time.perf_counter() - t
    log(f"  estimate: clip + AdamW {opt:.2f} s")
    return len(mbs) * (head + L * one_layer) + opt, {"head_s": head, "layer_s": one_layer, "optimizer_s": opt}


def main():
    torch.set_num_threads(ARGS.threads)
    torch.manual_seed(1234)
    with open(ARGS.config) as f:
        rc = yaml.safe_load(f)
    cfg, tok = rc["model"], rc["tokens"]
    train_cfg, opt_cfg = rc.get("train") or {}, rc.get("optimizer") or {}
    autocast = ARGS.precision == "bf16"
    mbsz, gbs = int(train_cfg.get("micro_batch_size", 1)), int(train_cfg.get("global_batch_size", 1))
    seq = cfg["max_sequence_length"]
    egs = float(train_cfg.get("embedding_grad_shrink", 1.0))

    gen = torch.Generator().manual_seed(20240607)
    samples = [make_sample(cfg, tok, r, gen) for r in range(gbs)]
    tables = rope_tables(cfg)
    mbs = [MicroBatch(samples[i:i + mbsz], tables, ARGS.device) for i in range(0, gbs, mbsz)]
    model = Glm(cfg, egs).to(ARGS.device)
    trainer = Trainer(model, opt_cfg, train_cfg, mbs, autocast)
    flops = step_flops(cfg, gbs)
    tokens = gbs * seq

    torch_gemm = gemm_rate(ARGS.gemm_size, autocast)
    probe = probe_layer_gemm(cfg, autocast)
    predicted = flops / (probe * 1e9) * (ARGS.steps + 1)
    log(f"torch {torch.__version__}, {ARGS.threads} threads, {ARGS.precision}: matmul {ARGS.gemm_size}³ "
        f"{torch_gemm:.1f} GFLOP/s; layer-shape linear {probe:.1f} GFLOP/s -> full run ≈ {predicted:.0f} s")
    mode = ARGS.mode
    if mode == "auto":
        mode = "full" if ARGS.device == "cuda" or predicted <= ARGS.budget_s else "estimate"

    out = {"impl": "pytorch", "torch": torch.__version__, "precision": ARGS.precision,
           "device": torch.cuda.get_device_name() if ARGS.device == "cuda" else "cpu",
           "threads": ARGS.threads, "mode": mode, "micro_batches": len(mbs), "seq": seq,
           "tokens_per_step": tokens, "gflop_per_step": flops / 1e9,
           "torch_gemm_gflops": torch_gemm, "torch_layer_linear_gflops": probe}
    with LoadMeter() as load:
        if mode == "full":
            t = time.perf_counter()
            out["loss_warmup"] = trainer.step()
            sync()
            out["warmup_seconds"] = time.perf_counter() - t
            log(f"warm-up step {out['warmup_seconds']:.2f} s, loss {out['loss_warmup']:.4f}")
            times = []
            for i in range(ARGS.steps):
                sync()
                t = time.perf_counter()
                out["loss_last"] = trainer.step()
                sync()
                times.append(time.perf_counter() - t)
                log(f"step {i + 1}: {times[-1]:.2f} s, loss {out['loss_last']:.4f}")
            per_step = sum(times) / len(times)
            out["step_seconds"] = times
            out["best_step_seconds"] = min(times)
            out["steps"] = ARGS.steps
        else:
            log(f"estimate mode (a full {ARGS.precision} run would take ≈ {predicted:.0f} s)")
            per_step, parts = estimate_step(cfg, egs, trainer, mbs, autocast)
            out.update(parts)
            out["steps"] = 0
    out["other_load_cores"] = load.other_cores
    out["seconds_per_step"] = per_step
    out["tokens_per_s"] = tokens / per_step
    out["gflops"] = flops / per_step / 1e9
    log(f"pytorch {ARGS.precision} ({mode}): {per_step:.2f} s/step, {tokens / per_step:.0f} tokens/s, "
        f"{out['gflops']:.1f} GFLOP/s")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
