#!/usr/bin/env bash
# Data-parallel serving: what one endpoint in front of two replicas costs. The same N concurrent
# POST /generate requests (seeded sampling, P-token prompts ending in [gMASK], exactly G generated
# tokens each through min_gen_length) are sent to
#   routed       one `glmrt serve --data 2` job of 2 ranks: world rank 0 serves HTTP and routes
#                each request to the replica with the fewest in flight (inference/replicas.h);
#   independent  two single-rank `glmrt serve` processes, the client itself sending request i to
#                server i mod 2 (what running one server per replica gives);
#   one replica  one single-rank server using both threads (the same cores without replicas).
# Every rank runs OMP_NUM_THREADS=1 in the first two (2 threads in the last); the routed job runs
# with mpiexec --bind-to none, as the single servers run unbound (bound to one core, world rank 0's
# HTTP and routing threads take time from its engine: 0.70x instead of 0.95x on the 1b config
# here). Per round and
# setup: the wall time from the first request sent to the last answer read, as generated tokens
# per second; the table gives each setup's median over R rounds (setups in turn within a round)
# and routed ÷ independent. It also counts the requests answered the same in every run: a seed
# draws the same tokens on any replica and in any batch as long as the logits agree, and they
# agree to rounding only (the rows batched together change a matrix product's reduction order).
#
#   bench/serve_replicas_bench.sh [--config tiny|1b|FILE] [--requests N] [--tokens G]
#                                 [--prompt-len P] [--max-batch B] [--repeat R]
#
# Environment: BUILD_DIR (default build-cpu when configured, else build), JOBS, QUIET_WAIT_S
# (default 60), KEEP_TMP=1 (keep the weights and logs).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=tiny
REQUESTS=64
TOKENS=32
PROMPT_LEN=16
MAX_BATCH=16
REPEAT=3
while (($#)); do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --tokens) TOKENS=$2; shift 2 ;;
    --prompt-len) PROMPT_LEN=$2; shift 2 ;;
    --max-batch) MAX_BATCH=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "serve_replicas_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$CONFIG" in
  tiny) CONFIG_FILE=configs/tiny.yaml ;;
  1b) CONFIG_FILE=bench/configs/decode_1b.yaml ;;
  *) [[ -f $CONFIG ]] || { echo "serve_replicas_bench.sh: no config $CONFIG" >&2; exit 2; }; CONFIG_FILE=$CONFIG ;;
esac
for v in REQUESTS TOKENS PROMPT_LEN MAX_BATCH REPEAT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "serve_replicas_bench.sh: --${v,,} wants a positive integer" >&2; exit 2; }
done

if [[ -z "${BUILD_DIR:-}" ]]; then
  if [[ -f build-cpu/CMakeCache.txt ]]; then BUILD_DIR=build-cpu; else BUILD_DIR=build; fi
fi
[[ -f "$BUILD_DIR/CMakeCache.txt" ]] || BUILD_DIR=$BUILD_DIR JOBS=${JOBS:-2} scripts/setup.sh
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" --target glmrt >/dev/null
GLMRT=$BUILD_DIR/glmrt
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}

BENCH_NAME=serve_replicas_bench QUIET_WAIT_S=${QUIET_WAIT_S:-60}
source bench/quiet.sh

TMP=$(mktemp -d /tmp/glmrt-serve-bench.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

"$GLMRT" init --config "$CONFIG_FILE" --output "$TMP/weights.safetensors" --seed 7 >/dev/null

# start LABEL THREADS [mpiexec args --]: starts a server, sets PORT and appends its pid to PIDS.
start() {
  local label=$1 threads=$2 launcher=()
  shift 2
  if (($#)); then launcher=("$@"); fi
  local log=$TMP/$label.log
  OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "${launcher[@]}" "$GLMRT" serve \
    --config "$CONFIG_FILE" --weights "$TMP/weights.safetensors" --port 0 --max-batch "$MAX_BATCH" \
    --max-rows "$MAX_BATCH" 2>"$log" >/dev/null &
  PIDS+=($!)
  PORT=""
  for ((i = 0; i < 1200; i++)); do
    PORT=$(grep -o 'listening on http://127\.0\.0\.1:[0-9]*' "$log" | sed 's/.*://') || true
    [[ -n $PORT ]] && return
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$log" >&2; echo "serve_replicas_bench.sh: $label exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "serve_replicas_bench.sh: $label did not listen within 120 s" >&2
  exit 1
}

wait_quiet
start routed 1 mpiexec -n 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS --
ROUTED=$PORT
start independent-a 1
IND_A=$PORT
start independent-b 1
IND_B=$PORT
start one 2
ONE=$PORT
echo "servers: routed :$ROUTED, independent :$IND_A :$IND_B, one replica :$ONE" >&2

/usr/bin/python3 - "$CONFIG_FILE" "$REQUESTS" "$TOKENS" "$PROMPT_LEN" "$REPEAT" \
  "$ROUTED" "$IND_A,$IND_B" "$ONE" "$TMP" <<'PY'
import json, random, statistics, sys, threading, time, urllib.request
import yaml
cfg, N, G, P, R = sys.argv[1], *map(int, sys.argv[2:6])
setups = {"routed": [int(sys.argv[6])], "independent": [int(p) for p in sys.argv[7].split(",")],
          "one replica": [int(sys.argv[8])]}
tmp = sys.argv[9]
tok = yaml.safe_load(open(cfg))["tokens"]
top = min(v for k, v in tok.items() if k != "pad")
rng = random.Random(11)
bodies = [json.dumps({"prompt_ids": [rng.randrange(1, top) for _ in range(P - 1)] + [tok["gMASK"]],
                      "sampling_strategy": "BaseStrategy", "seed": 1000 + i, "temperature": 1.0,
                      "topk": 0, "topp": 1.0, "out_seq_length": P + 1 + G, "min_gen_length": G}).encode()
          for i in range(N)]

def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())

def round_of(ports):
    out = [None] * N
    def worker(i):
        out[i] = post(ports[i % len(ports)], bodies[i])
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
    t0 = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    wall = time.perf_counter() - t0
    bad = [i for i, o in enumerate(out) if o is None or len(o["spans"][0]) != G]
    assert not bad, f"requests {bad[:5]} did not generate {G} tokens: {out[bad[0]] if out[bad[0]] else None}"
    return wall, [o["spans"] for o in out]

for name, ports in setups.items():  # warm-up: one request each
    for p in ports: post(p, bodies[0])
walls = {name: [] for name in setups}
answers = []  # every round's answers, all setups
for r in range(R):
    for name, ports in setups.items():
        wall, spans = round_of(ports)
        walls[name].append(wall)
        answers.append(spans)
# Requests answered the same in every round of every setup.
same = sum(all(a[i] == answers[0][i] for a in answers) for i in range(N))
tokens = N * G
rate = {n: tokens / statistics.median(w) for n, w in walls.items()}
print(f"\n{N} concurrent requests x {G} generated tokens ({cfg}, prompts of {P} tokens), "
      f"median of {R} rounds; tokens/s per round in brackets")
print("\n| setup | tokens/s | rounds | vs independent |")
print("| --- | --- | --- | --- |")
for n, w in walls.items():
    per = " ".join(f"{tokens / x:.0f}" for x in w)
    print(f"| {n} | {rate[n]:.0f} | {per} | {rate[n] / rate['independent']:.2f}x |")
print(f"\nrequests answered the same in all {len(answers)} runs: {same} of {N}")
PY
