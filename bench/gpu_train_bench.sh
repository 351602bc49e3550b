#!/usr/bin/env bash
# Training step on one GPU: glmrt (bench/train_step_bench --device cuda) against PyTorch
# (bench/torch_train_step.py --device cuda, torch.autocast bf16, fused scaled_dot_product_attention)
# on the same GLM (bench/configs/train_bench_gpu.yaml) in the same run; prints a table last.
#
# Usage: bench/gpu_train_bench.sh [--build DIR (default build)] [--steps N (default 3)]
#                                 [--precision bf16|fp32 (default bf16)] [--out DIR]
# The python3 on PATH must hold a CUDA PyTorch 2.x (the GPU machines' image does).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=build steps=3 precision=bf16 out=""
while (($#)); do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "gpu_train_bench: unknown option $1" >&2; exit 2 ;;
  esac
done
config=bench/configs/train_bench_gpu.yaml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== glmrt" >&2
timeout -k 5 300 "$build/bench/train_step_bench" --config "$config" --steps "$steps" \
  --precision "$precision" --device cuda --gemm-size 8192 --json >"$tmp/glmrt.json"
echo "== pytorch" >&2
timeout -k 5 300 python3 bench/torch_train_step.py --config "$config" --steps "$steps" \
  --precision "$precision" --device cuda --gemm-size 8192 --threads 8 >"$tmp/torch.json"
if [[ -n $out ]]; then cp "$tmp/glmrt.json" "$out/train_glmrt.json"; cp "$tmp/torch.json" "$out/train_torch.json"; fi

python3 - "$tmp/glmrt.json" "$tmp/torch.json" <<'PY'
import json, sys
g = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
t = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
peak = g["peak_used_gflops"]
print(f"\ntraining step, {g['precision']}, {t.get('device', '?')}: {g['tokens_per_step']} tokens, "
      f"{g['gflop_per_step']:.0f} GFLOP per step; glmrt GEMM {g['gemm_size']}^3 {peak / 1e3:.0f} TFLOP/s, "
      f"torch matmul {t['torch_gemm_gflops'] / 1e3:.0f} TFLOP/s")
print(f"{'':8} {'s/step':>8} {'tokens/s':>10} {'TFLOP/s':>9} {'MFU':>6} {'loss first/last':>18}")
for name, r in (("glmrt", g), ("pytorch", t)):
    print(f"{name:8} {r['seconds_per_step']:8.3f} {r['tokens_per_s']:10.0f} {r['gflops'] / 1e3:9.1f} "
          f"{r['gflops'] / peak:6.1%} {r['loss_warmup']:8.4f}/{r['loss_last']:.4f}")
print(f"glmrt / pytorch: {t['seconds_per_step'] / g['seconds_per_step']:.2f}x")
PY
