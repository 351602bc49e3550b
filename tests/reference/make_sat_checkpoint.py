#!/usr/bin/python3
"""Writes a tiny checkpoint in the released GLM-130B (SwissArmyTransformer) layout, for
`glmrt import-sat` and its torch.save reader (GLM130B.md section 7).

    tests/golden/sat/latest                              "7"
    tests/golden/sat/7/mp_rank_00_model_states.pt        torch.save({"module": OrderedDict(...)})
    tests/golden/sat/7/mp_rank_01_model_states.pt        (TP = 2)
    tests/golden/sat/expected_logits.safetensors         F32 `logits` of forward_plain.json
    tests/golden/sat/zip64_mp_rank_00.pt                 mp_rank_00 rewritten with ZIP64 records
    tests/golden/sat/odd_tensors_p2.pt, _p4.pt           reader cases (protocol 2 and 4): every dtype,
                                                         strided views, scalars, empty tensors

The weights are tests/golden/tiny_weights.safetensors rounded to fp16 and split over 2 tensor-
parallel ranks exactly as the release splits them: vocabulary rows (word embeddings), rows (QKV
weight and bias: whole heads), columns (attention.dense.weight, mlp.dense_4h_to_h.weight),
GLU-aware rows (mlp.dense_h_to_4h: rank r holds chunk r of each GeGLU half, i.e. chunks r and k+r
of 2k), replicated (LayerNorms, row-parallel biases). Rank 0 also holds the ignored buffer
`attention.rotary_emb.inv_freq` of every layer, as some released files do.

What the pickles exercise besides plain contiguous tensors (all things torch.save really emits):
  - the state dict's `_metadata` attribute (an OrderedDict pickled with a BUILD state);
  - QKV pieces that are row views of the full tensor (torch.save keeps the whole storage once per
    file: rank 1's piece has a nonzero storage offset into a storage shared by weight and view);
  - layer 0's attention.dense.weight pieces are column views (non-contiguous strides [64, 1] over
    a [64, 32] piece of a [64, 64] storage);
  - a top-level dict with more than "module" (an int, a string, None, a list, a float).

expected_logits.safetensors: `glm_reference.glm_forward` (float64, stored as F32) of
forward_plain.json with the fp16-rounded weights, exact RoPE (tiny_exactrope.yaml).

The ZIP64 copy has every size and offset field of rank 0's archive replaced by 0xFFFFFFFF with the
values in ZIP64 extra fields, and a ZIP64 end-of-central-directory record and locator: what torch
writes for files over 4 GiB (the released files are 30+ GB). torch.load reads it back (checked).

Run with Debian's torch:  /usr/bin/python3 tests/reference/make_sat_checkpoint.py [--out DIR]
"""

import argparse
import collections
import hashlib
import json
import os
import struct
import sys
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glm_reference as ref  # noqa: E402

TP = 2
ITERATION = 7


def rule_of(name):
    if name.endswith("word_embeddings.weight"):
        return "vocab_rows"
    if "layernorm" in name:
        return "replicated"
    if "query_key_value" in name:
        return "rows"
    if name.endswith("attention.dense.weight") or name.endswith("dense_4h_to_h.weight"):
        return "columns"
    if name.endswith("attention.dense.bias") or name.endswith("dense_4h_to_h.bias"):
        return "replicated"
    if "dense_h_to_4h" in name:
        return "glu_rows"
    raise ValueError(name)


def split(full, rule, k, name):
    """The k pieces of `full` as the release holds them."""
    if rule == "replicated":
        return [full.clone() for _ in range(k)]
    if rule in ("rows", "vocab_rows"):
        if "query_key_value" in name:
            # row views of one storage (torch.save keeps the whole storage, with an offset)
            return list(full.chunk(k, dim=0))
        return [c.clone() for c in full.chunk(k, dim=0)]
    if rule == "columns":
        if name == "transformer.layers.0.attention.dense.weight":
            pieces = list(full.chunk(k, dim=1))  # non-contiguous column views
            assert not pieces[0].is_contiguous()
            return pieces
        return [c.contiguous() for c in full.chunk(k, dim=1)]
    if rule == "glu_rows":
        c = full.chunk(2 * k, dim=0)
        return [torch.cat((c[r], c[k + r]), dim=0) for r in range(k)]
    raise ValueError(rule)


