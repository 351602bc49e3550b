#!/usr/bin/env bash
# Decoding on one GPU: `glmrt generate --device cuda` against PyTorch (bench/torch_generate.py
# --device cuda: eager, KV-cached, fp32 without TF32 or bf16) on the same seeded weights, the
# same prompts and the same greedy tokens, against the memory floor measured in the same run.
# Per config × precision (fp32, bf16) × batch: P-token prompts ending with [gMASK] (context =
# prompt + sop), G generated tokens per query (--min-gen-length G on both sides, so every query
# generates exactly G). One run per side and case, nothing repeated; prints a table last:
#   prefill        = the forward of every row's whole context + the first token;
#   decode ms/step = the mean over the G - 1 decoding steps (one token per row), tokens/s =
#                    batch / that;
#   floor per step = (bytes of all weights in the dtype + the KV cache read in the step, averaged
#                    over the steps: 2 · layers · tokens in cache · hidden · dtype bytes · batch)
#                    / the copy bandwidth (a ≥ 2 GiB device-to-device copy, bytes read + written,
#                    torch_generate.py --device-ceilings, measured once in the same run);
#   tokens equal   = the greedy tokens agree on every row (else the shortest matching prefix).
# The header line also gives the bf16 torch.matmul 8192³ rate (for reference; no column uses it).
#
# Usage: bench/gpu_generate_bench.sh [--build DIR (default build)] [--configs 1b]
#          [--precision bf16|fp32|both (default both)] [--batches 1,16] [--tokens G (default 64)]
#          [--prompt-len P (default 128)] [--device cuda|cpu (default cuda)] [--out DIR]
#   configs: tiny (configs/tiny.yaml), 1b (bench/configs/decode_1b.yaml) or a YAML path;
#   --device cpu runs the same flow on the CPU (glmrt without --device, PyTorch on the CPU, no
#   GEMM rate): a plumbing check for machines without a GPU, not a benchmark;
#   --out DIR: also writes decode_results.jsonl (every run: timings, tokens) and
#   decode_ceilings.json there;
#   --quantized 8,4 (default; "" for none): with bf16, glmrt also runs with
#   --quantization-bit-width 8 and 4 (rows int8 / int4: floor from the quantized weight bytes,
#   speed-up against glmrt bf16, tokens against glmrt bf16's; with 4, an odd FFN width is
#   rounded up to even for every run, as INT4 packs two columns per byte: the 1b model's 5461 → 5462).
# Python: $PYTHON, else python3 from PATH with --device cuda (the GPU image's CUDA PyTorch 2.x),
# /usr/bin/python3 (Debian's CPU PyTorch) with --device cpu.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=build configs=1b precisions="fp32 bf16" batches=1,16 tokens=64 prompt_len=128 device=cuda out="" quantized=8,4
while (($#)); do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    --precision) [[ $2 == both ]] && precisions="fp32 bf16" || precisions=$2; shift 2 ;;
    --batches) batches=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --prompt-len) prompt_len=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --quantized) quantized=$2; shift 2 ;;
    -h | --help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "gpu_generate_bench: unknown option $1" >&2; exit 2 ;;
  esac
done
for p in $precisions; do
  [[ $p == fp32 || $p == bf16 ]] || { echo "gpu_generate_bench: --precision $p: fp32, bf16 or both" >&2; exit 2; }
done
case "$device" in
  cuda) py=${PYTHON:-python3} ;;
  cpu) py=${PYTHON:-/usr/bin/python3} ;;
  *) echo "gpu_generate_bench: --device $device: cuda or cpu" >&2; exit 2 ;;
esac
((tokens >= 2)) || { echo "gpu_generate_bench: --tokens must be at least 2 (one decoding step)" >&2; exit 2; }
glmrt=$build/glmrt
[[ -x $glmrt ]] || { echo "gpu_generate_bench: no $glmrt (build the glmrt target first)" >&2; exit 2; }
# An MPI singleton as root (the GPU machines run commands as root), as scripts/gpu-check.sh.
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
  export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
