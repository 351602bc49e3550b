#!/usr/bin/env python3
"""Runs the golden generation cases (tests/golden/generate/cases.json, from the float64 PyTorch
reference) through `glmrt generate` with extra flags (e.g. --device cuda --dtype f32) and counts
the answers whose output_ids and spans equal the goldens. Cases with the same flags run as one
batched --input-file query file, as the CPU test GenerateGoldenBatch does.

With --serve the cases go to one `glmrt serve` (started with the extra flags, --port 0) as
concurrent POST /generate requests, each with its case's parameters as the released API's fields,
so the server batches them; its answers must equal the goldens too.

Usage: gpu_generate_check.py GLMRT_BINARY WORK_DIR [--serve] [extra glmrt flags...]
Prints one line per group (or per server) and a last line "generate: M/N match" ("serve: ...");
exits non-zero on any mismatch or failed run.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden", "generate")


# The generate flags of the golden cases as /generate fields.
FIELDS = {"--strategy": ("sampling_strategy", str), "--out-seq-length": ("out_seq_length", int),
          "--min-gen-length": ("min_gen_length", int), "--temperature": ("temperature", float),
          "--top-k": ("topk", int), "--top-p": ("topp", float), "--seed": ("seed", int),
          "--num-beams": ("num_beams", int), "--length-penalty": ("length_penalty", float),
          "--no-repeat-ngram-size": ("no_repeat_ngram_size", int)}


def request_body(case) -> bytes:
    body = {"prompt_ids": case["prompt_ids"]}
    args = shlex.split(case["args"])
    i = 0
    while i < len(args):
        if args[i] == "--deterministic":
            body["deterministic"] = True
            i += 1
            continue
        name, kind = FIELDS[args[i]]
        body[name] = kind(args[i + 1])
        i += 2
    return json.dumps(body).encode()


def serve_check(binary, work, extra, cases) -> int:
    log_path = os.path.join(work, "serve.log")
    log = open(log_path, "w")
    server = subprocess.Popen([binary, "serve", "--config", os.path.join(GOLDEN, "tiny.yaml"),
                               "--weights", os.path.join(GOLDEN, "weights.safetensors"),
                               "--port", "0", *extra], stdout=log, stderr=log)
    try:
        port = None
        deadline = time.time() + 120
        while port is None and time.time() < deadline and server.poll() is None:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(log_path).read())
            port = int(m.group(1)) if m else None
            time.sleep(0.1)
        if port is None:
            print(f"serve: no 'listening on' line\n{open(log_path).read()[-3000:]}")
            return 1
        answers = [None] * len(cases)

        def post(i):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", request_body(cases[i]),
                                         {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=240) as r:
                    answers[i] = json.loads(r.read())
            except Exception as e:  # reported below as a mismatch
                answers[i] = {"error": str(e)}

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = 0
        for c, a in zip(cases, answers):
            if a and a.get("output_ids") == c["output_ids"] and a.get("spans") == c["spans"]:
                ok += 1
            else:
                print(f"  {c['name']}: golden {c['output_ids']} (margin {c['margin']:.1e}), got {a}")
        print(f"serve: {ok}/{len(cases)} match")
        return 0 if ok == len(cases) else 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    binary, work, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(GOLDEN, "cases.json")) as f:
        cases = json.load(f)
    if "--serve" in extra:
        extra.remove("--serve")
        return serve_check(binary, work, extra, cases)
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
