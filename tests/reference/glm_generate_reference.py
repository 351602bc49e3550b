#!/usr/bin/python3
"""Independent PyTorch reference of GLM-130B generation, and the generation golden-file generator.

Implements inference/SEMANTICS.md exactly (the released ``generate.py`` / ``generation/strategies.py``
/ SAT ``top_k_logits`` semantics, with glmrt's documented deviations): prompt preparation (mask
choice, gMASK / eos appending), blanks one at a time, positions and ``sep`` per blank, stop tokens,
the length limit ``L = min(out_seq_length, max_sequence_length)``, the end-token ban
(``min_gen_length``), greedy, sampling (temperature / top_k / top_p and the Philox4x32-10 draw) and
beam search (length penalty, no_repeat_ngram_size, end beams, done rule, finalize).

Every step's logits come from a FULL RECOMPUTATION of the whole sequence in float64 with
``glm_reference.glm_forward`` (no KV cache: the C++ side uses one, so this is an independent check).
The logits are rounded to float32 (the C++ side has fp32 logits) and the strategy math is then done
in float64.  It shares no code with the C++ runtime (the Philox generator is re-implemented with
Python integers and checked against known answers of kernels/philox.h).

Writes tests/golden/generate/: ``tiny.yaml``, ``weights.safetensors``, ``cases.json``.

Run with Debian's torch:  /usr/bin/python3 tests/reference/glm_generate_reference.py [--out DIR]
"""

import argparse
import json
import math
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # single-threaded BLAS: fixed reduction order
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glm_reference as ref  # noqa: E402  (weights I/O, config YAML, glm_forward)

# ----------------------------------------------------------------------------------------------
# Philox4x32-10 (a Python-integer port of kernels/philox.h: Philox::generate and to_unit)
# ----------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def philox(key, counter_hi, counter_lo):
    """Four 32-bit words of Philox4x32-10 for (key, counter): Philox::generate."""
    k0, k1 = key & _M32, (key >> 32) & _M32
    c = [counter_lo & _M32, (counter_lo >> 32) & _M32, counter_hi & _M32, (counter_hi >> 32) & _M32]
    for r in range(10):
        p0 = _PHILOX_M0 * c[0]
        p1 = _PHILOX_M1 * c[2]
        hi0, lo0 = p0 >> 32, p0 & _M32
        hi1, lo1 = p1 >> 32, p1 & _M32
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        if r < 9:
            k0 = (k0 + _PHILOX_W0) & _M32
            k1 = (k1 + _PHILOX_W1) & _M32
    return c


def to_unit(x):
    """(x + 1) / 2^32 in (0, 1]: Philox::to_unit (exact in float64)."""
    return (float(x) + 1.0) / 4294967296.0


# Known answers printed by a C++ program that includes kernels/philox.h:
#   uint32_t w[4]; glmrt::Philox::generate(key, hi, lo, w);
#   printf("%08X ...", w[0..3]); printf("%.17g", glmrt::Philox::to_unit(w[0]));
# ((key, counter_hi, counter_lo), (w0, w1, w2, w3), to_unit(w0)).  The first is also the
# Random123 known-answer vector of philox4x32-10 for a zero key and counter.
PHILOX_KAT = [
    ((0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8), 0.39904647087678313),
    ((1234, 0, 0), (0x2090B348, 0xDA7CF0AB, 0x4401906F, 0xCBCA470E), 0.12720795185305178),
    ((1234, 0, 1), (0x9EEEDE35, 0x1CBE137C, 0xFA277093, 0x147EDD50), 0.62083233660086989),
    ((1234, 1, 7), (0x7BD5AE44, 0xA622B166, 0x0452A65E, 0x49E8F0A0), 0.48372925934381783),
    ((4321, 2, 31), (0xF9A84535, 0xED68284F, 0x74826784, 0xAB7EA3EA), 0.97522385185584426),
    ((18446744073709551615, 81985529216486895, 18364758544493064720),
     (0x7FE013AE, 0x2BF23506, 0x213FB496, 0x54646589), 0.49951289198361337),
    ((99, 0, 123456), (0x99C1E6FD, 0x20CC709B, 0x3347D60D, 0xCBA5057D), 0.60061496449634433),
]


def check_philox(log):
    for (key, hi, lo), words, unit in PHILOX_KAT:
        got = philox(key, hi, lo)
        assert tuple(got) == words, ((key, hi, lo), [hex(x) for x in got])
        assert to_unit(got[0]) == unit, ((key, hi, lo), to_unit(got[0]), unit)
    log(f"check: Philox4x32-10 port == kernels/philox.h on {len(PHILOX_KAT)} known answers")


# ----------------------------------------------------------------------------------------------
# Model: tiny GLM (tests/golden/tiny_fp16rope.yaml shapes) with peaked logits
# ----------------------------------------------------------------------------------------------

