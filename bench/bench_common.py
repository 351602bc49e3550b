"""Pieces shared by the benchmark scripts' Python (bench/generate_bench.sh,
bench/gpu_generate_bench.sh, bench/quantized_decode_bench.sh, bench/train_bench.sh): the decoding
prompts, a GLM config's sizes, the decoding floor, the greedy token agreement, the markdown table
and the even-FFN config copy.

    python3 bench/bench_common.py prompts CONFIG.yaml P BATCHES PREFIX
writes PREFIX.b{B}.txt for every B in the comma-separated BATCHES: B queries of P-1 seeded random
ids below every special id, then [gMASK] (query r is the same in every file).

    python3 bench/bench_common.py even-ffn CONFIG.yaml OUT.yaml
writes CONFIG.yaml with an odd ffn_hidden_size rounded up to even (INT4 packs two columns per byte).
"""
import json
import random
import re
import sys

import yaml


def write_prompts(cfg, P, batches, prefix):
    tok = yaml.safe_load(open(cfg))["tokens"]
    top = min(v for k, v in tok.items() if k != "pad")
    rng = random.Random(2048)
    sizes = [int(b) for b in batches.split(",")]
    rows = [[rng.randrange(1, top) for _ in range(P - 1)] + [tok["gMASK"]] for _ in range(max(sizes))]
    for b in sizes:
        with open(f"{prefix}.b{b}.txt", "w") as f:
            f.writelines(",".join(map(str, r)) + "\n" for r in rows[:b])


def read_run(side, out):
    """What one decoding run printed: glmrt (`generate --json --timing`): its spans ("outputs") and
    the timing line of its stderr (`out`.err); PyTorch (bench/torch_generate.py): its JSON line."""
    lines = [l for l in open(out) if l.strip()]
    if side != "glmrt":
        return json.loads(lines[-1])
    r = {"outputs": [json.loads(l)["spans"] for l in lines]}
    for l in open(out + ".err"):
        if l.startswith("glmrt generate timing: "):
            r.update(json.loads(l[len("glmrt generate timing: "):]))
    return r


def model_numbers(path):
    """h, L, V, the layers' matrix parameters and all parameters of a GLM config."""
    m = yaml.safe_load(open(path))["model"]
    h, f, L, V = m["hidden_size"], m["ffn_hidden_size"], m["num_layers"], m["vocab_size"]
    mats = L * (4 * h * h + 3 * f * h)
    small = L * (3 * h + h + 2 * f + h + 4 * h) + 2 * h  # biases + LayerNorms
    mat_rows = L * (3 * h + h + 2 * f + h)  # output rows of the four linear weights
    return dict(h=h, L=L, V=V, mats=mats, mat_rows=mat_rows, params=mats + small + V * h)


def weight_bytes(mn, dtype_bytes, weight_bits=0):
    """Bytes of all weights; with weight_bits (4 or 8) the four linear weights of every layer are
    that many bits each plus an fp16 scale per row (glmrt --quantization-bit-width)."""
    if not weight_bits:
        return mn["params"] * dtype_bytes
    return (mn["params"] - mn["mats"]) * dtype_bytes + mn["mats"] * weight_bits / 8 + 2 * mn["mat_rows"]


def decode_floor(mn, S, G, dtype_bytes, batch, bandwidth, weight_bits=0):
    """Seconds per decoding step at `bandwidth` bytes/s: every weight once plus the KV cache read
    in the step, averaged over the G - 1 steps (step i feeds token i, S + i tokens cached after it)."""
    kv = sum(2 * mn["L"] * (S + i) * mn["h"] * dtype_bytes * batch for i in range(1, G)) / max(1, G - 1)
    return (weight_bytes(mn, dtype_bytes, weight_bits) + kv) / bandwidth


def token_agreement(glmrt_outputs, torch_outputs, G, batch):
    """"yes" when every row's first G greedy tokens agree (or all the compared ones, when PyTorch
    generated fewer), else the shortest agreeing prefix and how many rows agree throughout."""
    if len(glmrt_outputs) != len(torch_outputs):
        return f"rows differ ({len(glmrt_outputs)} / {len(torch_outputs)})"
    n = min(len(torch_outputs[0]) if torch_outputs else 0, G)
    agree = []
    for a, b in zip(glmrt_outputs, torch_outputs):
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        agree.append(k)
    if all(k >= n for k in agree):
        return "yes" if n == G else f"yes ({n} of {G} compared)"
    same = sum(k >= n for k in agree)
    return f"{min(agree)} of {n}" + (f" ({same}/{len(agree)} rows all)" if batch > 1 else "")


def markdown_table(header, rows):
    """The lines of a markdown table, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]


def write_even_ffn_config(src, dst):
    """`src` with an odd ffn_hidden_size rounded up to even (INT4 packs two columns per byte)."""
    text = open(src).read()
    text = re.sub(r"(ffn_hidden_size:\s*)(\d+)", lambda m: m.group(1) + str(int(m.group(2)) + int(m.group(2)) % 2), text)
    open(dst, "w").write(text)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "prompts":
        write_prompts(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif len(sys.argv) == 4 and sys.argv[1] == "even-ffn":
        write_even_ffn_config(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
