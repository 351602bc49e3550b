#!/usr/bin/env bash
# Weight-only quantized decoding (`glmrt generate --quantization-bit-width 8|4`, GLM130B.md §6)
# against the same model unquantized, in the same run. Per config (default the 1b model,
# bench/configs/decode_1b.yaml: h 2048, 16 layers, ≈ 0.87 B parameters; an odd FFN width is
# rounded up to even, as INT4 packs two columns per byte: 5461 → 5462) in bf16 storage × batch
# (1, 16) × weights (bf16, int8, int4): P-token [gMASK] prompts, G greedy tokens per query
# (--min-gen-length G), each case run R times (--repeat, default 3), bracketed by read-bandwidth
# measurements (bench/read_bandwidth). Reports per case the median decoding step, the speed-up
# over bf16 weights, and the ratio to the memory floor of that case:
#   floor per step = (bytes of the weights as stored: the four linear weights of every layer at
#                     8 or 4 bits plus an fp16 scale per row, everything else bf16; plus the KV
#                     cache read in the step) / read bandwidth (the better of the measurements
#                     just before and just after the run);
# (Quantization quality is not measured here: see tests/test_quantize.cpp.)
#
#   bench/quantized_decode_bench.sh [--threads T] [--tokens G] [--prompt-len P] [--configs 1b]
#                                   [--batches 1,16] [--repeat R]
#
# Environment: BUILD_DIR (default build-cpu when configured, else build), JOBS, PYTHON (default
# /usr/bin/python3), QUIET_WAIT_S (default 120), KEEP_TMP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=$(nproc)
TOKENS=16
PROMPT_LEN=128
CONFIGS="1b"
BATCHES="1,16"
REPEAT=3
while (($#)); do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --tokens) TOKENS=$2; shift 2 ;;
    --prompt-len) PROMPT_LEN=$2; shift 2 ;;
    --configs) CONFIGS=$2; shift 2 ;;
    --batches) BATCHES=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "quantized_decode_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "quantized_decode_bench.sh: --repeat wants a positive integer, got '$REPEAT'" >&2; exit 2; }
PYTHON=${PYTHON:-/usr/bin/python3}
start=$(date +%s)

config_file() {
  case "$1" in
    tiny) echo configs/tiny.yaml ;;
    1b) echo bench/configs/decode_1b.yaml ;;
    *) [[ -f $1 ]] && echo "$1" || { echo "quantized_decode_bench.sh: unknown config $1" >&2; exit 2; } ;;
  esac
}

if [[ -z "${BUILD_DIR:-}" ]]; then
  if [[ -f build-cpu/CMakeCache.txt ]]; then BUILD_DIR=build-cpu; else BUILD_DIR=build; fi
fi
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  BUILD_DIR=$BUILD_DIR JOBS=${JOBS:-2} scripts/setup.sh
fi
cmake --build "$BUILD_DIR" --target help 2>/dev/null | grep read_bandwidth >/dev/null || cmake "$BUILD_DIR" >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" --target glmrt read_bandwidth >/dev/null
GLMRT=$BUILD_DIR/glmrt

BENCH_NAME=quantized_decode_bench QUIET_WAIT_S=${QUIET_WAIT_S:-120}
source bench/quiet.sh

TMP=$(mktemp -d "${TMPDIR:-/tmp}/quantized_decode_bench.XXXXXX")
[[ -n "${KEEP_TMP:-}" ]] && echo "quantized_decode_bench: files in $TMP" >&2 || trap 'rm -rf "$TMP"' EXIT
RESULTS=$TMP/results.jsonl
: > "$RESULTS"

bandwidth_now() {
  OMP_NUM_THREADS=$THREADS "$BUILD_DIR/bench/read_bandwidth" --threads "$THREADS" | tail -n 1 |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["read_gbs"] * 1e9)'
}

