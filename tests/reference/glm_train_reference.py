#!/usr/bin/python3
"""Independent PyTorch reference of a single-rank GLM training run, and its golden-file generator.

A float64 autograd implementation of the training semantics of /work/shared/GLM130B.md sections 2-4
and 8 (forward pass, blank-infilling loss, embedding gradient shrink, AdamW with warm-up + cosine
LR, global-norm gradient clipping), on the tiny model of ``glm_reference.py``.  The forward pass is
imported from ``glm_reference.py`` (its layers, mask, RoPE tables and safetensors I/O); this file
adds only the training parts.  Nothing is shared with the C++ runtime.

Everything is computed in float64; tensors are stored as float32, JSON numbers as the repr of the
float64 value.

Run with Debian's torch:  /usr/bin/python3 tests/reference/glm_train_reference.py [--out tests/golden]
"""

import argparse
import hashlib
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glm_reference as ref  # noqa: E402  (the forward-pass reference: read-only dependency)

# ----------------------------------------------------------------------------------------------
# Run configuration (written to train_config.yaml)
# ----------------------------------------------------------------------------------------------

TRAIN = {
    "micro_batch_size": 2,
    "global_batch_size": 4,
    "steps": 10,
    "precision": "fp32",
    "seed": 1234,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "embedding_grad_shrink": 0.1,
    "recompute": False,
    "metrics": "run/metrics.jsonl",
}

OPTIMIZER = {
    "lr": 0.003,
    "min_lr": 0.0003,
    "warmup_steps": 2,
    "decay": "cosine",
    "beta1": 0.9,
    "beta2": 0.95,
    "eps": 1.0e-8,
    "weight_decay": 0.1,
    "clip_grad": 4.3,
}

SAMPLES_FILE = "train_samples.jsonl"
MODEL_YAML = "tiny_exactrope.yaml"  # model + tokens sections are copied verbatim from it
WEIGHTS_FILE = "tiny_weights.safetensors"
NUM_SAMPLES = 10
SEQ_LEN = 32
SAMPLE_SEED = 4242
FD_SEED = 99
GENERATOR = "tests/reference/glm_train_reference.py"


def _yaml_flow(d):
    """A one-line YAML flow mapping; floats in a form every YAML 1.1/1.2 parser reads as float."""
    return "{" + ", ".join(f"{k}: {ref._yaml_scalar(v)}" for k, v in d.items()) + "}"


def config_yaml(model_yaml_text):
    text = model_yaml_text if model_yaml_text.endswith("\n") else model_yaml_text + "\n"
    text += f"train: {_yaml_flow(TRAIN)}\n"
    text += f"optimizer: {_yaml_flow(OPTIMIZER)}\n"
    text += f"data: {{samples: {SAMPLES_FILE}}}\n"
    return text


