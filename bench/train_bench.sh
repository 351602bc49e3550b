#!/usr/bin/env bash
# Training-step benchmark: glmrt vs PyTorch on the same small GLM (bench/configs/train_bench.yaml:
# h 1024, 16 heads, F 2816, 8 layers, vocab 8192, seq 512, 2 micro-batches of 1 row per step),
# same thread count, fp32 and bf16 (PyTorch: bf16 autocast). Builds train_step_bench if needed,
# runs both sides and prints one table last.
#
#   bench/train_bench.sh [--steps N] [--threads T] [--precision fp32|bf16|both] [--profile]
#
# Environment: BUILD_DIR (default: build-cpu when configured, else build, configured and built by
# scripts/setup.sh), JOBS (build jobs, default 2), PYTHON (default /usr/bin/python3, Debian's
# torch), TORCH_BUDGET_S (default 240: PyTorch runs whose warm-up + timed steps would take longer
# are estimated from one layer + head + optimizer, see bench/torch_train_step.py), QUIET_WAIT_S
# (default 180: how long to wait for other processes to leave the CPUs before each run).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=3
THREADS=$(nproc)
PRECISIONS="fp32 bf16"
PROFILE=""
while (($#)); do
  case "$1" in
    --steps) STEPS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --precision) [[ $2 == both ]] && PRECISIONS="fp32 bf16" || PRECISIONS=$2; shift 2 ;;
    --profile) PROFILE="--profile"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "train_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-/usr/bin/python3}
CONFIG=bench/configs/train_bench.yaml
start=$(date +%s)

# ---- build -----------------------------------------------------------------------------------
if [[ -z "${BUILD_DIR:-}" ]]; then
  if [[ -f build-cpu/CMakeCache.txt ]]; then BUILD_DIR=build-cpu; else BUILD_DIR=build; fi
fi
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  BUILD_DIR=$BUILD_DIR JOBS=${JOBS:-2} scripts/setup.sh
fi
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" --target train_step_bench >/dev/null
BENCH=$BUILD_DIR/bench/train_step_bench

# ---- a quiet machine -------------------------------------------------------------------------
BENCH_NAME=train_bench QUIET_WAIT_S=${QUIET_WAIT_S:-180}
source bench/quiet.sh

# ---- runs ------------------------------------------------------------------------------------
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
for prec in $PRECISIONS; do
  echo "== glmrt $prec, $THREADS threads, $STEPS steps" >&2
  wait_quiet
  OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS \
    "$BENCH" --config "$CONFIG" --steps "$STEPS" --threads "$THREADS" --precision "$prec" --json \
    $PROFILE | tail -n 1 >> "$RESULTS"
  echo "== PyTorch $prec, $THREADS threads, $STEPS steps" >&2
  wait_quiet
  "$PYTHON" bench/torch_train_step.py --config "$CONFIG" --steps "$STEPS" --threads "$THREADS" \
    --precision "$prec" --budget-s "${TORCH_BUDGET_S:-240}" | tail -n 1 >> "$RESULTS"
done
echo "" >&2
echo "JSON results:" >&2
sed 's/^/  /' "$RESULTS" >&2

# ---- the table -------------------------------------------------------------------------------
"$PYTHON" - "$RESULTS" "$(($(date +%s) - start))" <<'EOF'
import json, sys
sys.path.insert(0, "bench")
from bench_common import markdown_table

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
wall = int(sys.argv[2])
by = {(r["impl"], r["precision"]): r for r in rows}
targets = {"fp32": 2.0, "bf16": 4.0}
g0 = rows[0]
print()
print(f"Training step, {g0['tokens_per_step']} tokens/step ({g0['micro_batches']} micro-batches "
      f"of seq {g0['seq']}), {g0['gflop_per_step']:.1f} GFLOP/step (model FLOPs), "
      f"{g0['threads']} threads, {g0['steps']} timed steps after 1 warm-up")
hdr = ["precision", "glmrt tokens/s", "PyTorch tokens/s", "glmrt GFLOP/s", "MFU glmrt",
       "MFU PyTorch", "ratio glmrt/PyTorch", "GEMM peak used (MFU denominator)"]
table = []
notes = []
for prec in ("fp32", "bf16"):
    g, t = by.get(("glmrt", prec)), by.get(("pytorch", prec))
    if not g or not t:
        continue
    peak = g["peak_used_gflops"]
    ratio = g["tokens_per_s"] / t["tokens_per_s"]
    met = "met" if ratio >= targets[prec] else "not met"
    peak_name = (f"glmrt sgemm 2048³ {peak:.1f} GFLOP/s" if prec == "fp32"
                 else f"glmrt bf16 gemm 2048³ {peak:.1f} GFLOP/s")
    tt = f"{t['tokens_per_s']:.1f}" + ("*" if t["mode"] == "estimate" else "")
    table.append([prec, f"{g['tokens_per_s']:.1f}", tt, f"{g['gflops']:.1f}",
                  f"{100 * g['mfu']:.1f}%", f"{100 * t['gflops'] / peak:.1f}%",
                  f"{ratio:.2f}× (target ≥{targets[prec]:.0f}×: {met})", peak_name])
    if prec == "bf16":
        notes.append(f"bf16 vs the fp32 sgemm peak ({g['gemm_peak_fp32_gflops']:.1f} GFLOP/s): glmrt "
                     f"{100 * g['mfu_vs_fp32_peak']:.1f}%, PyTorch "
                     f"{100 * t['gflops'] / g['gemm_peak_fp32_gflops']:.1f}%. glmrt's BF16 GEMM path: "
                     f"{g['bf16_gemm_impl']}.")
    if t["mode"] == "estimate":
        notes.append(f"* PyTorch {prec}: estimated from one layer + head + optimizer (head "
                     f"{t['head_s']:.1f} s, layer {t['layer_s']:.1f} s, optimizer "
                     f"{t['optimizer_s']:.2f} s); a full step would take ≈ "
                     f"{t['seconds_per_step']:.0f} s (its bf16 matmul runs at "
                     f"{t['torch_layer_linear_gflops']:.1f} GFLOP/s here).")
    steps = lambda r: ", ".join(f"{x:.2f}" for x in r.get("step_seconds", []))
    notes.append(f"{prec}: s/step glmrt {g['seconds_per_step']:.2f} ({steps(g)}), PyTorch "
                 f"{t['seconds_per_step']:.2f}" + (f" ({steps(t)})" if t["mode"] == "full" else "")
                 + f"; PyTorch's own matmul 2048³ {t['torch_gemm_gflops']:.1f} GFLOP/s.")
    for r, who in ((g, "glmrt"), (t, "PyTorch")):
        if r.get("other_load_cores", 0) > 0.2:
            notes.append(f"warning: other processes used {r['other_load_cores']:.2f} cores during "
                         f"the {who} {prec} run; its figures are low.")
print("\n".join(markdown_table(hdr, table)))
print()
for n in notes:
    print(n)
print("FLOPs: 6·(non-embedding matmul params + h·V)·tokens + 12·s²·h·layers per sequence "
      "(full s×s attention counted, though the prefix/causal mask leaves part of it unused).")
print(f"Wall time of this benchmark: {wall // 60} min {wall % 60} s.")
EOF