GEN_MODEL = dict(ref.TINY_MODEL, ffn_hidden_size=48, max_sequence_length=128)
TOKENS = dict(ref.TINY_TOKENS)  # MASK 250, gMASK 251, sMASK 252, eod 253, sop 254, eop 255, eos 249

WEIGHT_SEED = 4242      # make_weights seed (glm_reference.make_weights), then:
EMBED_SCALE = 2.0       # word embeddings × 2: tied logits std ≈ 4 (peaked: few near-ties)
END_ROW_SCALE = 2.0     # eop/eos rows × 2 more: a stop is the argmax now and then (spans of a few
                        # to a few tens of tokens; as input tokens the scale is lost in LayerNorm)
MIX_SCALE = 3.0         # attention.dense and dense_4h_to_h weights × 3: the context moves the
                        # logits (else the next token is nearly a function of the last one)
SIGN_SEED = 77          # random signs on final_layernorm.weight: with tied embeddings the logit
                        # of the input token itself would dominate (greedy repeats the last token)
NEG = -65504.0          # the fill value of every ban / filter (fp16 lowest)

# A deliberate misreading of the semantics, set only by the self-check that shows the goldens
# detect it (None: the semantics as written).
VARIANT = None


def make_generation_weights():
    """make_weights(WEIGHT_SEED) reshaped for peaked, context-dependent logits (see above)."""
    w = ref.make_weights(GEN_MODEL, WEIGHT_SEED)
    E = w["transformer.word_embeddings.weight"].double() * EMBED_SCALE
    for t in (TOKENS["eop"], TOKENS["eos"]):
        E[t] *= END_ROW_SCALE
    w["transformer.word_embeddings.weight"] = E.float()
    g = torch.Generator().manual_seed(SIGN_SEED)
    h = GEN_MODEL["hidden_size"]
    signs = torch.randint(0, 2, (h,), generator=g).double() * 2 - 1
    key = "transformer.final_layernorm.weight"
    w[key] = (w[key].double() * signs).float()
    for k in list(w):
        if k.endswith("attention.dense.weight") or k.endswith("mlp.dense_4h_to_h.weight"):
            w[k] = (w[k].double() * MIX_SCALE).float()
    return w


class Model:
    """Full-recomputation logits of the next token (no KV cache)."""

    def __init__(self, weights, cfg):
        self.w = {k: v.double() for k, v in weights.items()}
        self.cfg = cfg
        self.forwards = 0

    def next_logits(self, fulls, n_seq, mask_position, gmask):
        """fulls: equal-length sequences ``seq + [sop] + generated``; returns float64 ``[b, V]``
        holding the fp32-rounded logits of each sequence's last token."""
        s = len(fulls[0])
        assert all(len(f) == s for f in fulls) and s > n_seq
        n_gen = s - n_seq  # sop + generated tokens
        if gmask or VARIANT == "mask_positions_count":
            pos = list(range(s))
        else:
            pos = list(range(n_seq)) + [mask_position] * n_gen
        b = len(fulls)
        lg = ref.glm_forward(self.w, self.cfg, fulls, [pos] * b, [[n_seq]] * b)
        self.forwards += 1
        return lg[:, -1, :].float().double()


# ----------------------------------------------------------------------------------------------
# Generation parameters (the CLI flags of `glmrt generate`, with the released defaults)
# ----------------------------------------------------------------------------------------------

DEFAULTS = {
    "strategy": "sample", "out_seq_length": 256, "min_gen_length": 0, "temperature": 1.0,
    "top_k": 0, "top_p": 0.7, "seed": 1234, "num_beams": 4, "length_penalty": 1.0,
    "no_repeat_ngram_size": 3, "deterministic": False,
}
FLAG_ORDER = ["strategy", "out_seq_length", "min_gen_length", "temperature", "top_k", "top_p",
              "seed", "num_beams", "length_penalty", "no_repeat_ngram_size", "deterministic"]


def args_string(flags):
    """The `glmrt generate` flag string of the given (non-default or relevant) parameters."""
    parts = []
    for k in FLAG_ORDER:
        if k not in flags:
            continue
        name = "--" + k.replace("_", "-")
        v = flags[k]
        if k == "deterministic":
            if v:
                parts.append(name)
        else:
            parts.append(f"{name} {v!r}" if isinstance(v, float) else f"{name} {v}")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# Strategies (SEMANTICS.md); each step records its decision margin
# ----------------------------------------------------------------------------------------------

def end_token_ban(logits, n_generated, p, tok):
    """While fewer than min_gen_length tokens are generated: eop and eos get -65504."""
    if n_generated < p["min_gen_length"]:
        logits = logits.clone()
        logits[..., tok["eop"]] = NEG
        logits[..., tok["eos"]] = NEG
    return logits


def greedy_pick(logits):
    """argmax (lowest id among equal maxima); margin = top-1 minus top-2 logit."""
    vals = logits.tolist()
    best = max(vals)
    i = vals.index(best)
    second = max(v for j, v in enumerate(vals) if j != i)
    return i, best - second


