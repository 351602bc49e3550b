#!/usr/bin/env bash
# Where a GPU decoding step goes: `glmrt generate --device cuda` on the 1b decoding model, once
# plainly (the mean wall time of G - 1 decoding steps, --timing) and once under Nsight Compute
# (`ncu`, clocks left as they are), which times every kernel of S decoding steps on its own
# (gpu__time_duration; the steps after two unprofiled ones, through GLMRT_CUDA_PROFILE_STEPS and
# `ncu --profile-from-start off`: ncu takes ~0.1 s per kernel). Per precision and batch, prints
# the kernels grouped by name: launches per step, µs per step, µs per launch, and the kernel time
# of a step against its wall time (the rest is launch gaps and host work).
#
# Usage: bench/gpu_decode_profile.sh [--build DIR (default build)] [--config 1b|YAML]
#          [--precision fp32|bf16|both (default both)] [--batches 1,16 (default 1)]
#          [--tokens G (default 32)] [--steps S (default 1)] [--prompt-len P (default 128)]
#          [--out DIR]
#   --out DIR: also keeps ncu's raw per-launch CSV (decode_profile_<prec>_b<batch>.csv) there.
# Needs a GPU, ncu on PATH or under /opt/nvidia or /usr/local/cuda, and a CUDA PyTorch python3
# (for the seeded weights; $PYTHON overrides).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=build config=1b precisions="fp32 bf16" batches=1 tokens=32 steps=1 prompt_len=128 out=""
while (($#)); do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --precision) [[ $2 == both ]] && precisions="fp32 bf16" || precisions=$2; shift 2 ;;
    --batches) batches=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --prompt-len) prompt_len=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_decode_profile: unknown option $1" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-python3}
case "$config" in
  1b) cfg=bench/configs/decode_1b.yaml ;;
  tiny) cfg=configs/tiny.yaml ;;
  *) cfg=$config ;;
esac
[[ -f $cfg ]] || { echo "gpu_decode_profile: no config $cfg" >&2; exit 2; }
((tokens >= 2 && steps >= 1)) || { echo "gpu_decode_profile: --tokens must be at least 2, --steps at least 1" >&2; exit 2; }
glmrt=$build/glmrt
[[ -x $glmrt ]] || { echo "gpu_decode_profile: no $glmrt" >&2; exit 2; }
ncu=$(command -v ncu || true)
if [[ -z $ncu ]]; then
  ncu=$(find /usr/local/cuda/bin /opt/nvidia /usr/local -name ncu -type f -perm -u+x 2>/dev/null | head -1 || true)
fi
[[ -n $ncu ]] || { echo "gpu_decode_profile: ncu not found" >&2; exit 2; }
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
  export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu_decode_profile.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
weights=$tmp/w.safetensors
timeout -k 5 300 "$py" bench/torch_generate.py --config "$cfg" --init-weights "$weights" --seed 1234 >&2
"$py" bench/bench_common.py prompts "$cfg" "$prompt_len" "$batches" "$tmp/p"

