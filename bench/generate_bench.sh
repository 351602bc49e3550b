#!/usr/bin/env bash
# Decoding benchmark: `glmrt generate` vs PyTorch (bench/torch_generate.py) on the same GLM, the
# same prompts and the same greedy tokens, against the memory floor and the GEMM peak measured
# in the same run. Per config (configs/tiny.yaml; bench/configs/decode_1b.yaml: h 2048, 16
# layers, ≈ 0.87 B parameters) × precision (fp32, bf16) × batch (1, 16): P-token prompts ending
# with [gMASK] (context = prompt + sop), G generated tokens per query (--min-gen-length G bans the
# end tokens, so every query generates exactly G). It reports the prefill time (the whole context
# of every row + the first token), the decoding time per step (one token per row), and
#   floor per step = (bytes of all weights in that dtype + bytes of the KV cache read in the step:
#                     2 · layers · tokens in cache · hidden · dtype bytes · batch, averaged over
#                     the steps) / read bandwidth (bench/read_bandwidth: a 1 GiB float sum on
#                     all threads, the better of a measurement just before and one just after
#                     the glmrt run, as this machine's bandwidth moves by a third within
#                     minutes; the table also gives the ratio at the best bandwidth of the whole
#                     benchmark, measured before, after and next to every run);
#   % of GEMM peak  = prefill FLOPs (2 · layer matrix params · context tokens + 4 · s² · h ·
#                     layers per row + 2 · h · V per row for the head) / prefill time / the fp32
#                     sgemm rate of a 4096³ torch.matmul (OpenBLAS, the BLAS glmrt uses too);
#   tokens equal    = greedy tokens of glmrt and PyTorch agree on every row (else the shortest
#                     matching prefix over the rows, of G).
# glmrt's bf16 is bf16 storage with fp32 compute; PyTorch's bf16 computes in bf16 (see
# bench/torch_generate.py), so bf16 tokens are expected to diverge after a while. Weights:
# `torch_generate.py --init-weights` (seeded; `glmrt init`'s GLM-130B initialisation makes greedy
# decoding repeat sop forever), written once per config into a temp dir and deleted. At the end
# bench/linear_decode_bench prints glmrt's decode linear kernel against its own bandwidth figure.
#
# Each case runs R times (--repeat, default 3; PyTorch runs in estimate mode once), glmrt and
# PyTorch in turn: this machine's read bandwidth and step times move by 20-30% from one minute to
# the next (other tenants), so one run says little. The table gives the median run of each side
# (glmrt's by its ratio to its own floor) and the range of glmrt's ratios over the R runs.
#
#   bench/generate_bench.sh [--threads T] [--tokens G] [--prompt-len P] [--configs tiny,1b]
#                           [--precision fp32|bf16|both] [--batches 1,16] [--repeat R]
#
# Environment: BUILD_DIR (default build-cpu when configured, else build), JOBS (build jobs,
# default 2), PYTHON (default /usr/bin/python3, Debian's torch), TORCH_BUDGET_S (default 90: a
# PyTorch run predicted to take longer runs in the estimate mode of bench/torch_generate.py —
# prefill estimated from one layer, fewer decoding steps; marked * in the table), QUIET_WAIT_S
# (default 120: how long to wait for other processes to leave the CPUs before each run),
# KEEP_TMP=1 (keep the weights, prompts and raw outputs).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=$(nproc)
TOKENS=16
PROMPT_LEN=128
CONFIGS="tiny,1b"
PRECISIONS="fp32 bf16"
BATCHES="1,16"
REPEAT=3
while (($#)); do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --tokens) TOKENS=$2; shift 2 ;;
    --prompt-len) PROMPT_LEN=$2; shift 2 ;;
    --configs) CONFIGS=$2; shift 2 ;;
    --precision) [[ $2 == both ]] && PRECISIONS="fp32 bf16" || PRECISIONS=$2; shift 2 ;;
    --batches) BATCHES=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
    *) echo "generate_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "generate_bench.sh: --repeat wants a positive integer, got '$REPEAT'" >&2; exit 2; }