fi

config_file() {
  case "$1" in
    tiny) echo configs/tiny.yaml ;;
    1b) echo bench/configs/decode_1b.yaml ;;
    *) if [[ -f $1 ]]; then echo "$1"; else echo "gpu_generate_bench: unknown config $1" >&2; return 2; fi ;;
  esac
}

start=$(date +%s)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu_generate_bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
results=$tmp/results.jsonl
: >"$results"
failed=0

# One run of one side; appends {"side", "config", "config_file", "precision", "batch", "wall",
# "rc", timings, outputs} to $results and carries on after a failure (recorded, shown in the table).
run_side() {  # side name cfg prec batch outfile -- command...
  local side=$1 name=$2 cfg=$3 prec=$4 batch=$5 outf=$6 rc=0 t0 t1
  shift 7
  t0=$(date +%s.%N)
  timeout -k 5 300 "$@" >"$outf" 2>"$outf.err" || rc=$?
  t1=$(date +%s.%N)
  if ((rc)); then
    echo "gpu_generate_bench: $side $name $prec batch $batch failed (exit $rc):" >&2
    tail -n 20 "$outf.err" | sed 's/^/  /' >&2
    failed=1
  fi
  "$py" - "$side" "$name" "$cfg" "$prec" "$batch" "$outf" "$t0" "$t1" "$rc" >>"$results" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from bench_common import read_run
side, name, cfg, prec, batch, out = sys.argv[1:7]
t0, t1, rc = float(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9])
r = {"side": side, "config": name, "config_file": cfg, "precision": prec, "batch": int(batch),
     "wall": t1 - t0, "rc": rc}
try:
    r.update(read_run(side, out))
except Exception as e:  # a failed or cut run: the table says so
    r["parse_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(r))
PY
}

# ---- the device's ceilings (once) -------------------------------------------------------------
echo "== device ceilings ($device: bf16 GEMM rate, copy bandwidth)" >&2
timeout -k 5 120 "$py" bench/torch_generate.py --device-ceilings --device "$device" >"$tmp/ceilings.json"
cat "$tmp/ceilings.json" >&2