for name in ${CONFIGS//,/ }; do
  # INT4 packs two columns per byte: an odd FFN width (the 1b model's 5461) is rounded up to even,
  # for every variant alike.
  cfg=$TMP/$name.yaml
  "$PYTHON" bench/bench_common.py even-ffn "$(config_file "$name")" "$cfg"
  weights=$TMP/$name.safetensors
  echo "== $name: weights ($cfg)" >&2
  "$PYTHON" bench/torch_generate.py --config "$cfg" --init-weights "$weights" --seed 1234 2>&1 | sed 's/^/  /' >&2
  "$PYTHON" bench/bench_common.py prompts "$cfg" "$PROMPT_LEN" "$BATCHES" "$TMP/$name"
  for batch in ${BATCHES//,/ }; do
    for rep in $(seq "$REPEAT"); do
      for bits in 0 8 4; do  # in turn, so that the machine's drift touches every variant alike
        out=$TMP/$name.b$batch.q$bits.r$rep
        echo "== glmrt $name bf16 batch $batch, weights ${bits/#0/bf16} bits, run $rep of $REPEAT" >&2
        wait_quiet
        bw0=$(bandwidth_now)
        env OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" \
          "$GLMRT" generate --config "$cfg" --weights "$weights" --input-file "$TMP/$name.b$batch.txt" \
          --input-format ids --strategy greedy --out-seq-length $((PROMPT_LEN + 1 + TOKENS)) \
          --min-gen-length "$TOKENS" --max-batch "$batch" --max-rows "$batch" \
          --cache-length $((PROMPT_LEN + 1 + TOKENS)) --threads "$THREADS" --dtype bf16 --json --timing \
          --quantization-bit-width "$bits" > "$out" 2> "$out.err" || {
            echo "quantized_decode_bench: $name batch $batch bits $bits failed:" >&2; tail -n 20 "$out.err" >&2; exit 1; }
        bw1=$(bandwidth_now)
        "$PYTHON" - "$name" "$batch" "$bits" "$rep" "$out" "$bw0" "$bw1" >> "$RESULTS" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from bench_common import read_run
name, batch, bits, rep, out, bw0, bw1 = sys.argv[1:8]
r = {"config": name, "config_file": out.rsplit("/", 1)[0] + f"/{name}.yaml", "batch": int(batch),
     "bits": int(bits), "rep": int(rep),
     "bw": max(float(bw0), float(bw1))}
r.update(read_run("glmrt", out))
print(json.dumps(r))
PY
      done
    done
  done
  rm -f "$weights"
done

"$PYTHON" - "$RESULTS" "$TOKENS" "$PROMPT_LEN" "$THREADS" "$(($(date +%s) - start))" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from bench_common import decode_floor, markdown_table, model_numbers, weight_bytes

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
G, P, T, wall = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
S = P + 1
runs = {}
for r in rows:
    runs.setdefault((r["config"], r["batch"], r["bits"]), []).append(r)
hdr = ["config", "batch", "weights", "weight MB", "decode ms/step (median)", "tokens/s",
       "speed-up over bf16", "÷ floor (median)", "÷ floor, all runs", "GB/s"]
table = []
for name in dict.fromkeys(r["config"] for r in rows):
    mn = model_numbers(next(r["config_file"] for r in rows if r["config"] == name))
    for batch in sorted({r["batch"] for r in rows if r["config"] == name}):
        base = None
        for bits in (0, 8, 4):
            rs = runs.get((name, batch, bits))
            if not rs:
                continue
            ratio = lambda r: r["decode_ms_per_step"] / 1e3 / decode_floor(mn, S, G, 2, batch, r["bw"], bits)
            g = sorted(rs, key=ratio)[len(rs) // 2]
            ms = sorted(r["decode_ms_per_step"] for r in rs)[len(rs) // 2]
            if bits == 0:
                base = (ms, g)
            table.append([name, str(batch), "bf16" if bits == 0 else f"int{bits}",
                          f"{weight_bytes(mn, 2, bits) / 1e6:.1f}", f"{ms:.2f}", f"{batch / ms * 1e3:.1f}",
                          f"{base[0] / ms:.2f}×" if base else "-", f"{ratio(g):.2f}×",
                          " / ".join(f"{ratio(r):.2f}" for r in sorted(rs, key=lambda r: r["rep"])),
                          f"{g['bw'] / 1e9:.1f}"])
print(f"quantized_decode_bench: {T} threads, {P}-token prompts + sop, {G} greedy tokens, median of "
      f"{max(r['rep'] for r in rows)} runs per case, {wall} s")
print("\n".join(markdown_table(hdr, table)))
print("The model is seeded random weights with peaked logits (bench/torch_generate.py --init-weights): "
      "its greedy tokens change under any perturbation (fp32 and bf16 already differ at the first "
      "token), so they say nothing of quantization quality; tests/test_quantize.cpp checks that "
      "against the PyTorch reference.")
PY