def parse_model_yaml(text):
    """Just enough YAML for tiny_exactrope.yaml: the `model:` block and the `tokens:` flow map."""
    model, tokens, section = {}, {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            key, _, rest = line.partition(":")
            section = key.strip()
            rest = rest.strip()
            if section == "tokens":
                for item in rest.strip("{}").split(","):
                    k, _, v = item.partition(":")
                    tokens[k.strip()] = int(v)
            continue
        if section == "model":
            k, _, v = line.strip().partition(":")
            v = v.strip()
            if v in ("true", "false"):
                val = v == "true"
            elif v == "null":
                val = None
            else:
                try:
                    val = int(v)
                except ValueError:
                    val = float(v)
            model[k.strip()] = val
    return model, tokens


# ----------------------------------------------------------------------------------------------
# Samples (GLM-like blank-infilling rows of length 32; one row per sample)
# ----------------------------------------------------------------------------------------------

def _rand_text(g, n):
    """n ordinary token ids in [1, 249): no pad (0) and no special ids (249..255)."""
    return torch.randint(1, 249, (n,), generator=g).tolist()


def gmask_row(g, tok, length, ctx_len):
    """[gMASK] mode, one segment: ctx + [gMASK, sop] + gen[:-1]; targets = next token.

    full = ctx + [gMASK, sop] + gen (length+1 tokens): tokens = full[:-1], targets = full[1:].
    sep = ctx_len + 1 (the prefix includes [gMASK]); loss on the generated part only, i.e. at
    positions ctx_len+1 .. length-1 (the sop and gen tokens, whose targets are gen tokens).
    """
    gen_len = length - ctx_len - 1
    full = _rand_text(g, ctx_len) + [tok["gMASK"], tok["sop"]] + _rand_text(g, gen_len)
    assert len(full) == length + 1
    loss = [0] * (ctx_len + 1) + [1] * (length - ctx_len - 1)
    return {"tokens": full[:-1], "targets": full[1:], "loss_mask": loss,
            "position_ids": list(range(length)), "sep": ctx_len + 1}


def mask_segment(g, tok, length, span_lens):
    """[MASK] mode, one packed segment of ``length`` tokens with len(span_lens) spans.

    Part A = text with each span replaced by one [MASK] (length a = length - Σ(len+1)); Part B = the
    spans in shuffled order, each input [sop] + span, target span + [eop], every Part-B token at
    its [MASK]'s position.  Part A targets are the next Part-A token (the last one: the first
    Part-B input, a sop); they carry no loss.  sep = a.
    """
    k = len(span_lens)
    a = length - sum(n + 1 for n in span_lens)
    assert a >= 2 * k, (length, span_lens)
    # [MASK] slots in Part A: distinct, not adjacent (spans "not touching")
    while True:
        slots = sorted(torch.randperm(a, generator=g)[:k].tolist())
        if all(slots[i + 1] - slots[i] > 1 for i in range(k - 1)):
            break
    part_a = _rand_text(g, a)
    for sl in slots:
        part_a[sl] = tok["MASK"]
    spans = [_rand_text(g, n) for n in span_lens]
    order = torch.randperm(k, generator=g).tolist()
    b_tokens, b_targets, b_pos = [], [], []
    for j in order:
        b_tokens += [tok["sop"]] + spans[j]
        b_targets += spans[j] + [tok["eop"]]
        b_pos += [slots[j]] * (span_lens[j] + 1)
    a_targets = part_a[1:] + [b_tokens[0]]
    return {"tokens": part_a + b_tokens, "targets": a_targets + b_targets,
            "loss_mask": [0] * a + [1] * len(b_tokens),
            "position_ids": list(range(a)) + b_pos, "sep": a}


def make_samples(tok, seed):
    """10 rows: 6 in [gMASK] mode (one segment of 32), 4 in [MASK] mode (2 packed segments)."""
    g = torch.Generator().manual_seed(seed)
    # (kind, spec): gmask -> context length; mask -> [(segment length, span lengths), ...]
    plan = [
        ("gmask", 9),
        ("mask", [(16, [2, 3]), (16, [4])]),
        ("gmask", 20),
        ("gmask", 4),
        ("mask", [(12, [3]), (20, [1, 2, 3])]),
        ("gmask", 14),
        ("mask", [(20, [5, 2]), (12, [2])]),
        ("gmask", 26),
        ("gmask", 1),
        ("mask", [(16, [1, 1]), (16, [6])]),
    ]
    assert len(plan) == NUM_SAMPLES
    samples = []
    for kind, spec in plan:
        if kind == "gmask":
            seg = gmask_row(g, tok, SEQ_LEN, spec)
            s = {k: seg[k] for k in ("tokens", "targets", "loss_mask", "position_ids")}
            s["sep"], s["segment_lengths"] = [seg["sep"]], [SEQ_LEN]
        else:
            s = {"tokens": [], "targets": [], "loss_mask": [], "position_ids": [], "sep": [],
                 "segment_lengths": []}
            for length, spans in spec:
                seg = mask_segment(g, tok, length, spans)
                for k in ("tokens", "targets", "loss_mask", "position_ids"):
                    s[k] += seg[k]
                s["sep"].append(seg["sep"])
                s["segment_lengths"].append(length)
        validate_sample(s)
        samples.append(s)
    return samples


def validate_sample(s):
    n = len(s["tokens"])
    assert n == SEQ_LEN
    assert all(len(s[k]) == n for k in ("targets", "loss_mask", "position_ids"))
    assert all(0 <= t < 256 for t in s["tokens"] + s["targets"])
    assert sum(s["segment_lengths"]) == n and len(s["sep"]) == len(s["segment_lengths"])
    assert all(0 <= sp <= ln for sp, ln in zip(s["sep"], s["segment_lengths"]))
    assert sum(s["loss_mask"]) >= 1 and set(s["loss_mask"]) <= {0, 1}
    assert all(0 <= p < 2048 for p in s["position_ids"])


def samples_jsonl(samples):
    keys = ("tokens", "targets", "loss_mask", "position_ids", "sep", "segment_lengths")
    return "".join(json.dumps({k: s[k] for k in keys}, separators=(", ", ": ")) + "\n"
                   for s in samples)


def step_sample_indices(step0, train=TRAIN, n=NUM_SAMPLES):
    """Sample indices of 0-based step ``step0``: (G·step0 + i) mod n, i < G, in order."""
    G = train["global_batch_size"]
    return [(G * step0 + i) % n for i in range(G)]


def micro_batches(indices, train=TRAIN):
    mb = train["micro_batch_size"]
    assert train["global_batch_size"] % mb == 0
    return [indices[i:i + mb] for i in range(0, len(indices), mb)]


# ----------------------------------------------------------------------------------------------
# Model pieces that training adds: embedding gradient shrink, loss
# ----------------------------------------------------------------------------------------------

class _GradShrink(torch.autograd.Function):
    """Identity in value, gradient × alpha: e ← α·e + (1-α)·stop_gradient(e) (GLM130B.md §8).

    Written as a custom function so the forward value is bit-for-bit unchanged."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.alpha, None


def grad_shrink(x, alpha):
    return x if alpha == 1.0 else _GradShrink.apply(x, alpha)


class Batch:
    """The tensors of one micro-batch (rows = samples), precomputed once."""

    def __init__(self, cfg, samples, dtype):
        self.tokens = torch.tensor([s["tokens"] for s in samples], dtype=torch.long)
        self.targets = torch.tensor([s["targets"] for s in samples], dtype=torch.long)
        self.loss_mask = torch.tensor([s["loss_mask"] for s in samples], dtype=dtype)
        pos = torch.tensor([s["position_ids"] for s in samples], dtype=torch.long)
        b, s = self.tokens.shape
        self.mask = torch.stack([ref.build_mask(s, x["sep"], x["segment_lengths"])
                                 for x in samples]).to(dtype)
        prec = "exact" if dtype == torch.float64 else "fp32"
        assert not cfg["rotary_fp16_tables"]
        cos_t, sin_t = ref.rope_tables(cfg, cfg["max_sequence_length"], prec)
        self.cos, self.sin = cos_t[pos].to(dtype), sin_t[pos].to(dtype)


def forward_logits(params, cfg, batch, alpha):
    """Logits [b, s, V] with the embedding gradient shrink on both uses of the tied embedding."""
    E = params["transformer.word_embeddings.weight"]
    x = grad_shrink(E[batch.tokens], alpha)  # input side
    for i in range(cfg["num_layers"]):
        x = ref.layer_forward(x, params, i, batch.mask, batch.cos, batch.sin, cfg)
    y = ref.layer_norm(x, params["transformer.final_layernorm.weight"],
                       params["transformer.final_layernorm.bias"], cfg["layernorm_epsilon"])
    return y @ grad_shrink(E, alpha).transpose(0, 1)  # output side (tied head)


def micro_batch_loss(params, cfg, batch, alpha):
    """Σ(CE·mask) / Σ(mask) over every token of every row of the micro-batch."""
    logits = forward_logits(params, cfg, batch, alpha)
    logp = torch.log_softmax(logits, dim=-1)
    ce = -logp.gather(-1, batch.targets[..., None])[..., 0]
    return (ce * batch.loss_mask).sum() / batch.loss_mask.sum()


def step_loss(params, cfg, batches, alpha):
    """Mean of the micro-batch losses (graph kept: for the finite-difference check)."""
    return sum(micro_batch_loss(params, cfg, b, alpha) for b in batches) / len(batches)


def forward_backward(params, cfg, batches, alpha):
    """Gradient accumulation: backward of (micro-batch loss / num_micro_batches) per micro-batch.
    Returns the step loss (float) and leaves the accumulated gradients in ``.grad``."""
    for p in params.values():
        p.grad = None
    total = 0.0
    n = len(batches)
    for b in batches:
        loss = micro_batch_loss(params, cfg, b, alpha)
        (loss / n).backward()
        total += float(loss)
    return total / n


# ----------------------------------------------------------------------------------------------
# Schedule, optimizer
# ----------------------------------------------------------------------------------------------

def lr_at(t, opt=OPTIMIZER, steps=TRAIN["steps"]):
    """LR of iteration t (1-based): linear warm-up to lr, then cosine to min_lr at t = steps."""
    lr, min_lr, warm = opt["lr"], opt["min_lr"], opt["warmup_steps"]
    if t <= warm:
        return lr * t / warm
    assert opt["decay"] == "cosine"
    progress = (t - warm) / (steps - warm)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decays(name, p):
    """Weight decay on the 2-D weight matrices (word embeddings included), not on biases / LNs."""
    return p.dim() == 2


def make_optimizer(params, opt=OPTIMIZER):
    dec = [p for n, p in params.items() if decays(n, p)]
    nodec = [p for n, p in params.items() if not decays(n, p)]
    return torch.optim.AdamW(
        [{"params": dec, "weight_decay": opt["weight_decay"]}, {"params": nodec, "weight_decay": 0.0}],
        lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"], foreach=False)


class ManualAdamW:
    """AdamW written out (the formula the C++ side implements); cross-checks torch's."""

    def __init__(self, params, opt=OPTIMIZER):
        self.params, self.opt, self.t = params, opt, 0
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}

    @torch.no_grad()
    def step(self, lr):
        o = self.opt
        self.t += 1
        b1, b2 = o["beta1"], o["beta2"]
        for n, p in self.params.items():
            g = p.grad
            wd = o["weight_decay"] if decays(n, p) else 0.0
            p.mul_(1.0 - lr * wd)
            self.m[n] = b1 * self.m[n] + (1.0 - b1) * g
            self.v[n] = b2 * self.v[n] + (1.0 - b2) * g * g
            mhat_scale = lr / (1.0 - b1 ** self.t)
            denom = self.v[n].sqrt() / math.sqrt(1.0 - b2 ** self.t) + o["eps"]
            p.sub_(mhat_scale * self.m[n] / denom)