def sample_pick(logits, p, blank, t, tok):
    """SEMANTICS.md 'Sampling': filter, softmax, and the Philox draw for (seed, blank, t).

    margin = the smallest of: the draw's distance to the neighbouring cumulative sums
    (u·Σprob vs cum[i-1] and cum[i]); the top_k boundary gap (k-th vs (k+1)-th z); the top_p
    boundary distance (|c - p| of the cumulative sums on both sides of the cut).
    """
    V = logits.shape[-1]
    margin = math.inf
    z = (logits / p["temperature"]).tolist()
    if t < p["min_gen_length"]:
        z[tok["eop"]] = NEG
        z[tok["eos"]] = NEG
    k = p["top_k"]
    if 0 < k < V:
        desc = sorted(z, reverse=True)
        kth = desc[k - 1]
        margin = min(margin, kth - desc[k])
        z = [NEG if v < kth else v for v in z]
    top_p = p["top_p"]
    if 0.0 < top_p < 1.0:
        order = sorted(range(V), key=lambda j: (-z[j], j))
        zs = torch.tensor([z[j] for j in order], dtype=torch.float64)
        c = torch.cumsum(torch.softmax(zs, dim=-1), dim=-1).tolist()
        removed = [False] + [c[i - 1] > top_p for i in range(1, V)]
        if VARIANT == "top_p_no_shift":
            removed = [c[i] > top_p for i in range(V)]
            removed[0] = False
        cut = next((i for i in range(V) if c[i] > top_p), None)  # the first id over p (kept)
        if cut is not None:
            margin = min(margin, c[cut] - top_p)
            if cut > 0:
                margin = min(margin, top_p - c[cut - 1])
        for i in range(V):
            if removed[i]:
                z[order[i]] = NEG
    zt = torch.tensor(z, dtype=torch.float64)
    e = torch.exp(zt - zt.max())
    prob = (e / e.sum()).tolist()
    u = to_unit(philox(p["seed"], *((t, blank) if VARIANT == "philox_swap" else (blank, t)))[0])
    total = 0.0
    for v in prob:
        total += v
    target = u * total
    cum = 0.0
    chosen = None
    for i, v in enumerate(prob):
        before = cum
        cum += v
        if cum >= target:
            chosen = i
            margin = min(margin, cum - target, target - before)
            break
    if chosen is None:  # rounding left none: the largest id with prob > 0
        chosen = max(i for i, v in enumerate(prob) if v > 0)
        margin = 0.0
    return chosen, margin


def fill_blank_single(model, ctx, n_seq, mask_position, gmask, L, p, blank, tok):
    """Greedy / sampling for one blank. Returns (span, finish_reason, margin, info); info counts
    the draws that did not pick the argmax (sampling)."""
    span, margin, info = [], math.inf, {"steps": 0, "non_argmax": 0}
    while len(ctx) + len(span) < L:
        logits = model.next_logits([ctx + span], n_seq, mask_position, gmask)[0]
        info["steps"] += 1
        if p["strategy"] == "greedy":
            logits = end_token_ban(logits, len(span), p, tok)
            t, m = greedy_pick(logits)
        else:
            t, m = sample_pick(logits, p, blank, len(span), tok)
            info["non_argmax"] += t != greedy_pick(end_token_ban(logits, len(span), p, tok))[0]
        margin = min(margin, m)
        if t in (tok["eop"], tok["eos"]):
            return span, "stop", margin, info
        span.append(t)
    return span, "length", margin, info


class EndBeams:
    """The kept end beams: sorted by penalized score, at most B; records boundary margins."""

    def __init__(self, B, lp, n_ctx):
        self.B, self.lp, self.n_ctx = B, lp, n_ctx
        self.items = []  # (penalized score, full)
        self.margin = math.inf

    def add(self, score, full):
        n = len(full) - self.n_ctx if VARIANT == "lp_generated_only" else len(full)
        pen = score / ((5.0 + n) / 6.0) ** self.lp
        i = len(self.items)
        while i > 0 and not pen < self.items[i - 1][0]:  # before the first one <= it
            i -= 1
        self.items.insert(i, (pen, full))
        if len(self.items) > self.B:  # the B-th kept vs the dropped one
            self.margin = min(self.margin, self.items[self.B - 1][0] - self.items[self.B][0])
            self.items = self.items[:self.B]


