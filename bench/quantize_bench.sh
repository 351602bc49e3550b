#!/usr/bin/env bash
# Pre-quantized checkpoints (`glmrt quantize`, GLM130B.md §6) on the 1b model
# (bench/configs/decode_1b.yaml, FFN rounded up to even; fp16 weights, as released), in one run:
#  1. producing INT8 / INT4 weights: `glmrt quantize` (streams one tensor at a time, rows on every
#     core) against the released way in PyTorch (bench/torch_quantize.py: the whole model read
#     into memory, then quantized): wall time and peak resident memory of each process;
#  2. starting a generation from them: `glmrt generate --weights W --quantization-bit-width B`
#     (quantizes as it loads) against `glmrt generate --load Q` (reads the pre-quantized files):
#     wall time to the first answer and peak resident memory; both must answer the same tokens.
#
#   bench/quantize_bench.sh [--threads T] [--configs 1b] [--bits 8,4]
#
# Environment: BUILD_DIR (default build-cpu when configured, else build), JOBS, PYTHON (default
# /usr/bin/python3), QUIET_WAIT_S (default 120), KEEP_TMP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=$(nproc)
CONFIGS="1b"
BITS="8,4"
while (($#)); do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --configs) CONFIGS=$2; shift 2 ;;
    --bits) BITS=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "quantize_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-/usr/bin/python3}
start=$(date +%s)

config_file() {
  case "$1" in
    tiny) echo configs/tiny.yaml ;;
    1b) echo bench/configs/decode_1b.yaml ;;
    *) [[ -f $1 ]] && echo "$1" || { echo "quantize_bench.sh: unknown config $1" >&2; exit 2; } ;;
  esac
}

if [[ -z "${BUILD_DIR:-}" ]]; then
  if [[ -f build-cpu/CMakeCache.txt ]]; then BUILD_DIR=build-cpu; else BUILD_DIR=build; fi
fi
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  BUILD_DIR=$BUILD_DIR JOBS=${JOBS:-2} scripts/setup.sh
fi
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" --target glmrt >/dev/null
GLMRT=$BUILD_DIR/glmrt

BENCH_NAME=quantize_bench QUIET_WAIT_S=${QUIET_WAIT_S:-120}
source bench/quiet.sh

TMP=$(mktemp -d "${TMPDIR:-/tmp}/quantize_bench.XXXXXX")
[[ -n "${KEEP_TMP:-}" ]] && echo "quantize_bench: files in $TMP" >&2 || trap 'rm -rf "$TMP"' EXIT
RESULTS=$TMP/results.jsonl
: > "$RESULTS"

# Runs a command under /usr/bin/time; appends {"case", "wall_s", "max_rss_mb", "out"} to RESULTS.
measure() {
  local case=$1 out=$TMP/$1
  shift
  echo "== $case" >&2
  wait_quiet
  /usr/bin/time -f "%e %M" -o "$out.time" env OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" \
    "$@" > "$out" 2> "$out.err" || { echo "quantize_bench: $case failed:" >&2; tail -n 20 "$out.err" >&2; exit 1; }
  read -r wall rss < "$out.time"
  printf '{"case": "%s", "wall_s": %s, "max_rss_mb": %s, "out": "%s"}\n' "$case" "$wall" \
    "$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')" "$out" >> "$RESULTS"
}

for name in ${CONFIGS//,/ }; do
  cfg=$TMP/$name.yaml
  "$PYTHON" bench/bench_common.py even-ffn "$(config_file "$name")" "$cfg"
  weights=$TMP/$name.safetensors
  echo "== $name: fp16 weights ($cfg)" >&2
  "$GLMRT" init --config "$cfg" --output "$weights" --dtype f16 --seed 1234 >&2
  "$PYTHON" bench/bench_common.py prompts "$cfg" 64 1 "$TMP/$name"
  gen=(generate --config "$cfg" --input-file "$TMP/$name.b1.txt" --input-format ids --strategy greedy
       --out-seq-length 72 --min-gen-length 4 --max-batch 1 --cache-length 72 --threads "$THREADS"
       --dtype bf16 --json)
  for bits in ${BITS//,/ }; do
    measure "$name.torch_quantize.int$bits" "$PYTHON" bench/torch_quantize.py "$weights" "$bits" \
      "$TMP/$name.torch.int$bits.safetensors" --threads "$THREADS"
    rm -f "$TMP/$name.torch.int$bits.safetensors"
    measure "$name.glmrt_quantize.int$bits" "$GLMRT" quantize --config "$cfg" --weights "$weights" \
      --to "$TMP/$name.q$bits" --quantization-bit-width "$bits" --tensor 1 --pipeline 1
    measure "$name.generate_load_time.int$bits" "$GLMRT" "${gen[@]}" --weights "$weights" --quantization-bit-width "$bits"
    measure "$name.generate_prequantized.int$bits" "$GLMRT" "${gen[@]}" --load "$TMP/$name.q$bits"
    du -sb "$TMP/$name.q$bits" | awk -v c="$name.files.int$bits" '{ printf "{\"case\": \"%s\", \"bytes\": %s}\n", c, $1 }' >> "$RESULTS"
    rm -rf "$TMP/$name.q$bits"
  done
  printf '{"case": "%s.files.fp16", "bytes": %s}\n' "$name" "$(stat -c %s "$weights")" >> "$RESULTS"
  rm -f "$weights"
done

"$PYTHON" - "$RESULTS" "$THREADS" "$(($(date +%s) - start))" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from bench_common import markdown_table

rows = {r["case"]: r for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip())}
T, wall = int(sys.argv[2]), int(sys.argv[3])
names = list(dict.fromkeys(c.split(".")[0] for c in rows))
print(f"quantize_bench: {T} threads, {wall} s")
table = []
for name in names:
    src = rows[f"{name}.files.fp16"]["bytes"]
    for bits in sorted({int(c.rsplit("int", 1)[1]) for c in rows if c.startswith(name + ".glmrt_quantize")}, reverse=True):
        t, g = rows[f"{name}.torch_quantize.int{bits}"], rows[f"{name}.glmrt_quantize.int{bits}"]
        lt, pq = rows[f"{name}.generate_load_time.int{bits}"], rows[f"{name}.generate_prequantized.int{bits}"]
        same = [l for l in open(lt["out"]) if l.strip()] == [l for l in open(pq["out"]) if l.strip()]
        table.append([name, f"int{bits}", f"{src / 1e6:.0f} → {rows[f'{name}.files.int{bits}']['bytes'] / 1e6:.0f}",
                      f"{t['wall_s']:.1f} s, {t['max_rss_mb']:.0f} MB", f"{g['wall_s']:.1f} s, {g['max_rss_mb']:.0f} MB",
                      f"{t['wall_s'] / g['wall_s']:.1f}× / {t['max_rss_mb'] / g['max_rss_mb']:.1f}×",
                      f"{lt['wall_s']:.1f} s, {lt['max_rss_mb']:.0f} MB", f"{pq['wall_s']:.1f} s, {pq['max_rss_mb']:.0f} MB",
                      "yes" if same else "NO"])
print("\n".join(markdown_table(
    ["config", "bits", "files MB (fp16 → quantized)", "PyTorch, released way: time, peak RSS",
     "glmrt quantize: time, peak RSS", "glmrt ÷: time / memory", "generate, quantize at load",
     "generate --load pre-quantized", "same tokens"], table)))
PY