def global_norm(params):
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params.values()))


# ----------------------------------------------------------------------------------------------
# The training run
# ----------------------------------------------------------------------------------------------

def load_params(weights, dtype):
    return {n: w.to(dtype).clone().requires_grad_(True) for n, w in weights.items()}


def train(weights, cfg, samples, dtype=torch.float64, optimizer="torch", log=None):
    """Run TRAIN["steps"] steps.  Returns (trajectory, step-1 grads, params after step 1, final)."""
    params = load_params(weights, dtype)
    alpha = TRAIN["embedding_grad_shrink"]
    opt = make_optimizer(params) if optimizer == "torch" else ManualAdamW(params)
    batches_of = {}
    traj, grads1, params1 = [], None, None
    for t in range(1, TRAIN["steps"] + 1):
        idx = step_sample_indices(t - 1)
        key = tuple(idx)
        if key not in batches_of:
            batches_of[key] = [Batch(cfg, [samples[i] for i in mb], dtype) for mb in micro_batches(idx)]
        loss = forward_backward(params, cfg, batches_of[key], alpha)
        if t == 1:
            grads1 = {n: p.grad.detach().clone() for n, p in params.items()}
        norm_t = torch.nn.utils.clip_grad_norm_(list(params.values()), OPTIMIZER["clip_grad"])
        norm = float(norm_t)
        coef = OPTIMIZER["clip_grad"] / (norm + 1e-6)
        lr = lr_at(t)
        if optimizer == "torch":
            for grp in opt.param_groups:
                grp["lr"] = lr
            opt.step()
        else:
            opt.step(lr)
        traj.append({"iteration": t, "loss": loss, "grad_norm": norm, "lr": lr, "clipped": coef < 1.0})
        if t == 1:
            params1 = {n: p.detach().clone() for n, p in params.items()}
        if log:
            log(f"  iter {t:2d}  samples {idx}  loss {loss:.10f}  grad_norm {norm:.6f}  "
                f"lr {lr:.6g}  {'clipped' if coef < 1.0 else ''}")
    final = {n: p.detach().clone() for n, p in params.items()}
    return traj, grads1, params1, final


