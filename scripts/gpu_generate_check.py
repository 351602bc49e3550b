#!/usr/bin/env python3
"""Runs the golden generation cases (tests/golden/generate/cases.json, from the float64 PyTorch
reference) through `glmrt generate` with extra flags (e.g. --device cuda --dtype f32) and counts
the answers whose output_ids and spans equal the goldens. Cases with the same flags run as one
batched --input-file query file, as the CPU test GenerateGoldenBatch does.

Usage: gpu_generate_check.py GLMRT_BINARY WORK_DIR [extra glmrt flags...]
Prints one line per group and a last line "generate: M/N match"; exits non-zero on any mismatch
or failed run.
"""
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden", "generate")


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    binary, work, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(GOLDEN, "cases.json")) as f:
        cases = json.load(f)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault(c["args"], []).append(i)

    matched, failed_runs = 0, 0
    for g, (args, members) in enumerate(groups.items()):
        queries = os.path.join(work, f"queries_{g}.txt")
        with open(queries, "w") as f:
            for i in members:
                f.write(",".join(str(t) for t in cases[i]["prompt_ids"]) + "\n")
        cmd = [binary, "generate", "--config", os.path.join(GOLDEN, "tiny.yaml"),
               "--weights", os.path.join(GOLDEN, "weights.safetensors"), "--json",
               "--input-file", queries, "--input-format", "ids", "--max-batch", "4",
               *shlex.split(args), *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            failed_runs += 1
            print(f"group '{args}': exit {r.returncode}\n{(r.stdout + r.stderr)[-3000:]}")
            continue
        answers = {}
        for line in r.stdout.splitlines():
            if line.startswith("{"):
                a = json.loads(line)
                if "query" in a:
                    answers[a["query"]] = a
        ok = 0
        for q, i in enumerate(members):
            c, a = cases[i], answers.get(q)
            if a is not None and a.get("output_ids") == c["output_ids"] and a.get("spans") == c["spans"]:
                ok += 1
            else:
                got = None if a is None else a.get("output_ids", a)
                print(f"  {c['name']}: golden {c['output_ids']} (margin {c['margin']:.1e}), got {got}")
        matched += ok
        print(f"group '{args}': {ok}/{len(members)} match")
    print(f"generate: {matched}/{len(cases)} match")
    return 0 if matched == len(cases) and failed_runs == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