# ---- runs --------------------------------------------------------------------------------------
threads=()
[[ $device == cpu ]] && threads=(--threads "$(nproc)")
for name in ${configs//,/ }; do
  cfg=$(config_file "$name")
  if [[ ,$quantized, == *,4,* ]]; then
    # INT4 packs two columns per byte: an odd FFN width (the 1b model's 5461) is rounded up to
    # even, for every run of this config (both sides read the same file).
    "$py" bench/bench_common.py even-ffn "$cfg" "$tmp/$name.yaml"
    cfg=$tmp/$name.yaml
  fi
  weights=$tmp/$name.safetensors
  echo "== $name: weights ($cfg)" >&2
  timeout -k 5 300 "$py" bench/torch_generate.py --config "$cfg" --init-weights "$weights" --seed 1234 2>&1 |
    sed 's/^/  /' >&2
  # Prompts: P-1 seeded random ids below every special id, then [gMASK] (as bench/generate_bench.sh);
  # query r of the batch-B file is the same for every B.
  "$py" bench/bench_common.py prompts "$cfg" "$prompt_len" "$batches" "$tmp/$name"
  for prec in $precisions; do
    dt=$([[ $prec == fp32 ]] && echo f32 || echo bf16)
    for batch in ${batches//,/ }; do
      prompts=$tmp/$name.b$batch.txt
      glmrt_device=()
      [[ $device == cuda ]] && glmrt_device=(--device cuda)
      echo "== glmrt $name $prec batch $batch ($prompt_len-token prompts, $tokens tokens, $device)" >&2
      run_side glmrt "$name" "$cfg" "$prec" "$batch" "$tmp/$name.$prec.b$batch.glmrt" -- \
        "$glmrt" generate --config "$cfg" --weights "$weights" --input-file "$prompts" \
        --input-format ids --strategy greedy --out-seq-length $((prompt_len + 1 + tokens)) \
        --min-gen-length "$tokens" --max-batch "$batch" --max-rows "$batch" \
        --cache-length $((prompt_len + 1 + tokens)) --dtype "$dt" --json --timing \
        "${threads[@]}" "${glmrt_device[@]}"
      grep -E '^glmrt generate' "$tmp/$name.$prec.b$batch.glmrt.err" | sed 's/^/  /' >&2 || true
      echo "== PyTorch $name $prec batch $batch" >&2
      run_side pytorch "$name" "$cfg" "$prec" "$batch" "$tmp/$name.$prec.b$batch.torch" -- \
        "$py" bench/torch_generate.py --config "$cfg" --weights "$weights" --prompts "$prompts" \
        --tokens "$tokens" --precision "$prec" --device "$device" "${threads[@]}"
      sed 's/^/  /' "$tmp/$name.$prec.b$batch.torch.err" >&2
      # bf16 with weight-only quantization (glmrt only: PyTorch has no such path here).
      [[ $prec == bf16 ]] || continue
      for bits in ${quantized//,/ }; do
        echo "== glmrt $name bf16 + int$bits weights, batch $batch" >&2
        run_side glmrt "$name" "$cfg" "int$bits" "$batch" "$tmp/$name.int$bits.b$batch.glmrt" -- \
          "$glmrt" generate --config "$cfg" --weights "$weights" --input-file "$prompts" \
          --input-format ids --strategy greedy --out-seq-length $((prompt_len + 1 + tokens)) \
          --min-gen-length "$tokens" --max-batch "$batch" --max-rows "$batch" \
          --cache-length $((prompt_len + 1 + tokens)) --dtype bf16 --json --timing \
          --quantization-bit-width "$bits" "${threads[@]}" "${glmrt_device[@]}"
      done
    done
  done
  rm -f "$weights"
done
if [[ -n $out ]]; then
  mkdir -p "$out"
  cp "$results" "$out/decode_results.jsonl"
  cp "$tmp/ceilings.json" "$out/decode_ceilings.json"
fi

# ---- the table (last) ------------------------------------------------------------------------
"$py" - "$results" "$tmp/ceilings.json" "$tokens" "$prompt_len" "$device" "$(($(date +%s) - start))" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from bench_common import decode_floor, markdown_table, model_numbers, token_agreement

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ceil = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
G, P, device, wall = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
bw = ceil["copy_gbs"] * 1e9
by = {(r["side"], r["config"], r["precision"], r["batch"]): r for r in rows}
S = P + 1  # context: prompt + sop


def failed(r):
    if r is None:
        return "missing"
    if r["rc"] or "parse_error" in r or "decode_ms_per_step" not in r:
        return f"FAILED (exit {r['rc']})" if r["rc"] else "FAILED (no result)"
    return None


hdr = ["config", "dtype", "batch", "prefill ms glmrt / torch", "decode ms/step glmrt / torch",
       "tokens/s glmrt / torch", "glmrt / torch decode speed-up", "glmrt ÷ floor", "torch ÷ floor",
       "floor ms", "tokens equal"]
table, notes = [], []
for name in dict.fromkeys(r["config"] for r in rows):
    cfg = next(r["config_file"] for r in rows if r["config"] == name)
    mn = model_numbers(cfg)
    for prec in ("fp32", "bf16", "int8", "int4"):
        for batch in sorted({r["batch"] for r in rows if r["config"] == name and r["precision"] == prec}):
            g, t = by.get(("glmrt", name, prec, batch)), by.get(("pytorch", name, prec, batch))
            bits = int(prec[3:]) if prec.startswith("int") else 0
            if bits:  # compared with glmrt bf16 (the same model unquantized), not with PyTorch
                t = by.get(("glmrt", name, "bf16", batch))
            floor = decode_floor(mn, S, G, 4 if prec == "fp32" else 2, batch, bw, bits)
            cells = {}
            for side, r in (("g", g), ("t", t)):
                bad = failed(r)
                if bad:
                    notes.append(f"{'glmrt' if side == 'g' else 'PyTorch'} {name} {prec} batch {batch}: {bad}")
                    cells[side] = None
                else:
                    cells[side] = (r["prefill_seconds"], r["decode_ms_per_step"] / 1e3)
            f2 = lambda x, fmt: "—" if x is None else fmt.format(x)
            gp, gd = cells["g"] or (None, None)
            tp, td = cells["t"] or (None, None)
            eq = "—"
            if cells["g"] and cells["t"]:
                to = t["outputs"]
                if bits:
                    to = [s[0] if s else [] for s in to]
                eq = token_agreement([s[0] if s else [] for s in g["outputs"]], to, G, batch)
                if any(len(s) != 1 for s in g["outputs"]):
                    notes.append(f"warning: {name} {prec} batch {batch}: glmrt filled more than one blank")
                lens = {len(s[0]) if s else 0 for s in g["outputs"]} | {len(x) for x in to}
                if lens != {G}:
                    notes.append(f"warning: {name} {prec} batch {batch}: generated lengths {sorted(lens)}, not {G}")
            table.append([name, prec, str(batch),
                          f"{f2(gp and 1e3 * gp, '{:.2f}')} / {f2(tp and 1e3 * tp, '{:.2f}')}",
                          f"{f2(gd and 1e3 * gd, '{:.3f}')} / {f2(td and 1e3 * td, '{:.3f}')}",
                          f"{f2(gd and batch / gd, '{:.1f}')} / {f2(td and batch / td, '{:.1f}')}",
                          f2(td / gd if gd and td else None, "{:.2f}×"),
                          f2(gd and gd / floor, "{:.2f}×"), f2(td / floor if td and not bits else None, "{:.2f}×"),
                          f"{1e3 * floor:.3f}", eq])
gemm = (f"{ceil['bf16_gemm_tflops']:.0f} TFLOP/s (torch.matmul {ceil['gemm_size']}³)"
        if ceil.get("bf16_gemm_tflops") else "n/a")
print()
print(f"decode benchmark on {ceil['device']}: copy bandwidth {ceil['copy_gbs']:.0f} GB/s (copy of "
      f"{ceil['copy_bytes'] / 2 ** 30:.2f} GiB, read + written; best {ceil['copy_gbs_best']:.0f}), "
      f"bf16 GEMM {gemm}, torch {ceil['torch']}")
print(f"{P}-token prompts + sop, {G} greedy tokens per query (prefill → token 1, then {G - 1} "
      f"decoding steps); glmrt generate{' --device cuda' if device == 'cuda' else ''} vs "
      f"bench/torch_generate.py --device {device}")
print("\n".join(markdown_table(hdr, table)))
print()
for n in notes:
    print(n)
print("int8 / int4 rows: bf16 with --quantization-bit-width 8 / 4, their 'torch' columns are glmrt "
      "bf16's (the same model unquantized) and their floor counts the quantized weight bytes.")
print("floor = (all weights in the dtype + the KV cache read per step, averaged over the steps) / "
      "copy bandwidth; speed-up = torch decode step / glmrt decode step; tokens/s = batch / step. "
      "glmrt's prefill is its first forward of the process (glmrt generate has no warm-up); "
      "PyTorch's follows an untimed warm-up ("
      + ("a prefill and a decoding step of the same shapes)." if device == "cuda"
         else "on the CPU: two tokens of one row)."))
print(f"Wall time of this benchmark: {wall // 60} min {wall % 60} s.")
PY
exit "$failed"