def trajectory_json(traj):
    lines = [json.dumps(s, separators=(", ", ": ")) for s in traj]
    return '{"steps": [\n  ' + ",\n  ".join(lines) + "\n]}\n"


# ----------------------------------------------------------------------------------------------
# Self-checks
# ----------------------------------------------------------------------------------------------

def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def check_pieces(weights, cfg, samples, log):
    """The training pieces against independent formulations."""
    alpha = TRAIN["embedding_grad_shrink"]
    params = load_params(weights, torch.float64)
    for idx in micro_batches(list(range(NUM_SAMPLES))):
        rows = [samples[i] for i in idx]
        batch = Batch(cfg, rows, torch.float64)
        # forward == glm_reference.glm_forward (the EGS changes no value)
        lg = forward_logits(params, cfg, batch, alpha)
        want = ref.glm_forward(weights, cfg, [r["tokens"] for r in rows],
                               [r["position_ids"] for r in rows], [r["sep"] for r in rows],
                               [r["segment_lengths"] for r in rows])
        assert torch.equal(lg.detach(), want), rel(lg.detach(), want)
        # loss == F.cross_entropy, masked mean over the micro-batch's tokens
        ce = torch.nn.functional.cross_entropy(want.reshape(-1, want.shape[-1]),
                                               batch.targets.reshape(-1), reduction="none")
        m = batch.loss_mask.reshape(-1)
        want_loss = float((ce * m).sum() / m.sum())
        got = float(micro_batch_loss(params, cfg, batch, alpha))
        assert abs(got - want_loss) <= 1e-13 * abs(want_loss), (got, want_loss)
    # global norm == clip_grad_norm_'s
    batches = [Batch(cfg, [samples[i] for i in mb], torch.float64)
               for mb in micro_batches(step_sample_indices(0))]
    forward_backward(params, cfg, batches, alpha)
    mine = global_norm(params)
    theirs = float(torch.nn.utils.clip_grad_norm_(list(params.values()), 1e9))  # 1e9: no clipping
    assert abs(mine - theirs) <= 1e-13 * mine, (mine, theirs)
    # LR schedule end points
    o, T = OPTIMIZER, TRAIN["steps"]
    assert lr_at(1) == o["lr"] / o["warmup_steps"] and lr_at(o["warmup_steps"]) == o["lr"]
    assert abs(lr_at(T) - o["min_lr"]) <= 1e-15 and lr_at(o["warmup_steps"] + 1) < o["lr"]
    log("check: forward == glm_reference.glm_forward (bitwise); loss == F.cross_entropy masked mean; "
        "global norm == clip_grad_norm_'s; LR end points")


