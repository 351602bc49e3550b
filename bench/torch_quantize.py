#!/usr/bin/python3
"""The released way of producing INT8/INT4 weights, as the baseline of bench/quantize_bench.sh:
the whole full-precision model is read into host memory first (the released converter
`torch.load`s every rank file; here the weight file is read whole), then every linear weight is
quantized with PyTorch ops (tests/reference/glm_quantize_reference.py: the released scale and
rounding, INT4 packed two per byte) and the result is written as one safetensors file.

    /usr/bin/python3 bench/torch_quantize.py WEIGHTS.safetensors BITS OUT.safetensors [--threads T]

Prints one JSON line: {"read_s", "quantize_s", "write_s", "total_s"}.
"""
import argparse
import json
import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tests", "reference"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("bits", type=int, choices=(4, 8))
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    import glm_reference as ref
    from glm_quantize_reference import LINEAR, pack4, quantize

    t0 = time.time()
    weights, _ = ref.read_safetensors(a.weights)  # the whole model in memory, as torch.load does
    t1 = time.time()
    out = {}
    for name, w in weights.items():
        if name.endswith(LINEAR):
            q, scale = quantize(w, a.bits)
            out[name] = pack4(q) if a.bits == 4 else q
            out[name + "_scale"] = scale
        else:
            out[name] = w
    t2 = time.time()
    ref.write_safetensors(a.out, out)
    t3 = time.time()
    print(json.dumps({"read_s": t1 - t0, "quantize_s": t2 - t1, "write_s": t3 - t2, "total_s": t3 - t0}))


if __name__ == "__main__":
    main()