def merge(pieces, rule):
    """The inverse of split (what glmrt's unshard_tensor does)."""
    if rule == "replicated":
        return pieces[0]
    if rule in ("rows", "vocab_rows"):
        return torch.cat(pieces, dim=0)
    if rule == "columns":
        return torch.cat(pieces, dim=1)
    halves = [p.chunk(2, dim=0) for p in pieces]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)


def rank_state_dicts(weights16, cfg, k):
    sds = [collections.OrderedDict() for _ in range(k)]
    d = ref.head_dim(cfg)
    inv_freq = (1.0 / (cfg["rotary_base"] ** (torch.arange(0, d, 2).float() / d))).half()
    for name, full in weights16.items():
        rule = rule_of(name)
        pieces = split(full, rule, k, name)
        assert torch.equal(merge(pieces, rule), full), name
        for r in range(k):
            sds[r][name] = pieces[r]
        if name.endswith("attention.dense.bias"):  # a buffer of the attention module
            sds[0][name.replace("dense.bias", "rotary_emb.inv_freq")] = inv_freq.clone()
    for sd in sds:  # what nn.Module.state_dict() attaches (pickled as a BUILD state)
        sd._metadata = collections.OrderedDict([("", {"version": 1}), ("transformer", {"version": 1})])
    return sds


# ----------------------------------------------------------------------------------------------
# ZIP64 rewrite of a stored (uncompressed) zip archive
# ----------------------------------------------------------------------------------------------

def zip64_copy(src, dst):
    with open(src, "rb") as f:
        raw = f.read()
    zf = zipfile.ZipFile(src)
    out = bytearray()
    central = bytearray()
    for info in zf.infolist():
        assert info.compress_type == zipfile.ZIP_STORED
        # the entry's data: after its local header (30 bytes + name + extra)
        lh = info.header_offset
        n_name, n_extra = struct.unpack("<HH", raw[lh + 26:lh + 30])
        start = lh + 30 + n_name + n_extra
        data = raw[start:start + info.file_size]
        name = info.filename.encode()
        offset = len(out)
        z64_local = struct.pack("<HHQQ", 0x0001, 16, info.file_size, info.file_size)
        # pad (like torch's "FB" field) so the data starts 64-byte aligned
        base = offset + 30 + len(name) + len(z64_local) + 4
        pad = (-base) % 64
        extra = z64_local + struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, info.CRC,
                           0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra))
        out += name + extra
        assert len(out) % 64 == 0
        out += data
        z64_central = struct.pack("<HHQQQ", 0x0001, 24, info.file_size, info.file_size, offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, info.CRC,
                               0xFFFFFFFF, 0xFFFFFFFF, len(name), len(z64_central), 0, 0, 0, 0,
                               0xFFFFFFFF)
        central += name + z64_central
    cd_offset, cd_size, count = len(out), len(central), len(zf.infolist())
    out += central
    eocd64_offset = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size, cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, eocd64_offset, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(dst, "wb") as f:
        f.write(out)


def odd_tensors():
    """A top-level dict (no "module") of the tensors a torch.save reader meets beyond the release:
    every dtype glmrt holds, one it does not (uint8), transposed / strided / expanded views, a
    0-d and an empty tensor, a Parameter, and non-tensor values (skipped by the reader)."""
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    return {
        "transposed": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),  # stride (1, 4)
        "strided": base[:, 1:3, ::2],  # offset 5, strides (20, 5, 2)
        "expanded": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).expand(2, 3),  # stride (0, 1)
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4, dtype=torch.float16),
        "bf16": torch.tensor([1.5, -2.0, 3.0e30]).bfloat16(),
        "f16": torch.tensor([0.5, -1.0, 1000.0]).half(),
        "i64": torch.tensor([-(1 << 40), 123], dtype=torch.int64),
        "i32": torch.tensor([-7, 0, 2147483647], dtype=torch.int32),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "param": torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]])),
        "not_a_tensor": {"big": 1 << 40, "neg": -5, "float": 1.25, "tuple": (1, "a"), "none": None},
    }