PYTHON=${PYTHON:-/usr/bin/python3}
start=$(date +%s)

config_file() {
  case "$1" in
    tiny) echo configs/tiny.yaml ;;
    1b) echo bench/configs/decode_1b.yaml ;;
    *) [[ -f $1 ]] && echo "$1" || { echo "generate_bench.sh: unknown config $1" >&2; exit 2; } ;;
  esac
}

# ---- build -----------------------------------------------------------------------------------
if [[ -z "${BUILD_DIR:-}" ]]; then
  if [[ -f build-cpu/CMakeCache.txt ]]; then BUILD_DIR=build-cpu; else BUILD_DIR=build; fi
fi
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  BUILD_DIR=$BUILD_DIR JOBS=${JOBS:-2} scripts/setup.sh
fi
cmake --build "$BUILD_DIR" --target help 2>/dev/null | grep read_bandwidth >/dev/null || cmake "$BUILD_DIR" >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" --target glmrt linear_decode_bench read_bandwidth >/dev/null
GLMRT=$BUILD_DIR/glmrt
BWBENCH=$BUILD_DIR/bench/linear_decode_bench

# ---- a quiet machine (as bench/train_bench.sh) -----------------------------------------------
BENCH_NAME=generate_bench QUIET_WAIT_S=${QUIET_WAIT_S:-120}
source bench/quiet.sh

TMP=$(mktemp -d "${TMPDIR:-/tmp}/generate_bench.XXXXXX")
[[ -n "${KEEP_TMP:-}" ]] && echo "generate_bench: files in $TMP" >&2 || trap 'rm -rf "$TMP"' EXIT
RESULTS=$TMP/results.jsonl
: > "$RESULTS"

# Read bandwidth now, in bytes/s (bench/read_bandwidth: best of 8 passes over 1 GiB, ~1 s).
bandwidth_now() {
  OMP_NUM_THREADS=$THREADS "$BUILD_DIR/bench/read_bandwidth" --threads "$THREADS" | tail -n 1 |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["read_gbs"] * 1e9)'
}

# One run: records {"side", "config", "precision", "batch", "rep", "wall", "other_cores", ...} + its output.
# The other processes' share is (machine busy seconds - this run's CPU seconds) / wall seconds.
# glmrt runs are bracketed by read-bandwidth measurements ("bw_before", "bw_after"): this
# machine's bandwidth moves by a third within minutes (other tenants), so a run's floor is taken
# from the better of the two measurements next to it (and, in a second ratio, from the best of
# the whole benchmark).
run_side() {  # side config precision batch rep outfile -- command...
  local side=$1 cfg=$2 prec=$3 batch=$4 rep=$5 out=$6
  shift 7
  wait_quiet
  local b0 t0 b1 t1 own bw0=0 bw1=0
  if [[ $side == glmrt ]]; then bw0=$(bandwidth_now); fi
  b0=$(busy_seconds); t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$out.cpu" "$@" > "$out" 2> "$out.err" || {
    echo "generate_bench: $side $cfg $prec batch $batch failed:" >&2; tail -n 20 "$out.err" >&2; exit 1; }
  b1=$(busy_seconds); t1=$(date +%s.%N)
  if [[ $side == glmrt ]]; then bw1=$(bandwidth_now); fi
  own=$(awk '{ print $1 + $2 }' "$out.cpu")
  "$PYTHON" - "$side" "$cfg" "$prec" "$batch" "$out" "$t0" "$t1" "$b0" "$b1" "$own" "$bw0" "$bw1" \
    "$rep" >> "$RESULTS" <<'EOF'
import json, sys
sys.path.insert(0, "bench")
from bench_common import read_run
side, cfg, prec, batch, out = sys.argv[1:6]
t0, t1, b0, b1, own, bw0, bw1 = map(float, sys.argv[6:13])
r = {"side": side, "config": cfg, "precision": prec, "batch": int(batch), "rep": int(sys.argv[13]),
     "wall": t1 - t0,
     "other_cores": max(0.0, ((b1 - b0) - own) / (t1 - t0)), "bw_before": bw0, "bw_after": bw1}