def check_egs(weights, cfg, samples, log):
    """α = 0.1 vs α = 1: only the embedding gradient changes, by exactly the factor α."""
    alpha = TRAIN["embedding_grad_shrink"]
    batches = [Batch(cfg, [samples[i] for i in mb], torch.float64)
               for mb in micro_batches(step_sample_indices(0))]
    res = {}
    for a in (1.0, alpha):
        params = load_params(weights, torch.float64)
        loss = forward_backward(params, cfg, batches, a)
        res[a] = (loss, {n: p.grad.clone() for n, p in params.items()})
    assert res[1.0][0] == res[alpha][0], "EGS must not change the loss"
    E = "transformer.word_embeddings.weight"
    for n, g in res[alpha][1].items():
        if n != E:
            assert torch.equal(g, res[1.0][1][n]), n
    d = rel(res[alpha][1][E], alpha * res[1.0][1][E])
    assert d <= 1e-14, d
    assert rel(res[alpha][1][E], res[1.0][1][E]) > 0.5
    log(f"check: EGS alpha={alpha}: loss and all non-embedding grads identical to alpha=1; "
        f"embedding grad = alpha x (alpha=1 grad) (rel {d:.2g})")
    return res[1.0][1]


def check_finite_differences(weights, cfg, samples, true_grads, log, n_entries=16, eps=1e-6):
    """Central differences of the step-1 loss in float64 vs autograd.

    The loss value does not depend on the EGS α, so the finite differences give the α = 1 (true)
    gradient; the α-shrunk embedding gradient is then covered by check_egs."""
    g = torch.Generator().manual_seed(FD_SEED)
    batches = [Batch(cfg, [samples[i] for i in mb], torch.float64)
               for mb in micro_batches(step_sample_indices(0))]
    params = {n: w.double().clone() for n, w in weights.items()}
    names = list(params)
    picks = [(n, None) for n in names]  # one random entry in every tensor ...
    picks += [(names[int(torch.randint(len(names), (1,), generator=g))], None)
              for _ in range(max(0, n_entries - len(names)))]  # ... plus a few more
    # ... and the largest-gradient entry of the embedding (a token that occurs in the batch)
    E = "transformer.word_embeddings.weight"
    picks.append((E, int(true_grads[E].abs().argmax())))
    worst = worst_abs = 0.0
    with torch.no_grad():
        for n, flat in picks:
            p = params[n].view(-1)
            if flat is None:  # a random entry among those with a non-negligible gradient
                tg = true_grads[n].view(-1).abs()
                cand = (tg >= 0.05 * tg.max()).nonzero()[:, 0]
                flat = int(cand[int(torch.randint(len(cand), (1,), generator=g))])
            orig = float(p[flat])
            p[flat] = orig + eps
            lp = float(step_loss(params, cfg, batches, 1.0))
            p[flat] = orig - eps
            lm = float(step_loss(params, cfg, batches, 1.0))
            p[flat] = orig
            fd = (lp - lm) / (2 * eps)
            ag = float(true_grads[n].view(-1)[flat])
            err = abs(fd - ag) / abs(ag)
            worst = max(worst, err)
            worst_abs = max(worst_abs, abs(fd - ag))
            assert err <= 1e-6, (n, flat, fd, ag, err)
    log(f"check: finite differences (central, eps {eps:g}, {len(picks)} entries, every tensor) == "
        f"autograd: worst rel err {worst:.2g}, worst abs err {worst_abs:.2g}")