def tensors_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    golden = os.path.normpath(os.path.join(here, "..", "golden"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(golden, "sat"), help="output folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    weights, _ = ref.read_safetensors(os.path.join(golden, "tiny_weights.safetensors"))
    cfg = dict(ref.TINY_MODEL, rotary_fp16_tables=False)  # tiny_exactrope.yaml
    assert list(weights) == list(ref.weight_shapes(cfg)), "tiny_weights.safetensors: unexpected names"
    weights16 = collections.OrderedDict((k, v.half()) for k, v in weights.items())

    written = []
    os.makedirs(os.path.join(args.out, str(ITERATION)), exist_ok=True)
    with open(os.path.join(args.out, "latest"), "w") as f:
        f.write(str(ITERATION))  # the release's `latest` has no newline
    written.append(os.path.join(args.out, "latest"))

    sds = rank_state_dicts(weights16, cfg, TP)
    for r, sd in enumerate(sds):
        path = os.path.join(args.out, str(ITERATION), f"mp_rank_{r:02d}_model_states.pt")
        obj = {"module": sd}
        if r == 0:
            obj.update({"iteration": ITERATION, "note": "glmrt fixture", "client_state": None,
                        "lst": [1, 2.5, "x", True]})
        torch.save(obj, path)
        written.append(path)
        back = torch.load(path)["module"]
        assert list(back) == list(sd) and all(tensors_equal(back[n], sd[n]) for n in sd)

    # the merge of what was written is exactly the fp16 weights
    loaded = [torch.load(p)["module"] for p in written[1:]]
    for name, full in weights16.items():
        assert tensors_equal(merge([sd[name] for sd in loaded], rule_of(name)), full), name

    z64 = os.path.join(args.out, "zip64_mp_rank_00.pt")
    zip64_copy(written[1], z64)
    written.append(z64)
    back = torch.load(z64)
    assert back["iteration"] == ITERATION
    assert all(tensors_equal(back["module"][n], sds[0][n]) for n in sds[0])
    with zipfile.ZipFile(z64) as zf:
        assert zf.testzip() is None

    for proto in (2, 4):
        path = os.path.join(args.out, f"odd_tensors_p{proto}.pt")
        odd = odd_tensors()
        torch.save(odd, path, pickle_protocol=proto)
        written.append(path)
        back = torch.load(path)
        assert all(tensors_equal(back[k], v) for k, v in odd.items() if torch.is_tensor(v))

    with open(os.path.join(golden, "forward_plain.json")) as f:
        case = json.load(f)
    w = {k: v.float() for k, v in weights16.items()}
    logits = ref.forward_case(w, cfg, case)
    path = os.path.join(args.out, "expected_logits.safetensors")
    ref.write_safetensors(path, {"logits": logits.float()},
                          {"config": "tiny_exactrope.yaml", "input": "forward_plain.json",
                           "weights": "tiny_weights.safetensors rounded to fp16",
                           "max_abs": f"{float(logits.abs().max()):.9g}"})
    written.append(path)
    full32 = ref.forward_case(weights, cfg, case)
    print(f"logits {list(logits.shape)} max|logit| {float(logits.abs().max()):.6f}; "
          f"fp16 rounding of the weights moves them by {ref.rel_diff(logits, full32):.3g} rel")

    total = 0
    for path in written:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        total += os.path.getsize(path)
        print(f"{os.path.getsize(path):9d}  {digest}  {os.path.relpath(path)}")
    print(f"{total:9d}  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