def fill_blank_beam(model, ctx, n_seq, mask_position, gmask, L, p, blank, tok):
    """Beam search for one blank. Returns (span, finish_reason, margin, info)."""
    E = [tok["eop"], tok["eos"]]
    B, lp, N = p["num_beams"], p["length_penalty"], p["no_repeat_ngram_size"]
    K = (max(1, len(E)) + 1) * B
    beams = [(list(ctx), 0.0)]
    bans = [{}]
    ends = EndBeams(B, lp, len(ctx))
    margin = math.inf
    done = False
    step = 0
    n_bans = 0  # n-gram bans that hit a logit (information)
    while len(ctx) + step < L:
        seq_len = len(beams[0][0])
        logits = model.next_logits([f for f, _ in beams], n_seq, mask_position, gmask)
        V = logits.shape[-1]
        logits = end_token_ban(logits, step, p, tok)
        if N > 0 and seq_len > N:
            for b, (full, _) in enumerate(beams):
                prefix = tuple(full[-(N - 1):]) if N > 1 else ()
                for t in bans[b].get(prefix, ()):
                    n_bans += float(logits[b, t]) != NEG
                    logits[b, t] = NEG
        scores = torch.tensor([s for _, s in beams], dtype=torch.float64)
        cand = (torch.log_softmax(logits, dim=-1) + scores[:, None]).reshape(-1).tolist()
        if p["deterministic"]:
            order = sorted(range(len(cand)), key=lambda i: (-cand[i], i))
            if len(order) > K:
                margin = min(margin, cand[order[K - 1]] - cand[order[K]])
            picked = order[:K]
        else:  # K draws without replacement (not used by the goldens)
            probs = torch.softmax(torch.tensor(cand, dtype=torch.float64), dim=-1).tolist()
            picked = []
            for r in range(K):
                u = to_unit(philox(p["seed"], blank, step * K + r)[0])
                total = sum(probs)
                target, cum, idx = u * total, 0.0, None
                for i, v in enumerate(probs):
                    cum += v
                    if cum >= target and v > 0:
                        idx = i
                        break
                if idx is None:
                    idx = max(i for i, v in enumerate(probs) if v > 0)
                picked.append(idx)
                probs[idx] = 0.0
        picked = sorted(picked, key=lambda i: -cand[i])  # stable
        new_beams, new_bans = [], []
        for idx in picked:
            parent, t = divmod(idx, V)
            full = beams[parent][0] + [t]
            if t in E and not done:
                ends.add(cand[idx], full)
            elif len(new_beams) < B:
                new_beams.append((full, cand[idx]))
                if N > 0:
                    nb = {k: tuple(v) for k, v in bans[parent].items()}
                    pf = beams[parent][0]
                    prefix = tuple(pf[-(N - 1):]) if N > 1 else ()
                    nb[prefix] = nb.get(prefix, ()) + (t,)
                    new_bans.append(nb)
                else:
                    new_bans.append({})
            else:  # stop scanning: the B-th continuing vs the next non-end candidate
                margin = min(margin, new_beams[-1][1] - cand[idx])
                break
        beams, bans = new_beams, new_bans
        step += 1
        if len(ends.items) == B:
            best_cont = max(s for _, s in beams) / ((5.0 + seq_len + 1) / 6.0) ** lp
            margin = min(margin, abs(ends.items[-1][0] - best_cont))
            if ends.items[-1][0] >= best_cont:
                done = True
                break
    if not done:  # finalize: every continuing beam becomes an end beam with its score
        for full, s in beams:
            ends.add(s, full)
    margin = min(margin, ends.margin)
    if len(ends.items) > 1:
        margin = min(margin, ends.items[0][0] - ends.items[1][0])
    best = ends.items[0][1]
    span = best[len(ctx):]
    finish = "length"
    if span and span[-1] in E:
        span = span[:-1]
        finish = "stop"
    return span, finish, margin, {"steps": step, "done": done, "ngram_bans": n_bans,
                                  "end_beams": len(ends.items)}


def prepare_prompt(prompt, tok):
    """Steps 1-2: (seq, generation mask id, eos appended?)."""
    seq = list(prompt)
    masks = (tok["MASK"], tok["sMASK"], tok["gMASK"])
    if tok["MASK"] in seq:
        gen_mask = tok["MASK"]
    elif tok["sMASK"] in seq:
        gen_mask = tok["sMASK"]
    elif tok["gMASK"] in seq:
        gen_mask = tok["gMASK"]
    else:
        gen_mask = tok["gMASK"]
        seq.append(tok["gMASK"])
    eos_appended = seq[-1] not in masks and VARIANT != "no_eos"
    if eos_appended:
        seq.append(tok["eos"])
    return seq, gen_mask, eos_appended


def generate(model, prompt, flags, tok=TOKENS):
    """The whole query: returns a dict with output_ids, spans, finish_reason, margin."""
    p = dict(DEFAULTS, **flags)
    cfg = model.cfg
    seq, gen_mask, eos_appended = prepare_prompt(prompt, tok)
    gmask = gen_mask == tok["gMASK"]
    L = min(p["out_seq_length"], cfg["max_sequence_length"])
    spans, infos, margin, finish, blank = [], [], math.inf, "stop", 0
    while gen_mask in seq:
        mask_position = seq.index(gen_mask)
        ctx = seq + [tok["sop"]]
        if len(ctx) > cfg["max_sequence_length"]:
            raise ValueError("the prompt is too long")
        n_seq = len(seq)
        fill = fill_blank_beam if p["strategy"] == "beam" else fill_blank_single
        span, finish, m, info = fill(model, ctx, n_seq, mask_position, gmask, L, p, blank, tok)
        info["context"] = len(ctx)
        info["finish"] = finish
        margin = min(margin, m)
        spans.append(span)
        infos.append(info)
        seq = seq[:mask_position] + span + seq[mask_position + 1:]
        blank += 1
    if eos_appended:
        assert seq[-1] == tok["eos"]
        seq = seq[:-1]
    return {"output_ids": seq, "spans": spans, "finish_reason": finish, "margin": margin,
            "eos_appended": eos_appended, "gen_mask": gen_mask, "L": L, "blanks": infos}