def check_optimizer(weights, cfg, samples, traj, final, log):
    """torch.optim.AdamW == the AdamW formula written out, over the whole run."""
    traj2, _, _, final2 = train(weights, cfg, samples, optimizer="manual")
    worst = max(rel(final2[n], final[n]) for n in final)
    dl = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(traj2, traj))
    assert worst <= 1e-10 and dl <= 1e-12, (worst, dl)
    log(f"check: torch.optim.AdamW == written-out AdamW (final params rel {worst:.2g}, "
        f"losses rel {dl:.2g})")


def info_fp32(weights, cfg, samples, traj, grads1, params1, final, log):
    """Information only: the same run in float32 (what an fp32 C++ trainer is up against)."""
    t32, g32, p32, f32 = train(weights, cfg, samples, dtype=torch.float32)
    dl = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(t32, traj))
    dn = max(abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"] for a, b in zip(t32, traj))
    dg = max(rel(g32[n].double(), grads1[n]) for n in grads1)
    dp1, n1 = max((rel(p32[n].double(), params1[n]), n) for n in params1)
    dpf, nf = max((rel(f32[n].double(), final[n]), n) for n in final)
    da1 = max(float((p32[n].double() - params1[n]).abs().max()) for n in params1)
    daf = max(float((f32[n].double() - final[n]).abs().max()) for n in final)
    same_clip = [a["clipped"] for a in t32] == [b["clipped"] for b in traj]
    log(f"info: float32 run vs float64: losses rel {dl:.2g}, grad norms rel {dn:.2g}, step-1 grads "
        f"(max over tensors of max|d|/max|ref|) {dg:.2g}; params after step 1 rel {dp1:.2g} "
        f"({n1}; abs {da1:.2g}), final params rel {dpf:.2g} ({nf}; abs {daf:.2g}); "
        f"same clipped steps: {same_clip}")
    # Adam divides by sqrt(v) + eps: entries whose gradient is near eps get an update that depends
    # on the gradient's relative error.  Those entries dominate any fp32-vs-reference param diff.
    tiny = {n: int((g.abs() < 1e-6).sum()) for n, g in grads1.items()}
    log("info: step-1 gradient entries with |g| < 1e-6 (Adam-eps-sensitive updates): "
        + ", ".join(f"{n.replace('transformer.', '')} {k}" for n, k in tiny.items() if k))


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def generate(golden_dir, log, checks=True):
    """Everything the run writes, as {file name: bytes}."""
    with open(os.path.join(golden_dir, MODEL_YAML)) as f:
        model_yaml = f.read()
    cfg, tok = parse_model_yaml(model_yaml)
    assert cfg["rotary_fp16_tables"] is False
    weights, _ = ref.read_safetensors(os.path.join(golden_dir, WEIGHTS_FILE))
    assert list(weights) == list(ref.weight_shapes(cfg))
    samples = make_samples(tok, SAMPLE_SEED)

    traj, grads1, params1, final = train(weights, cfg, samples, log=log)
    clipped = [s["clipped"] for s in traj]
    assert any(clipped) and not all(clipped), "clip_grad must be active on some steps only"
    margin = min(abs(s["grad_norm"] - OPTIMIZER["clip_grad"]) for s in traj) / OPTIMIZER["clip_grad"]
    assert margin >= 0.01, f"a grad norm is within {margin:.2%} of clip_grad: fragile golden"
    log(f"clip_grad {OPTIMIZER['clip_grad']}: clipped at iterations "
        f"{[s['iteration'] for s in traj if s['clipped']]}; nearest grad norm {margin:.2%} away")
    losses = [s["loss"] for s in traj]
    assert max(losses) - min(losses) > 0.05 * losses[0], "the loss should visibly move"

    if checks:
        check_pieces(weights, cfg, samples, log)
        true_grads = check_egs(weights, cfg, samples, log)
        check_finite_differences(weights, cfg, samples, true_grads, log)
        check_optimizer(weights, cfg, samples, traj, final, log)
        info_fp32(weights, cfg, samples, traj, grads1, params1, final, log)

    meta = {"generator": GENERATOR, "config": "train_config.yaml", "weights": WEIGHTS_FILE,
            "samples": SAMPLES_FILE}
    f32 = lambda d: {n: t.float() for n, t in d.items()}  # noqa: E731
    files = {
        "train_config.yaml": config_yaml(model_yaml).encode(),
        SAMPLES_FILE: samples_jsonl(samples).encode(),
        "train_trajectory.json": trajectory_json(traj).encode(),
    }
    for name, tensors, what in (
            ("train_step1_grads.safetensors", grads1,
             "gradient of the iteration-1 loss (EGS applied, before clipping)"),
            ("train_step1_params.safetensors", params1, "parameters after iteration 1's update"),
            ("train_final_params.safetensors", final,
             f"parameters after {TRAIN['steps']} iterations")):
        tmp = os.path.join(golden_dir, f".{name}.tmp.{os.getpid()}")
        try:
            ref.write_safetensors(tmp, f32(tensors), dict(meta, content=what))
            with open(tmp, "rb") as f:
                files[name] = f.read()
            back, _ = ref.read_safetensors(tmp)
            assert list(back) == list(tensors) and all(torch.equal(back[n], tensors[n].float())
                                                       for n in tensors)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return files


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    golden = os.path.normpath(os.path.join(here, "..", "golden"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=golden, help="output directory (default: ../golden)")
    ap.add_argument("--golden", default=golden,
                    help=f"where {MODEL_YAML} and {WEIGHTS_FILE} are read (default: ../golden)")
    ap.add_argument("--no-checks", action="store_true",
                    help="skip the self-checks (and the determinism rerun)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # fixed reduction order: byte-identical output
    log = print

    files = generate(args.golden, log, checks=not args.no_checks)
    if not args.no_checks:
        again = generate(args.golden, lambda *a: None, checks=False)
        assert again == files, [n for n in files if again.get(n) != files[n]]
        log("check: a second run produces byte-identical files")

    os.makedirs(args.out, exist_ok=True)
    log("")
    for name, data in files.items():
        path = os.path.join(args.out, name)
        with open(path, "wb") as f:
            f.write(data)
        log(f"{len(data):9d}  {hashlib.sha256(data).hexdigest()[:16]}  {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
