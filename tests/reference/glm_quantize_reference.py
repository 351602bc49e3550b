#!/usr/bin/python3
"""PyTorch reference of GLM-130B weight-only quantization (GLM130B.md §6) and its golden files.

Quantization as the released code does it (``QuantizedColumnParallelLinear`` /
``QuantizedRowParallelLinear``: ``scale = (W.abs().max(-1) / (2^(b-1) - 1)).half()``,
``q = round(W / scale)``, INT4 packed two per byte, even column in the high nibble), in explicit
fp32 arithmetic: the scale is the fp32 quotient rounded once to fp16; ``W / scale`` is an fp32
division, rounded to fp16 first when W is fp16 (the released code divides fp16 tensors);
``torch.round`` rounds ties to even; q is clamped to [-qmax, qmax] and a zero row has q = 0.
Scales belong to each tensor-parallel shard: the row-parallel weights (``attention.dense``,
``dense_4h_to_h``) are split by columns, so their scales change with the TP degree.

Writes tests/golden/quantize/:
- ``quantize_cases.safetensors``: crafted weights (F32 with exact .5 ties, a zero row, a row whose
  scale is an fp16 subnormal, F16 and BF16 weights) and the expected I8 values and F16 scales for
  8 and 4 bits; tensors ``<case>.w``, ``<case>.q<bits>``, ``<case>.scale<bits>``.
- ``forward_int<bits>_tp<tp>.logits.safetensors``: F32 ``logits`` of tests/golden/forward_plain.json's
  batch on that model quantized to 8 / 4 bits at tensor-parallel degree 1 / 2 (``glmrt forward``).
- ``cases.json``: greedy and deterministic beam-search answers of the tiny generation model of
  tests/golden/generate (same weights and config) with its linear weights quantized to 8 and 4 bits,
  for tensor-parallel degrees 1 and 2 (each case carries "bits" and "tp"). The model runs in float64
  on the dequantized weights (full recomputation at every step, glm_generate_reference.generate),
  and every decision clears the fp32 logits by a margin, so glmrt must agree token for token.

Run with Debian's torch:  /usr/bin/python3 tests/reference/glm_quantize_reference.py [--out DIR]

``--check-checkpoint DIR --weights W`` instead checks a checkpoint written by ``glmrt quantize``
from W: every tensor of every file against the released quantization of its tensor-parallel shard
(exit status 0 only when all match).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glm_reference as ref  # noqa: E402
import glm_generate_reference as gen  # noqa: E402

LINEAR = ("attention.query_key_value.weight", "attention.dense.weight",
          "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight")
COLUMN_SPLIT = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")  # row-parallel layers


def quantize(w, bits):
    """(q int8 [rows, cols] unpacked, scale fp16 [rows])."""
    qmax = 127.0 if bits == 8 else 7.0
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / qmax).half()
    sf = scale.float()
    assert torch.isfinite(sf).all()
    safe = torch.where(sf == 0, torch.ones_like(sf), sf)
    v = wf / safe[:, None]
    if w.dtype == torch.float16:
        v = v.half().float()
    q = torch.round(v).clamp(-qmax, qmax)
    q[sf == 0] = 0
    return q.to(torch.int8), scale


def pack4(q):
    """[rows, cols] int8 in [-7, 7] -> [rows, cols/2] int8: even column high nibble."""
    assert q.shape[1] % 2 == 0
    u = q.to(torch.int16) & 0xF
    return ((u[:, 0::2] << 4) | u[:, 1::2]).to(torch.uint8).view(torch.int8)


def unpack4(p):
    hi = p.to(torch.int16) >> 4                        # arithmetic shift of the signed byte
    lo = ((p.to(torch.int16) & 0xF) ^ 8) - 8           # sign-extend the low nibble
    out = torch.empty(p.shape[0], p.shape[1] * 2, dtype=torch.int16)
    out[:, 0::2], out[:, 1::2] = hi, lo
    return out.to(torch.int8)


def dequantize(q, scale):
    return q.double() * scale.double()[:, None]


def quantized_weights(weights, bits, tp):
    """The model's weights with each linear weight replaced by its dequantized (float64 -> the
    exact value, stored as float64) quantization on `tp` tensor-parallel shards."""
    out = {}
    for name, w in weights.items():
        if not name.endswith(LINEAR):
            out[name] = w
            continue
        if name.endswith(COLUMN_SPLIT) and tp > 1:
            pieces = torch.chunk(w, tp, dim=1)
            out[name] = torch.cat([dequantize(*quantize(p, bits)) for p in pieces], dim=1)
        else:  # row splits keep every row whole: the same scales at any TP degree
            out[name] = dequantize(*quantize(w, bits))
    return out


# ----------------------------------------------------------------------------------------------
# --check-checkpoint: a pre-quantized glmrt checkpoint against the released quantization
# ----------------------------------------------------------------------------------------------

def released_shard(name, w, t, tp):
    """Tensor-parallel shard t of tp of a full tensor, by the released split rules (GLM130B.md §7)."""
    if tp == 1 or name.endswith(("layernorm.weight", "layernorm.bias", "attention.dense.bias",
                                 "dense_4h_to_h.bias")):
        return w
    if name.endswith(COLUMN_SPLIT):
        return torch.chunk(w, tp, dim=1)[t]
    if ".mlp.dense_h_to_4h." in name:  # GLU-aware: pieces t and tp + t of 2·tp
        pieces = torch.chunk(w, 2 * tp, dim=0)
        return torch.cat([pieces[t], pieces[tp + t]], dim=0)
    return torch.chunk(w, tp, dim=0)[t]  # vocabulary rows, query_key_value rows (whole heads)


def check_checkpoint(folder, weights_path, log=print):
    """Every tensor of the glmrt checkpoint `folder` (its `latest`) against the full weights: the
    four linear weights of each layer must be the released quantization of each tensor-parallel
    shard (I8 values, INT4 packed, F16 NAME_scale), every other tensor the shard itself in the
    stored dtype, in the right file of the right pipeline stage. Returns the number checked."""
    latest = open(os.path.join(folder, "latest")).read().strip()
    path = os.path.join(folder, latest)
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    bits = manifest["quantization_bit_width"]
    tp, pp = manifest["layout"]["tensor"], manifest["layout"]["pipeline"]
    stage_layers = manifest["stage_layers"]
    weights, _ = ref.read_safetensors(weights_path)
    assert sorted(manifest["files"]) == sorted(f"model_tp{t}_pp{p}.safetensors"
                                               for t in range(tp) for p in range(pp)), manifest["files"]
    first = [sum(stage_layers[:p]) for p in range(pp)]
    checked = 0
    for p in range(pp):
        layers = range(first[p], first[p] + stage_layers[p])
        names = [n for n in weights if not n.endswith("rotary_emb.inv_freq") and (
            (n.startswith("transformer.layers.") and int(n.split(".")[2]) in layers) or
            (n == "transformer.word_embeddings.weight" and p in (0, pp - 1)) or
            (n.startswith("transformer.final_layernorm.") and p == pp - 1))]
        for t in range(tp):
            got, _ = ref.read_safetensors(os.path.join(path, f"model_tp{t}_pp{p}.safetensors"))
            want_keys = sorted(names + [n + "_scale" for n in names if n.endswith(LINEAR)])
            assert sorted(got) == want_keys, (t, p, sorted(set(got) ^ set(want_keys)))
            for n in names:
                shard = released_shard(n, weights[n], t, tp)
                if n.endswith(LINEAR):
                    q, scale = quantize(shard, bits)
                    if bits == 4:
                        q = pack4(q)
                    assert got[n].dtype == torch.int8 and torch.equal(got[n], q), (n, t, p)
                    assert got[n + "_scale"].dtype == torch.float16, (n, t, p)
                    assert torch.equal(got[n + "_scale"].view(torch.int16), scale.view(torch.int16)), (n, t, p)
                else:
                    stored = got[n]
                    assert stored.shape == shard.shape, (n, t, p, stored.shape, shard.shape)
                    assert torch.equal(stored, shard.to(stored.dtype)), (n, t, p)
                checked += 1
    log(f"{path}: {checked} tensors match the released {bits}-bit quantization of "
        f"{os.path.basename(weights_path)} on {tp} x {pp} ranks")
    return checked


# ----------------------------------------------------------------------------------------------
# quantize_cases.safetensors
# ----------------------------------------------------------------------------------------------

def crafted_weights():
    g = torch.Generator().manual_seed(606)
    cases = {}
    # F32: row 0 has max 31.75 (scale 0.25 exactly for 8 bits) and values k·0.25 + 0.125, i.e.
    # quotients k + ½ (ties to even); row 1 is zero; row 2 tiny (fp16-subnormal scale);
    # rows 3-5 random with a negative extreme.
    w = torch.randn(6, 24, generator=g)
    ties = torch.arange(-12, 12).float() * 0.25 + 0.125
    ties[5] = 31.75
    w[0] = ties
    w[1] = 0
    w[2] = torch.randn(24, generator=g) * 1e-6
    w[4, 7] = -9.5
    cases["f32"] = w
    # 4-bit ties: max 3.5 -> scale 0.5, the other values (k + ½)·0.5.
    w4 = torch.randn(4, 16, generator=g)
    t4 = (torch.arange(-8, 8).float() + 0.5) * 0.5
    t4[0], t4[15] = 3.5, -3.5
    w4[0] = t4
    cases["f32_ties4"] = w4
    cases["f16"] = (torch.randn(5, 32, generator=g) * 0.05).half()
    cases["bf16"] = (torch.randn(5, 32, generator=g) * 0.05).bfloat16()
    return cases


def quantize_goldens():
    tensors = {}
    for name, w in crafted_weights().items():
        tensors[f"{name}.w"] = w
        for bits in (8, 4):
            q, s = quantize(w, bits)
            if bits == 4:
                p = pack4(q)
                assert torch.equal(unpack4(p), q)
                q = p
            tensors[f"{name}.q{bits}"] = q
            tensors[f"{name}.scale{bits}"] = s
    # The ties rows really hold ties, rounded to even.
    q8, s8 = quantize(crafted_weights()["f32"], 8)
    assert float(s8[0]) == 0.25 and q8[0, :4].tolist() == [-12, -10, -10, -8]  # -11.5 -> -12 ...
    assert all(int(v) % 2 == 0 for i, v in enumerate(q8[0]) if i != 5) and int(q8[0, 5]) == 127
    q4, s4 = quantize(crafted_weights()["f32_ties4"], 4)
    assert float(s4[0]) == 0.5 and all(int(v) % 2 == 0 for v in q4[0, 1:15])
    return tensors


# ----------------------------------------------------------------------------------------------
# Generation cases
# ----------------------------------------------------------------------------------------------

T = gen.TOKENS
CASES = [
    ("greedy_mask2", gen.GREEDY,
     lambda g: gen.make_prompt(g, g.randint(12, 26), [T["MASK"]], end=T["MASK"]),
     lambda m, pr, r: gen._lens_ok(r, 2) and gen._stopped(r)),
    ("greedy_smask", gen.GREEDY,
     lambda g: gen.make_prompt(g, g.randint(12, 26), [T["sMASK"]]),
     lambda m, pr, r: gen._lens_ok(r, 3) and gen._stopped(r)),
    ("greedy_gmask", gen.GREEDY,
     lambda g: gen.make_prompt(g, g.randint(10, 24), end=T["gMASK"]),
     lambda m, pr, r: gen._lens_ok(r, 3) and gen._stopped(r)),
    ("beam_gmask", gen.BEAM,
     lambda g: gen.make_prompt(g, g.randint(10, 24), end=T["gMASK"]),
     lambda m, pr, r: gen._lens_ok(r, 3) and r["blanks"][0]["done"]),
]


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "golden", "quantize")))
    ap.add_argument("--check-checkpoint", metavar="DIR",
                    help="check a glmrt quantize checkpoint folder against --weights instead")
    ap.add_argument("--weights", help="the full weight file DIR was quantized from")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    log = print
    if args.check_checkpoint:
        if not args.weights:
            ap.error("--check-checkpoint needs --weights")
        check_checkpoint(args.check_checkpoint, args.weights, log)
        return 0

    weights, _ = ref.read_safetensors(os.path.join(here, "..", "golden", "generate", "weights.safetensors"))
    full = gen.Model(weights, gen.GEN_MODEL)
    entries = []
    for bits in (8, 4):
        for tp in (1, 2):
            model = gen.Model(quantized_weights(weights, bits, tp), gen.GEN_MODEL)
            for index, (name, flags, build, accept) in enumerate(CASES):
                prompt, r, attempt = gen.find_case(model, 100 + index, name, flags, build, accept, log)
                unq = gen.generate(full, prompt, flags)
                entries.append({"name": f"{name}_int{bits}_tp{tp}", "bits": bits, "tp": tp,
                                "prompt_ids": prompt, "args": gen.args_string(flags),
                                "output_ids": r["output_ids"], "spans": r["spans"],
                                "finish_reason": r["finish_reason"], "margin": r["margin"],
                                "differs_from_unquantized": unq["output_ids"] != r["output_ids"]})
                log(f"{entries[-1]['name']:24s} prompt {prompt}\n{'':24s} output {r['output_ids']}"
                    f"  margin {r['margin']:.4g} (attempt {attempt}; unquantized answer "
                    f"{'differs' if entries[-1]['differs_from_unquantized'] else 'same'})")
    # Quantization matters to the answers: at 4 bits some case must differ from the unquantized model.
    assert any(e["differs_from_unquantized"] for e in entries if e["bits"] == 4)

    # glmrt forward with quantized weights: logits of tests/golden/forward_plain.json's batch.
    forward_logits = {}
    batch = json.load(open(os.path.join(here, "..", "golden", "forward_plain.json")))
    plain = ref.glm_forward(weights, gen.GEN_MODEL, batch["tokens"], batch["position_ids"], batch["sep"])
    for bits in (8, 4):
        for tp in (1, 2):
            lg = ref.glm_forward(quantized_weights(weights, bits, tp), gen.GEN_MODEL, batch["tokens"],
                                 batch["position_ids"], batch["sep"])
            forward_logits[(bits, tp)] = lg.float()
            log(f"forward int{bits} tp{tp}: max |logit - unquantized| / max |unquantized| = "
                f"{float((lg - plain).abs().max() / plain.abs().max()):.3g}")

    os.makedirs(args.out, exist_ok=True)
    written = []
    for (bits, tp), lg in forward_logits.items():
        path = os.path.join(args.out, f"forward_int{bits}_tp{tp}.logits.safetensors")
        ref.write_safetensors(path, {"logits": lg}, {"input": "tests/golden/forward_plain.json",
                                                      "bits": bits, "tp": tp})
        written.append(path)
    path = os.path.join(args.out, "quantize_cases.safetensors")
    tensors = quantize_goldens()
    ref.write_safetensors(path, tensors, {"generator": "tests/reference/glm_quantize_reference.py"})
    written.append(path)
    path = os.path.join(args.out, "cases.json")
    with open(path, "w") as f:
        f.write(gen.cases_json(entries))
    assert json.load(open(path)) == entries
    written.append(path)
    ref.log_written(written, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