# ----------------------------------------------------------------------------------------------
# Golden cases
# ----------------------------------------------------------------------------------------------

MIN_MARGIN = 1e-3       # re-draw a case whose smallest decision margin is below this (the C++
                        # side's fp32 logits are ≈ 1e-6 relative away; 1e-4 is the hard floor)
MIN_MARGIN_BEAM = 5e-3  # beam scores sum log-probabilities over the steps, so fp32 differences
                        # add up: a wider margin
CASE_SEED = 2025
MAX_ATTEMPTS = 400

GREEDY = {"strategy": "greedy"}
SAMPLE = {"strategy": "sample", "temperature": 0.8, "top_k": 0, "top_p": 0.9, "seed": 2024}
SAMPLE_TOPK = {"strategy": "sample", "temperature": 1.0, "top_k": 5, "top_p": 0.0, "seed": 77}
BEAM = {"strategy": "beam", "num_beams": 4, "length_penalty": 1.0, "no_repeat_ngram_size": 3,
        "deterministic": True}


class Rng:
    """Integer draws from a seeded torch.Generator (platform-independent)."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def randint(self, lo, hi):  # inclusive
        return int(torch.randint(lo, hi + 1, (1,), generator=self.g))

    def sample(self, lo, hi, k):  # k distinct ints in [lo, hi], sorted
        perm = torch.randperm(hi - lo + 1, generator=self.g)[:k]
        return sorted(int(x) + lo for x in perm)


def make_prompt(rng, n, inner=(), end=None):
    """n ids: plain ids 1..248, the mask ids of `inner` at distinct random positions 1..n-2 (in
    the given order), and `end` (a mask id) as the last id when given."""
    ids = [rng.randint(1, 248) for _ in range(n)]
    if end is not None:
        ids[-1] = end
    for pos, m in zip(rng.sample(1, n - 2, len(inner)), inner):
        ids[pos] = m
    return ids


T = TOKENS


def _lens_ok(r, lo, hi=40):
    return all(lo <= len(s) <= hi for s in r["spans"])


def _distinct(r):  # blanks of one query get different spans (a wrong position would show)
    return len({tuple(x) for x in r["spans"]}) == len(r["spans"])


def _stopped(r):
    return all(b["finish"] == "stop" for b in r["blanks"])


def _non_argmax(r):
    return sum(b.get("non_argmax", 0) for b in r["blanks"])


def _with_variant(variant, model, prompt, flags):
    global VARIANT
    VARIANT = variant
    try:
        return generate(model, prompt, flags)
    finally:
        VARIANT = None


def _replaced(prompt, r, tok=T):
    """The answer is the prompt with each generation-mask id replaced by its span (no eos)."""
    seq, gen_mask, _ = prepare_prompt(prompt, tok)
    if seq[-1] == tok["eos"]:
        seq = seq[:-1]
    out, k = [], 0
    for t in seq:
        if t == gen_mask:
            out += r["spans"][k]
            k += 1
        else:
            out.append(t)
    return k == len(r["spans"]) and out == r["output_ids"]


# Each case: name, flags, prompt builder, acceptance test (model, prompt, result) -> bool, note.
CASES = [
    ("greedy_mask2", GREEDY,
     lambda g: make_prompt(g, g.randint(12, 26), [T["MASK"]], end=T["MASK"]),
     lambda m, pr, r: _lens_ok(r, 2) and _distinct(r) and _stopped(r),
     "two [MASK] (inner + last): two blanks, positions fixed at each mask"),
    ("greedy_smask", GREEDY,
     lambda g: make_prompt(g, g.randint(12, 26), [T["gMASK"], T["sMASK"]]),
     lambda m, pr, r: _lens_ok(r, 3) and _stopped(r) and r["eos_appended"] and T["gMASK"] in r["output_ids"],
     "[sMASK] inner, a [gMASK] id left in place, eos appended"),
    ("greedy_gmask_end", GREEDY,
     lambda g: make_prompt(g, g.randint(10, 24), end=T["gMASK"]),
     lambda m, pr, r: _lens_ok(r, 3) and _stopped(r),
     "[gMASK] last: positions keep counting"),
    ("greedy_nomask", GREEDY,
     lambda g: make_prompt(g, g.randint(8, 20)),
     lambda m, pr, r: _lens_ok(r, 3) and _stopped(r) and r["output_ids"] == pr + r["spans"][0],
     "no mask: [gMASK] id appended (no eos)"),
    ("greedy_mask_eos", GREEDY,
     lambda g: make_prompt(g, g.randint(10, 22), [T["MASK"]]),
     lambda m, pr, r: _lens_ok(r, 2) and _stopped(r) and r["eos_appended"]
     and r["output_ids"][-1] == pr[-1] and len(r["output_ids"]) == len(pr) - 1 + len(r["spans"][0]),
     "[MASK] inner, prompt ends in a plain id: eos appended, dropped from the answer"),
    ("greedy_min_gen3", dict(GREEDY, min_gen_length=3),
     lambda g: make_prompt(g, g.randint(8, 20), end=T["gMASK"]),
     lambda m, pr, r: _lens_ok(r, 3) and _stopped(r)
     and len(generate(m, pr, GREEDY)["spans"][0]) < 3,
     "end-token ban in greedy: without it the span would be < 3 tokens"),
    ("greedy_cap128", GREEDY,
     lambda g: make_prompt(g, g.randint(16, 26), end=T["gMASK"]),
     lambda m, pr, r: r["finish_reason"] == "length" and len(r["spans"][0]) == 128 - len(pr) - 1,
     "out_seq_length 256 capped by max_sequence_length 128"),
    ("greedy_length24", dict(GREEDY, out_seq_length=24),
     lambda g: make_prompt(g, 15, end=T["gMASK"]),
     lambda m, pr, r: r["finish_reason"] == "length" and len(r["spans"][0]) == 8,
     "length limit: context 16, 8 tokens"),
    ("greedy_at_limit24", dict(GREEDY, out_seq_length=24),
     lambda g: make_prompt(g, 23, [T["MASK"]], end=T["MASK"]),
     lambda m, pr, r: r["spans"][0] == [] and len(r["spans"][1]) == 1 and r["finish_reason"] == "length",
     "blank 1's context (24) is at the limit: empty span; blank 2 (context 23) gets 1 token"),
    ("sample_mask2", SAMPLE,
     lambda g: make_prompt(g, g.randint(14, 28), [T["MASK"], T["MASK"]]),
     lambda m, pr, r: _lens_ok(r, 2) and _distinct(r) and _stopped(r) and _non_argmax(r) >= 2
     and r["spans"] != generate(m, pr, GREEDY)["spans"],
     "two [MASK] inner (Philox counter_hi 0 and 1), eos appended"),
    ("sample_gmask", SAMPLE,
     lambda g: make_prompt(g, g.randint(10, 24), end=T["gMASK"]),
     lambda m, pr, r: _lens_ok(r, 3) and _stopped(r) and _non_argmax(r) >= 2,
     "[gMASK] last"),
    ("sample_topk5", SAMPLE_TOPK,
     lambda g: make_prompt(g, g.randint(10, 24), [T["sMASK"]]),
     lambda m, pr, r: _lens_ok(r, 3) and _stopped(r) and _non_argmax(r) >= 2
     and r["spans"] != generate(m, pr, dict(SAMPLE_TOPK, top_k=0))["spans"],
     "[sMASK] inner; top_k 5 changes the draw (top_k 0 gives another span)"),
    ("beam_mask2", BEAM,
     lambda g: make_prompt(g, g.randint(12, 26), [T["MASK"], T["MASK"]]),
     lambda m, pr, r: _lens_ok(r, 2) and _distinct(r) and all(b["done"] for b in r["blanks"]),
     "two [MASK] inner: each blank continues from the best beam"),
    ("beam_smask", BEAM,
     lambda g: make_prompt(g, g.randint(10, 24), [T["sMASK"]]),
     lambda m, pr, r: _lens_ok(r, 2) and r["blanks"][0]["done"]
     and r["spans"] != _with_variant("lp_generated_only", m, pr, BEAM)["spans"],
     "[sMASK] inner, eos appended; the length penalty's len counting the context matters"),
    ("beam_gmask", BEAM,
     lambda g: make_prompt(g, g.randint(10, 24), end=T["gMASK"]),
     lambda m, pr, r: _lens_ok(r, 3) and r["blanks"][0]["done"] and r["blanks"][0]["ngram_bans"] > 0,
     "[gMASK] last; no-repeat bans hit"),
    ("beam_min_gen5", dict(BEAM, min_gen_length=5),
     lambda g: make_prompt(g, g.randint(10, 24), end=T["gMASK"]),
     lambda m, pr, r: _lens_ok(r, 5) and r["spans"] != generate(m, pr, BEAM)["spans"],
     "min_gen_length 5 changes the answer"),
    ("beam_length24", dict(BEAM, out_seq_length=24),
     lambda g: make_prompt(g, 15, end=T["gMASK"]),
     lambda m, pr, r: not r["blanks"][0]["done"] and len(r["spans"][0]) == 8,
     "length limit ends the search: the best beam is a continuing one added by finalize"),
]


def find_case(model, index, name, flags, build, accept, log):
    g = Rng(CASE_SEED * 1000 + index)
    for attempt in range(MAX_ATTEMPTS):
        prompt = build(g)
        assert 8 <= len(prompt) <= 30 and all(1 <= t <= 248 or t in (T["MASK"], T["sMASK"], T["gMASK"])
                                              for t in prompt)
        r = generate(model, prompt, flags)
        floor = MIN_MARGIN_BEAM if flags["strategy"] == "beam" else MIN_MARGIN
        if r["margin"] >= floor and accept(model, prompt, r):
            return prompt, r, attempt
    raise RuntimeError(f"{name}: no acceptable prompt in {MAX_ATTEMPTS} attempts")


# ----------------------------------------------------------------------------------------------
# Self-checks
# ----------------------------------------------------------------------------------------------

def self_checks(model, found, log):
    tok = TOKENS
    # (a) prompt preparation
    assert prepare_prompt([5, 6], tok) == ([5, 6, tok["gMASK"]], tok["gMASK"], False)
    assert prepare_prompt([5, tok["MASK"], 6], tok) == ([5, tok["MASK"], 6, tok["eos"]], tok["MASK"], True)
    assert prepare_prompt([5, tok["gMASK"], tok["sMASK"], 6], tok)[1] == tok["sMASK"]
    assert prepare_prompt([tok["sMASK"], tok["MASK"], tok["gMASK"]], tok) == (
        [tok["sMASK"], tok["MASK"], tok["gMASK"]], tok["MASK"], False)
    try:
        generate(model, [7] * 127 + [tok["gMASK"]], GREEDY)  # context 129 > 128
        raise AssertionError("a too long prompt must be an error")
    except ValueError:
        pass
    for name, (prompt, r) in found.items():  # answer = prompt, each blank replaced, no eos
        assert _replaced(prompt, r), name
    log("check: prompt preparation (mask choice, gMASK/eos appending, too-long prompt); every "
        "answer is its prompt with the blanks replaced and no appended eos")

    # (b) greedy == sampling with top_k 1 (any seed / temperature, top_p off)
    for name in ("greedy_mask2", "greedy_gmask_end", "greedy_smask"):
        prompt, r = found[name]
        s = generate(model, prompt, {"strategy": "sample", "top_k": 1, "top_p": 0.0, "seed": 5,
                                     "temperature": 0.7})
        assert s["output_ids"] == r["output_ids"] and s["spans"] == r["spans"], name
    log("check: greedy == sampling with top_k 1")

    # (c) the step logits (full recomputation per step) equal the logits of ONE forward over the
    #     final sequence at the same rows: causal from sop on, positions as the step computed them
    #     (what a KV cache computes).
    worst = 0.0
    for name in ("greedy_mask2", "greedy_gmask_end"):
        prompt, r = found[name]
        seq, gen_mask, _ = prepare_prompt(prompt, tok)
        mp = seq.index(gen_mask)
        span = r["spans"][0]
        ctx = seq + [tok["sop"]]
        full = ctx + span
        gm = gen_mask == tok["gMASK"]
        pos = list(range(len(full))) if gm else list(range(len(seq))) + [mp] * (len(span) + 1)
        one = ref.glm_forward(model.w, model.cfg, [full], [pos], [[len(seq)]])[0]
        for i in range(len(span) + 1):
            step = ref.glm_forward(model.w, model.cfg, [full[:len(ctx) + i]], [pos[:len(ctx) + i]],
                                   [[len(seq)]])[0, -1]
            worst = max(worst, float((step - one[len(ctx) - 1 + i]).abs().max()))
    assert worst <= 1e-10, worst
    log(f"check: per-step full recomputation == one forward over the final sequence (max |Δ| {worst:.2g})")

    # (d) the top_p rule keeps the first id over p; top_k counts duplicates
    z = torch.zeros(256, dtype=torch.float64)
    z[3], z[9], z[10] = 5.0, 4.0, 4.0
    p = dict(DEFAULTS, strategy="sample", top_k=2, top_p=0.0)
    kept = {sample_pick(z, p, 0, t, tok)[0] for t in range(64)}
    assert kept == {3, 9, 10}, kept  # the 2nd largest value 4.0 twice: both kept
    z = torch.full((256,), NEG, dtype=torch.float64)
    z[3], z[9], z[10] = 1.0, 0.5, 0.0  # c = 0.506, 0.814, 1
    p = dict(DEFAULTS, strategy="sample", top_k=0, top_p=0.5)
    assert {sample_pick(z, p, 0, t, tok)[0] for t in range(64)} == {3}
    p = dict(DEFAULTS, strategy="sample", top_k=0, top_p=0.6)
    assert {sample_pick(z, p, 0, t, tok)[0] for t in range(64)} == {3, 9}
    log("check: top_k keeps duplicates of the k-th value; top_p keeps the first id over p")

    # (e) determinism
    for name in ("sample_mask2", "beam_mask2"):
        prompt, r = found[name]
        flags = dict(next(c[1] for c in CASES if c[0] == name))
        again = generate(model, prompt, flags)
        assert again["output_ids"] == r["output_ids"] and again["margin"] == r["margin"], name
    log("check: a second run reproduces sampling and beam cases bit for bit")

    # (f) the goldens detect plausible misreadings: each variant changes at least one answer.
    variants = {
        "mask_positions_count": lambda n, pr: tok["MASK"] in pr or tok["sMASK"] in pr,
        "no_eos": lambda n, pr: prepare_prompt(pr, tok)[2],
        "philox_swap": lambda n, pr: n.startswith("sample"),
        "top_p_no_shift": lambda n, pr: n.startswith("sample"),
        "lp_generated_only": lambda n, pr: n.startswith("beam"),
    }
    for variant, applies in variants.items():
        changed = []
        for name, flags, *_ in CASES:
            prompt, r = found[name]
            if not applies(name, prompt):
                continue
            alt = _with_variant(variant, model, prompt, flags)
            if alt["output_ids"] != r["output_ids"] or alt["spans"] != r["spans"]:
                changed.append(name)
        log(f"check: misreading '{variant}' changes {len(changed)} case(s): {', '.join(changed)}")
        assert changed, variant


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def cases_json(entries):
    """One case object per block, lists on one line."""
    blocks = []
    for e in entries:
        lines = [f'    {json.dumps(k)}: {json.dumps(v)}' for k, v in e.items()]
        blocks.append("  {\n" + ",\n".join(lines) + "\n  }")
    return "[\n" + ",\n".join(blocks) + "\n]\n"


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "golden", "generate")),
                    help="output directory (default: ../golden/generate next to this script)")
    ap.add_argument("--no-checks", action="store_true", help="skip the self-checks")
    ap.add_argument("--table", action="store_true", help="also print the README cases table")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    log = print
    check_philox(log)

    weights = make_generation_weights()
    model = Model(weights, GEN_MODEL)

    entries, found, table = [], {}, []
    for index, (name, flags, build, accept, note) in enumerate(CASES):
        prompt, r, attempt = find_case(model, index, name, flags, build, accept, log)
        found[name] = (prompt, r)
        entries.append({"name": name, "prompt_ids": prompt, "args": args_string(flags),
                        "output_ids": r["output_ids"], "spans": r["spans"],
                        "finish_reason": r["finish_reason"], "margin": r["margin"]})
        extra = "; ".join(
            f"blank {i}: ctx {b['context']}, {b['finish']}" +
            (f", {b['non_argmax']} non-argmax draws" if flags["strategy"] == "sample" else "") +
            (f", {b['steps']} steps, {'done' if b['done'] else 'finalized'}, {b['ngram_bans']} n-gram bans"
             if flags["strategy"] == "beam" else "")
            for i, b in enumerate(r["blanks"]))
        log(f"{name:18s} args: {args_string(flags)}")
        log(f"{'':18s} prompt {prompt}")
        log(f"{'':18s} output {r['output_ids']}")
        log(f"{'':18s} spans {[len(s) for s in r['spans']]} {r['finish_reason']}  margin {r['margin']:.4g}"
            f"  (attempt {attempt}; {extra})")
        table.append(f"| `{name}` | {note} | `{args_string(flags)}` | {len(prompt)} | "
                     f"{', '.join(str(len(s)) for s in r['spans'])} | {r['finish_reason']} | {r['margin']:.3g} |")

    if not args.no_checks:
        self_checks(model, found, log)

    os.makedirs(args.out, exist_ok=True)
    written = []
    path = os.path.join(args.out, "weights.safetensors")
    ref.write_safetensors(path, weights, {
        "format": "pt", "model": "glm-tiny-generate", "generator": "tests/reference/glm_generate_reference.py",
        "seed": WEIGHT_SEED, "embed_scale": EMBED_SCALE, "end_row_scale": END_ROW_SCALE,
        "mix_scale": MIX_SCALE, "sign_seed": SIGN_SEED})
    back, _ = ref.read_safetensors(path)
    assert list(back) == list(weights) and all(torch.equal(back[k], weights[k]) for k in weights)
    written.append(path)
    path = os.path.join(args.out, "tiny.yaml")
    with open(path, "w") as f:
        f.write(ref.config_yaml(GEN_MODEL, TOKENS))
    written.append(path)
    path = os.path.join(args.out, "cases.json")
    with open(path, "w") as f:
        f.write(cases_json(entries))
    assert json.load(open(path)) == entries
    written.append(path)

    if args.table:
        log("")
        log("| case | what | args | prompt ids | span lengths | finish | margin |")
        log("|---|---|---|---|---|---|---|")
        for row in table:
            log(row)
    log("")
    log(f"smallest margin over all cases: {min(e['margin'] for e in entries):.4g}; "
        f"{model.forwards} forward passes")
    ref.log_written(written, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