for batch in ${batches//,/ }; do
for prec in $precisions; do
  prompts=$tmp/p.b$batch.txt
  dt=$([[ $prec == fp32 ]] && echo f32 || echo bf16)
  run_args() {  # G: tokens per query
    echo generate --config "$cfg" --weights "$weights" --input-file "$prompts" --input-format ids \
      --strategy greedy --out-seq-length $((prompt_len + 1 + $1)) --min-gen-length "$1" \
      --max-batch "$batch" --max-rows "$batch" --cache-length $((prompt_len + 1 + $1)) \
      --dtype "$dt" --json --timing --device cuda
  }
  echo "== $prec batch $batch: plain run" >&2
  # shellcheck disable=SC2046  # the words of run_args hold no spaces (paths under mktemp)
  timeout -k 5 300 "$glmrt" $(run_args "$tokens") >"$tmp/plain.out" 2>"$tmp/plain.err" ||
    { cat "$tmp/plain.err" >&2; exit 1; }
  grep -h '^glmrt generate timing' "$tmp/plain.err" >"$tmp/plain.timing" || true
  echo "== $prec batch $batch: under ncu" >&2
  csv=$tmp/ncu_${prec}_b$batch.csv
  # shellcheck disable=SC2046
  GLMRT_CUDA_PROFILE_STEPS=3-$((2 + steps)) timeout -k 5 400 "$ncu" --clock-control none \
    --profile-from-start off --metrics gpu__time_duration.sum --csv --page raw --log-file "$csv" \
    "$glmrt" $(run_args $((steps + 3))) >"$tmp/ncu.out" 2>"$tmp/ncu.err" ||
    { tail -20 "$tmp/ncu.err" >&2; exit 1; }
  [[ -n $out ]] && { mkdir -p "$out"; cp "$csv" "$out/decode_profile_${prec}_b$batch.csv"; }
  "$py" - "$csv" "$tmp/plain.timing" "$steps" "$prec" "$batch" <<'PY'
import csv, json, re, sys
from collections import OrderedDict

path, timing_path, S, prec, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
lines = [l for l in open(path) if l.startswith('"')]
rows = list(csv.DictReader(lines))
if not rows:
    sys.exit(f"gpu_decode_profile: no kernels in {path}")
metric, name_key = "gpu__time_duration.sum", "Kernel Name"
unit = rows[0][metric]  # the row under the header names the units
scale = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(unit.strip(), 1.0)
rows = [r for r in rows[1:] if r.get(metric, "").replace(",", "").replace(".", "").isdigit()]
dur = lambda r: float(r[metric].replace(",", "")) * scale  # ns


def short(name):
    name = name.replace("(anonymous namespace)::", "").replace("glmrt::cuda::", "")
    name = re.sub(r"^void ", "", name)
    depth, out = 0, []
    for ch in name:  # cut the argument list (the first '(' outside template brackets)
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            break
        out.append(ch)
    return "".join(out)[:70]

names = [r[name_key] for r in rows]
# The capture holds S decoding steps. A forward of the cached model starts with the token
# embedding (the gather of the logit rows is the same kernel, later in the forward): a step starts
# at every other embedding launch.
emb = [i for i, n in enumerate(names) if "embedding" in n.lower() and "backward" not in n.lower()]
starts = emb[0::2]
if len(emb) != 2 * S or not starts or starts[0] != 0:
    sys.exit(f"gpu_decode_profile: {len(emb)} embedding launches in the capture, expected {2 * S}")
bounds = starts + [len(rows)]
steps = [rows[bounds[i]:bounds[i + 1]] for i in range(S)]
per = OrderedDict()
for st in steps:
    for r in st:
        e = per.setdefault(short(r[name_key]), [0, 0.0])
        e[0] += 1
        e[1] += dur(r)
n = len(steps)
total = sum(e[1] for e in per.values()) / n / 1e3
wall = None
try:
    t = json.loads(open(timing_path).read().split("timing:", 1)[1])
    wall = t["decode_ms_per_step"] * 1e3
except Exception:
    pass
print(f"\n{prec} batch {batch}: {n} decoding steps, {sum(len(s) for s in steps) // n} launches per step")
print(f"{'kernel':70s} {'per step':>8s} {'µs/step':>9s} {'µs each':>8s} {'share':>6s}")
for k, (c, d) in sorted(per.items(), key=lambda kv: -kv[1][1]):
    print(f"{k:70s} {c / n:8.1f} {d / n / 1e3:9.1f} {d / c / 1e3:8.2f} {d / n / 1e3 / total:6.1%}")
print(f"kernel time per step {total:.1f} µs" + (f"; wall time per step {wall:.1f} µs (plain run): "
      f"{wall - total:.1f} µs not in kernels" if wall else ""))
PY
done
done