r.update(read_run(side, out))
print(json.dumps(r))
EOF
}

# ---- the machine: read bandwidth and GEMM peak (measured before and after the runs; the table
# uses the better of the two, so a burst of outside load during one of them does not decide) ----
measure_machine() {  # tag
  echo "== read bandwidth (read_bandwidth, $THREADS threads) [$1]" >&2
  wait_quiet
  bandwidth_now > "$TMP/bw.$1"
  echo "== GEMM peak (torch.matmul fp32 4096³, $THREADS threads) [$1]" >&2
  wait_quiet
  "$PYTHON" bench/torch_generate.py --gemm-peak --threads "$THREADS" | tail -n 1 > "$TMP/peak.$1.json"
}
measure_machine before

# ---- runs --------------------------------------------------------------------------------------
for name in ${CONFIGS//,/ }; do
  cfg=$(config_file "$name")
  weights=$TMP/$name.safetensors
  echo "== $name: weights ($cfg)" >&2
  "$PYTHON" bench/torch_generate.py --config "$cfg" --init-weights "$weights" --seed 1234 2>&1 | sed 's/^/  /' >&2
  # Prompts: P-1 seeded random ids below every special id, then [gMASK]; query r of the batch-B
  # file is the same for every B.
  "$PYTHON" bench/bench_common.py prompts "$cfg" "$PROMPT_LEN" "$BATCHES" "$TMP/$name"
  for prec in $PRECISIONS; do
    dt=$([[ $prec == fp32 ]] && echo f32 || echo bf16)
    for batch in ${BATCHES//,/ }; do
      prompts=$TMP/$name.b$batch.txt
      torch_estimated=
      for rep in $(seq "$REPEAT"); do
        echo "== glmrt $name $prec batch $batch, run $rep of $REPEAT ($PROMPT_LEN-token prompts, $TOKENS tokens, $THREADS threads)" >&2
        run_side glmrt "$name" "$prec" "$batch" "$rep" "$TMP/$name.$prec.b$batch.r$rep.glmrt" -- \
          env OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" \
          "$GLMRT" generate --config "$cfg" --weights "$weights" --input-file "$prompts" \
          --input-format ids --strategy greedy --out-seq-length $((PROMPT_LEN + 1 + TOKENS)) \
          --min-gen-length "$TOKENS" --max-batch "$batch" --max-rows "$batch" \
          --cache-length $((PROMPT_LEN + 1 + TOKENS)) --threads "$THREADS" --dtype "$dt" --json --timing
        # PyTorch in estimate mode (minutes per run) runs once.
        if [[ -n $torch_estimated ]]; then continue; fi
        echo "== PyTorch $name $prec batch $batch, run $rep of $REPEAT" >&2
        out=$TMP/$name.$prec.b$batch.r$rep.torch
        run_side pytorch "$name" "$prec" "$batch" "$rep" "$out" -- \
          "$PYTHON" bench/torch_generate.py --config "$cfg" --weights "$weights" --prompts "$prompts" \
          --tokens "$TOKENS" --precision "$prec" --threads "$THREADS" --budget-s "${TORCH_BUDGET_S:-90}"
        sed 's/^/  /' "$out.err" >&2
        if grep -Eq '"mode": *"estimate"' "$out"; then torch_estimated=1; fi
      done
    done
  done
  rm -f "$weights"
done
measure_machine after
# For the reading: glmrt's decode linear kernel against its own bandwidth figure (a 1 GiB
# integer sum, 4 KiB pages, which reads slower than read_bandwidth's float sum on huge pages).
echo "== linear_decode_bench ($THREADS threads)" >&2
wait_quiet
OMP_NUM_THREADS=$THREADS "$BWBENCH" --threads "$THREADS" > "$TMP/linear_decode.txt"
echo "" >&2
echo "bench/linear_decode_bench:" >&2
sed 's/^/  /' "$TMP/linear_decode.txt" >&2

# ---- the table -------------------------------------------------------------------------------
"$PYTHON" - "$RESULTS" "$TMP" "$TOKENS" "$PROMPT_LEN" "$THREADS" "$(($(date +%s) - start))" <<'EOF'
import json, sys
sys.path.insert(0, "bench")
from bench_common import decode_floor, markdown_table, model_numbers, token_agreement

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tmp = sys.argv[2]
bws = [float(open(f"{tmp}/bw.{t}").read()) for t in ("before", "after")]
peaks = [json.loads(open(f"{tmp}/peak.{t}.json").read()) for t in ("before", "after")]
bw = max(bws + [r.get(k, 0.0) for r in rows for k in ("bw_before", "bw_after")])
peak = max(peaks, key=lambda p: p["sgemm_gflops"])
G, P, T, wall = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
files = {"tiny": "configs/tiny.yaml", "1b": "bench/configs/decode_1b.yaml"}
runs = {}
for r in rows:
    runs.setdefault((r["side"], r["config"], r["precision"], r["batch"]), []).append(r)
S = P + 1  # context: prompt + sop


def run_floor(mn, r, prec, batch, bandwidth=None):
    bw_r = bandwidth or max(r.get("bw_before", 0), r.get("bw_after", 0)) or bw
    return decode_floor(mn, S, G, 4 if prec == "fp32" else 2, batch, bw_r)


def median_run(rs, key):
    return sorted(rs, key=key)[len(rs) // 2]  # the upper middle of an even count

hdr = ["config", "dtype", "batch", "prefill ms glmrt / torch", "% GEMM peak glmrt / torch",
       "decode ms/step glmrt / torch", "tokens/s glmrt / torch", "glmrt ÷ floor", "torch ÷ floor",
       "floor ms", "GB/s before / after", "glmrt ÷ floor at the best GB/s",
       "glmrt ÷ floor, all runs", "tokens equal"]
table, notes = [], []
configs = list(dict.fromkeys(r["config"] for r in rows))
for name in configs:
    mn = model_numbers(files.get(name, name))
    for prec in ("fp32", "bf16"):
        for batch in sorted({r["batch"] for r in rows if r["config"] == name}):
            gs, ts = runs.get(("glmrt", name, prec, batch)), runs.get(("pytorch", name, prec, batch))
            if not gs or not ts:
                continue
            # The median run of each side: glmrt's by its ratio to the floor at its own bandwidth.
            ratio = lambda r: r["decode_ms_per_step"] / 1e3 / run_floor(mn, r, prec, batch)
            g = median_run(gs, ratio)
            t = median_run(ts, lambda r: r["decode_ms_per_step"])
            ratios = sorted(ratio(r) for r in gs)
            floor = run_floor(mn, g, prec, batch)
            floor_best = run_floor(mn, g, prec, batch, bw)
            flops = batch * (2 * mn["mats"] * S + 4 * S * S * mn["h"] * mn["L"] + 2 * mn["h"] * mn["V"])
            gd, td = g["decode_ms_per_step"] / 1e3, t["decode_ms_per_step"] / 1e3
            # Prefill: each side's median prefill over its runs (its own noise, not the decode's).
            gp = median_run(gs, lambda r: r["prefill_seconds"])["prefill_seconds"]
            tp = median_run(ts, lambda r: r["prefill_seconds"])["prefill_seconds"]
            est = "*" if t.get("mode") == "estimate" else ""
            to = t["outputs"]
            eq = token_agreement([s[0] if s else [] for s in g["outputs"]], to, G, batch)
            if any(len(s) != 1 for s in g["outputs"]):
                notes.append(f"warning: {name} {prec} batch {batch}: glmrt filled more than one blank")
            table.append([name, prec, str(batch),
                          f"{1e3 * gp:.1f} / {1e3 * tp:.1f}{est}",
                          f"{100 * flops / gp / 1e9 / peak['sgemm_gflops']:.0f}% / "
                          f"{100 * flops / tp / 1e9 / peak['sgemm_gflops']:.0f}%{est}",
                          f"{1e3 * gd:.2f} / {1e3 * td:.2f}",
                          f"{batch / gd:.1f} / {batch / td:.1f}",
                          f"{gd / floor:.2f}×", f"{td / floor:.2f}×", f"{1e3 * floor:.3f}",
                          f"{g.get('bw_before', 0) / 1e9:.1f} / {g.get('bw_after', 0) / 1e9:.1f}",
                          f"{gd / floor_best:.2f}×",
                          " ".join(f"{x:.2f}" for x in ratios) + f" ({len(ts)} torch)", eq])
            if t.get("mode") == "estimate":
                notes.append(
                    f"* {name} {prec} batch {batch}: PyTorch in estimate mode (predicted "
                    f"{t['predicted_seconds']:.0f} s > budget): prefill from one layer on "
                    f"{t['estimate_rows']} row(s) × {S} tokens ({t['estimate_layer_seconds']:.2f} s) "
                    f"× {mn['L']} layers × {batch} rows + head; KV cache from an fp32 prefill; "
                    f"{t['decode_steps']} timed decoding steps, tokens compared: {len(to[0])}.")
            if any(r["outputs"] != g["outputs"] for r in gs):
                notes.append(f"warning: {name} {prec} batch {batch}: glmrt's runs produced different tokens")
            for r, who in ((g, "glmrt"), (t, "PyTorch")):
                if r.get("other_cores", 0) > 0.25:
                    notes.append(f"warning: other processes used {r['other_cores']:.2f} cores during the "
                                 f"{who} {name} {prec} batch {batch} run; its figures are low.")
print()
print(f"Decoding: {P}-token prompts + sop, {G} greedy tokens per query (prefill → token 1, then "
      f"{G - 1} decoding steps), {T} threads; best read bandwidth {bw / 1e9:.2f} GB/s "
      f"(bench/read_bandwidth, before / after all runs: {bws[0] / 1e9:.2f} / {bws[1] / 1e9:.2f}; "
      f"next to each glmrt run in the table), "
      f"GEMM peak {peak['sgemm_gflops']:.1f} GFLOP/s (fp32 sgemm {peak['gemm_size']}³, "
      f"torch.matmul/OpenBLAS; before / after: {peaks[0]['sgemm_gflops']:.1f} / "
      f"{peaks[1]['sgemm_gflops']:.1f}).")
flags = set(open("/proc/cpuinfo").read().split())
bf16_units = ("this CPU has bf16 units (" + ", ".join(sorted(flags & {"avx512_bf16", "amx_bf16"})) +
              "): glmrt's bf16 prefill runs on them through oneDNN, as PyTorch's does, so bf16 "
              "prefill can exceed the fp32 peak; glmrt's bf16 decoding widens to fp32"
              if flags & {"avx512_bf16", "amx_bf16"} else
              "glmrt's bf16 computes in fp32; this CPU has no bf16 units")
print("\n".join(markdown_table(hdr, table)))
print()
for n in notes:
    print(n)
print("Each side: the median of its runs (decoding: glmrt's by its ratio to its floor; prefill: "
      "the median prefill; 'all runs' lists glmrt's ratios and how many PyTorch runs there were). "
      "floor = (all weights in the dtype + the KV cache read per step, averaged over the steps) / "
      "read bandwidth, the better of the measurements just before and just after the glmrt run "
      "(GB/s before / after; 'at the best GB/s' takes the best bandwidth of the whole benchmark "
      "instead); % GEMM peak = prefill FLOPs / prefill time / the fp32 sgemm rate (" + bf16_units + "); "
      "tokens/s = batch / decoding step time.")
print(f"Wall time of this benchmark: {wall // 60} min {wall % 60} s.")
EOF
