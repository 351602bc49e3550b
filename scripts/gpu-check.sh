#!/usr/bin/env bash
# Builds glmrt with the CUDA backend, runs the CUDA tests (and the CPU tests), then the CUDA op
# benchmark, and prints a short summary last. Meant for a GPU machine (H100/H200: sm_90 only,
# for a fast build); logs go to build-gpu/gpu-check-logs and, when $OUT is set, to $OUT too.
#
# Usage: scripts/gpu-check.sh [--bundle FILE] [--no-cpu-tests] [--no-e2e] [--no-bench] [--quick-bench]
#                             [--train-bench] [--decode-bench] [--decode-profile]
#   --train-bench: also bench/gpu_train_bench.sh (a bf16 training step, glmrt vs PyTorch).
#   --decode-bench: also bench/gpu_generate_bench.sh (glmrt generate --device cuda vs PyTorch on
#   the 1b decoding model, fp32 and bf16, batches 1 and 16); its raw results
#   (decode_results.jsonl, decode_ceilings.json) go with the logs.
#   --decode-profile: also bench/gpu_decode_profile.sh (the kernels of a decoding step under ncu,
#   fp32 and bf16, batches 1 and 16, against the step's wall time).
#   --bundle FILE: run the prebuilt binaries packed by scripts/gpu-bundle.sh (with the Debian
#   libraries they need) instead of configuring and building here; implies --no-cpu-tests.
# Environment: GLMRT_GPU_BUILD_DIR (build folder, default build-gpu), GLMRT_DEBS_DIR (carried
# .deb files to unpack, default .debs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

run_cpu_tests=1
run_e2e=1
run_bench=1
bench_args=()
bundle=""
run_train_bench=0
run_decode_bench=0
run_decode_profile=0
while (($#)); do
  arg=$1
  shift
  case "$arg" in
    --bundle) bundle=$(realpath "${1:?--bundle needs a file}"); shift; run_cpu_tests=0 ;;
    --no-cpu-tests) run_cpu_tests=0 ;;
    --no-e2e) run_e2e=0 ;;
    --no-bench) run_bench=0 ;;
    --quick-bench) bench_args+=(--quick) ;;
    --train-bench) run_train_bench=1 ;;
    --decode-bench) run_decode_bench=1 ;;
    --decode-profile) run_decode_profile=1 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option $arg" >&2; exit 2 ;;
  esac
done

root="$PWD"
build="$(realpath -m "${GLMRT_GPU_BUILD_DIR:-build-gpu}")"  # absolute: the e2e step changes folder
logs="$build/gpu-check-logs"
mkdir -p "$logs"
jobs=$(nproc)
declare -a summary=()
failed=0

note() { summary+=("$(printf '%-14s %s' "$1" "$2")"); }
step() { echo; echo "==== $* ===="; }

# Copies the logs (and the decode benchmark's raw results) to $OUT (the device tool's output
# folder) whenever the script ends.
# shellcheck disable=SC2317  # called through the trap
copy_logs() {
  if [[ -n "${OUT:-}" && -d "$OUT" ]]; then
    cp "$logs"/*.log "$OUT"/ 2>/dev/null || true
    cp "$logs"/decode_*.json "$logs"/decode_*.jsonl "$OUT"/ 2>/dev/null || true
    cp "$logs"/decode_profile_*_b1.csv "$OUT"/ 2>/dev/null || true
  fi
}
trap copy_logs EXIT

# gtest's summary counts from a log: "passed failed skipped".
gtest_counts() {
  local log=$1 passed failed skipped
  passed=$(grep -oP '^\[  PASSED  \] \K[0-9]+' "$log" | tail -1 || true)
  failed=$(grep -oP '^\[  FAILED  \] \K[0-9]+(?= tests?, listed below)' "$log" | tail -1 || true)
  skipped=$(grep -oP '^\[  SKIPPED \] \K[0-9]+(?= tests?[,.])' "$log" | tail -1 || true)
  echo "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
}

# Open MPI as root (the GPU machines run commands as root): an MPI singleton starts orted.
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_mca_base_component_show_load_errors=0

have_gpu=0
if nvidia-smi -L >/dev/null 2>&1; then
  have_gpu=1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
fi

# ---- Prebuilt bundle (scripts/gpu-bundle.sh) --------------------------------------------------
# The directory holding library $1 on this machine, if the loader does not find it already.
find_cuda_lib() {
  ldconfig -p | grep -q "^[[:space:]]*$1 " && return 0
  local d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -e $d/$1 ]] && { echo "$d"; return 0; }
  done
  find /usr/local /opt /usr/lib -name "$1" -print -quit 2>/dev/null | xargs -r dirname
}

if [[ -n $bundle ]]; then
  step "bundle"
  unpacked="$build/bundle"
  rm -rf "$unpacked" && mkdir -p "$unpacked" "$build/tests" "$build/bench"
  xz -dc "$bundle" | tar -C "$unpacked" -xf -
  # Open MPI's and PMIx's trees at their installed paths, never over a file already there.
  cp -rn "$unpacked/root/." / || true
  # Libraries this machine has stay its own; the bundle fills in the missing ones only.
  for lib in "$unpacked"/lib/*; do
    if ldconfig -p | grep -q "^[[:space:]]*$(basename "$lib") "; then rm -f "$lib"; fi
  done
  libpath="$unpacked/lib"
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    dir=$(find_cuda_lib "$lib")
    echo "$lib: ${dir:-found by the loader}"
    [[ -n $dir ]] && libpath="$libpath:$dir"
  done
  export LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  cp "$unpacked/bin/glmrt" "$build/glmrt"
  cp "$unpacked/bin/tests/glmrt_cuda_tests" "$build/tests/"
  cp "$unpacked/bin/bench/cuda_ops_bench" "$unpacked/bin/bench/train_step_bench" "$build/bench/"
  missing=$(ldd "$build/glmrt" "$build/tests/glmrt_cuda_tests" | grep 'not found' | sort -u || true)
  if [[ -n $missing ]]; then
    echo "$missing"
    note bundle "FAILED: libraries not found: $(echo "$missing" | awk '{print $1}' | tr '\n' ' ')"
    failed=1
  else
    note bundle "ok ($(ls "$unpacked/lib" | wc -l) libraries from the bundle)"
  fi
fi

# ---- Dependencies ----------------------------------------------------------------------------
if [[ -z $bundle ]]; then
step "dependencies"
# The GPU machines reach no package registry: .deb files carried in $GLMRT_DEBS_DIR (default
# .debs, e.g. made here with `apt-get download`) are unpacked into / first.
debs_dir="${GLMRT_DEBS_DIR:-.debs}"
if compgen -G "$debs_dir/*.deb" >/dev/null; then
  for deb in "$debs_dir"/*.deb; do dpkg -x "$deb" / || echo "gpu-check: could not unpack $deb"; done
  ldconfig || true
  note debs "unpacked $(find "$debs_dir" -maxdepth 1 -name '*.deb' | wc -l) carried .deb files"
fi
deb_packages=(libopenblas-dev libyaml-cpp-dev nlohmann-json3-dev libboost-program-options-dev
              libopenmpi-dev libgtest-dev pkg-config)
if [[ -f scripts/setup.sh ]]; then
  if bash scripts/setup.sh --deps-only 2>&1 | tee "$logs/deps.log"; then
    note deps "scripts/setup.sh --deps-only: ok"
  else
    note deps "scripts/setup.sh --deps-only FAILED (see deps.log)"
  fi
else
  missing=()
  for p in "${deb_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]} == 0)); then
    note deps "all present"
  else
    sudo=""
    [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && sudo="sudo"
    echo "installing: ${missing[*]}"
    if { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
           "${missing[@]}"; } 2>&1 | tee "$logs/deps.log"; then
      note deps "installed ${missing[*]}"
    else
      note deps "could not install ${missing[*]} (no network?); configure may fail"
    fi
  fi
fi

nvcc --version | tail -1 || true

# ---- Configure and build ---------------------------------------------------------------------
step "configure"
cmake_args=(-S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DGLMRT_CUDA=ON
            -DCMAKE_CUDA_ARCHITECTURES=90)
command -v ninja >/dev/null && [[ ! -f $build/CMakeCache.txt ]] && cmake_args+=(-G Ninja)
# CMake < 3.25.2 cannot pass -std=c++20 to nvcc, and CUDA inherits CMAKE_CXX_STANDARD 20:
# build the .cu files as C++17 there (they are valid C++17).
cmake_version=$(cmake --version | head -1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+')
if [[ $(printf '%s\n3.25.2\n' "$cmake_version" | sort -V | head -1) != 3.25.2 ]]; then
  cmake_args+=(-DCMAKE_CUDA_STANDARD=17)
fi
if ! cmake "${cmake_args[@]}" 2>&1 | tee "$logs/configure.log"; then
  note configure "FAILED (cmake $cmake_version; see configure.log)"
  printf '\n==== gpu-check summary ====\n'; printf '%s\n' "${summary[@]}"
  exit 1
fi
note configure "ok (cmake $cmake_version)"

step "build"
build_ok=1
if cmake --build "$build" -j"$jobs" --target glmrt_cuda_tests cuda_ops_bench glmrt 2>&1 |
     tee "$logs/build.log"; then
  note build "CUDA targets ok"
else
  note build "CUDA targets FAILED (see build.log)"
  build_ok=0
  failed=1
fi
if ((run_cpu_tests)); then  # everything else: the CPU tests need the glmrt binary too
  if cmake --build "$build" -j"$jobs" 2>&1 | tee -a "$logs/build.log"; then
    note build-all "ok"
  else
    note build-all "FAILED (see build.log)"
    run_cpu_tests=0
    failed=1
  fi
fi
else
  build_ok=1
fi

# ---- Tests -----------------------------------------------------------------------------------
if ((build_ok)); then
  step "CUDA tests"
  if timeout -k 5 300 "$build/tests/glmrt_cuda_tests" --gtest_brief=1 --gtest_color=no 2>&1 |
       tee "$logs/cuda-tests.log"; then
    note cuda-tests "$(gtest_counts "$logs/cuda-tests.log")"
    # Skipping is right without a GPU, but a GPU that the tests cannot see is a failure.
    if ((have_gpu)) && grep -q '^\[  PASSED  \] 0 tests' "$logs/cuda-tests.log"; then
      note cuda-tests "FAILED: nvidia-smi sees a GPU but every CUDA test skipped"
      failed=1
    fi
  else
    note cuda-tests "FAILED: $(gtest_counts "$logs/cuda-tests.log")"
    failed=1
  fi
fi

# The NCCL communicator across ranks: the run above covers one rank (an MPI singleton); with two
# GPUs the same tests also run as two ranks, one GPU each (sums across ranks, separate send/recv,
# the deadline of a peer that never answers).
gpus=0
if ((have_gpu)); then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true); fi
if ((build_ok && gpus >= 2)); then
  step "NCCL tests, 2 ranks"
  if OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 \
       mpiexec -n 2 --oversubscribe "$build/tests/glmrt_cuda_tests" \
       --gtest_filter='NcclCommunicatorTest.*' --gtest_brief=1 --gtest_color=no 2>&1 |
       tee "$logs/nccl-2-ranks.log"; then
    note nccl-2-ranks "$(gtest_counts "$logs/nccl-2-ranks.log") (per rank)"
  else
    note nccl-2-ranks "FAILED: $(gtest_counts "$logs/nccl-2-ranks.log") (see nccl-2-ranks.log)"
    failed=1
  fi
elif ((build_ok)); then
  note nccl-2-ranks "skipped: $gpus GPU(s); two ranks need two GPUs"
fi

if ((run_cpu_tests)); then
  step "CPU tests"
  if OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 timeout 600 "$build/tests/glmrt_tests" \
       --gtest_brief=1 2>&1 | tee "$logs/cpu-tests.log"; then
    note cpu-tests "$(gtest_counts "$logs/cpu-tests.log")"
  else
    note cpu-tests "FAILED: $(gtest_counts "$logs/cpu-tests.log")"
    failed=1
  fi
fi

# ---- End to end: the glmrt binary on the GPU against the CPU ---------------------------------
# Relative L2 error of every tensor of safetensors file $1 against file $2 (the worst one).
compare_safetensors() {
  python3 - "$1" "$2" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
got, ref = load_file(sys.argv[1]), load_file(sys.argv[2])
worst = 0.0
for name, r in ref.items():
    g = got[name].astype(np.float64)
    r = r.astype(np.float64)
    worst = max(worst, float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30)))
print(f"{worst:.2e}")
PY
}

# Runs `glmrt $args`, compares output $out with $ref, and notes the result under $label.
e2e_check() {
  local label=$1 tol=$2 out=$3 ref=$4
  shift 4
  local err
  if ! timeout -k 5 120 "$build/glmrt" "$@" >>"$logs/e2e.log" 2>&1; then
    note "$label" "FAILED to run (see e2e.log)"
    failed=1
  elif ! err=$(compare_safetensors "$out" "$ref" 2>>"$logs/e2e.log"); then
    note "$label" "FAILED to compare (see e2e.log)"
    failed=1
  elif python3 -c "import sys; sys.exit(0 if float('$err') <= $tol else 1)"; then
    note "$label" "rel err $err <= $tol"
  else
    note "$label" "FAILED: rel err $err > $tol"
    failed=1
  fi
}

if ((build_ok && run_e2e && !have_gpu)); then
  note e2e "skipped: no GPU"
elif ((build_ok && run_e2e)); then
  step "end to end"
  e2e="$build/e2e"
  rm -rf "$e2e" && mkdir -p "$e2e"
  cat >"$e2e/batch.json" <<'JSON'
{"tokens": [[11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 505, 508, 30, 31, 32, 33],
            [40, 41, 504, 43, 508, 42, 509, 0, 50, 51, 52, 53, 54, 55, 56, 57]],
 "position_ids": [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
                  [0, 1, 2, 3, 2, 2, 2, 2, 0, 1, 2, 3, 4, 5, 6, 7]],
 "sep": [[11], [4, 8]],
 "segment_lengths": [[16], [8, 8]]}
JSON
  fwd=(forward --config configs/tiny.yaml --weights "$e2e/init.safetensors"
       --input "$e2e/batch.json")
  if "$build/glmrt" init --config configs/tiny.yaml --output "$e2e/init.safetensors" --seed 1234 \
       >"$logs/e2e.log" 2>&1 &&
     "$build/glmrt" "${fwd[@]}" --output "$e2e/cpu.safetensors" >>"$logs/e2e.log" 2>&1; then
    e2e_check "fwd cuda f32" 1e-4 "$e2e/f32.safetensors" "$e2e/cpu.safetensors" \
      "${fwd[@]}" --device cuda --dtype f32 --output "$e2e/f32.safetensors"
    e2e_check "fwd cuda f16" 1e-2 "$e2e/f16.safetensors" "$e2e/cpu.safetensors" \
      "${fwd[@]}" --device cuda --dtype f16 --output "$e2e/f16.safetensors"
    e2e_check "fwd cuda bf16" 5e-2 "$e2e/bf16.safetensors" "$e2e/cpu.safetensors" \
      "${fwd[@]}" --device cuda --dtype bf16 --output "$e2e/bf16.safetensors"
  else
    note e2e "FAILED: CPU init/forward (see e2e.log)"
    failed=1
  fi
  # Ten fp32 training steps on the GPU against the PyTorch reference's final parameters (run in
  # the scratch folder: the config writes its metrics relative to the working folder).
  cd "$e2e"
  e2e_check "train cuda f32" 1e-4 "$e2e/trained.safetensors" \
    "$root/tests/golden/train_final_params.safetensors" \
    train --config "$root/tests/golden/train_config.yaml" --device cuda \
    --init-weights "$root/tests/golden/tiny_weights.safetensors" \
    --output-weights "$e2e/trained.safetensors"
  cd "$root"
  # Weight-only quantization on the GPU: logits of the quantized generation model against the
  # PyTorch reference's (tests/golden/quantize), quantizing at load (8 and 4 bits) and from a
  # pre-quantized checkpoint (glmrt quantize: values moved to the device as saved).
  qfwd=(forward --config "$root/tests/golden/generate/tiny.yaml" --input "$root/tests/golden/forward_plain.json"
        --device cuda --dtype f32)
  for bits in 8 4; do
    e2e_check "fwd cuda int$bits" 1e-4 "$e2e/int$bits.safetensors" \
      "$root/tests/golden/quantize/forward_int${bits}_tp1.logits.safetensors" \
      "${qfwd[@]}" --weights "$root/tests/golden/generate/weights.safetensors" \
      --quantization-bit-width "$bits" --output "$e2e/int$bits.safetensors"
  done
  if "$build/glmrt" quantize --config "$root/tests/golden/generate/tiny.yaml" \
       --weights "$root/tests/golden/generate/weights.safetensors" --to "$e2e/q4" \
       --quantization-bit-width 4 --tensor 1 --pipeline 1 >>"$logs/e2e.log" 2>&1; then
    e2e_check "fwd cuda q4 ckpt" 1e-4 "$e2e/q4.safetensors" \
      "$root/tests/golden/quantize/forward_int4_tp1.logits.safetensors" \
      "${qfwd[@]}" --load "$e2e/q4" --output "$e2e/q4.safetensors"
  else
    note "fwd cuda q4 ckpt" "FAILED: glmrt quantize (see e2e.log)"
    failed=1
  fi
  # Generation on the GPU (KV cache, attention with a slot table, sampling, beam search): the
  # golden cases of the float64 reference, batched as in the CPU test; f32 must match them all,
  # bf16 is reported only (its rounding may flip a near tie).
  step "generate"
  if timeout -k 5 300 python3 scripts/gpu_generate_check.py "$build/glmrt" "$e2e/generate" \
       --device cuda --dtype f32 >"$logs/generate.log" 2>&1; then
    note "gen cuda f32" "$(tail -1 "$logs/generate.log")"
  else
    note "gen cuda f32" "FAILED: $(tail -1 "$logs/generate.log") (see generate.log)"
    failed=1
  fi
  timeout -k 5 300 python3 scripts/gpu_generate_check.py "$build/glmrt" "$e2e/generate-bf16" \
    --device cuda --dtype bf16 >"$logs/generate-bf16.log" 2>&1 || true
  note "gen cuda bf16" "$(tail -1 "$logs/generate-bf16.log") (reported only)"
  # The same cases through `glmrt serve --device cuda`: 17 concurrent POST /generate requests,
  # batched by the server's engine.
  if timeout -k 5 300 python3 scripts/gpu_generate_check.py "$build/glmrt" "$e2e/serve" --serve \
       --device cuda --dtype f32 >"$logs/serve.log" 2>&1; then
    note "serve cuda f32" "$(tail -1 "$logs/serve.log")"
  else
    note "serve cuda f32" "FAILED: $(tail -1 "$logs/serve.log") (see serve.log)"
    failed=1
  fi
fi

# ---- Benchmark -------------------------------------------------------------------------------
bench_table=""
if ((build_ok && run_bench)); then
  step "benchmark"
  if timeout -k 5 300 "$build/bench/cuda_ops_bench" "${bench_args[@]}" 2>&1 | tee "$logs/bench.log"; then
    note bench "ok"
  else
    note bench "FAILED (see bench.log)"
    failed=1
  fi
  # The table the benchmark prints last: from its header line to the end.
  bench_table=$(sed -n '/^op  *dtype/,$p' "$logs/bench.log")
fi

# ---- Training step against PyTorch -----------------------------------------------------------
train_table=""
if ((build_ok && run_train_bench && have_gpu)); then
  step "training step benchmark"
  if [[ -z $bundle ]]; then cmake --build "$build" -j"$jobs" --target train_step_bench >>"$logs/build.log" 2>&1 || true; fi
  if bash bench/gpu_train_bench.sh --build "$build" 2>&1 | tee "$logs/train-bench.log"; then
    note train-bench "ok"
    train_table=$(sed -n '/^training step/,$p' "$logs/train-bench.log")
  else
    note train-bench "FAILED (see train-bench.log)"
    failed=1
  fi
fi

# ---- Decoding against PyTorch -----------------------------------------------------------------
# glmrt is built (or unpacked from the bundle) at $build/glmrt; the benchmark writes its weights
# to a temp folder of its own and deletes them.
decode_table=""
if ((build_ok && run_decode_bench && have_gpu)); then
  step "decoding benchmark"
  rm -f "$logs"/decode_*.json "$logs"/decode_*.jsonl
  if timeout -k 10 420 bash bench/gpu_generate_bench.sh --build "$build" --out "$logs" 2>&1 |
       tee "$logs/decode-bench.log"; then
    note decode-bench "ok"
  else
    note decode-bench "FAILED (see decode-bench.log)"
    failed=1
  fi
  # The table the benchmark prints last (also after a failed case: its row says so).
  decode_table=$(sed -n '/^decode benchmark on /,$p' "$logs/decode-bench.log")
elif ((build_ok && run_decode_bench)); then
  note decode-bench "skipped: no GPU"
fi

profile_table=""
if ((build_ok && run_decode_profile && have_gpu)); then
  step "decode profile (bench/gpu_decode_profile.sh)"
  if timeout -k 10 420 bash bench/gpu_decode_profile.sh --build "$build" --batches 1,16 \
       --out "$logs" >"$logs/decode-profile.log" 2>"$logs/decode-profile-err.log"; then
    note decode-profile "ok"
  else
    note decode-profile "FAILED (see decode-profile-err.log)"
    tail -20 "$logs/decode-profile-err.log"
    failed=1
  fi
  profile_table=$(cat "$logs/decode-profile.log")
elif ((build_ok && run_decode_profile)); then
  note decode-profile "skipped: no GPU"
fi

# ---- Summary (last, so that the tail of the output holds it) ---------------------------------
{
  printf '\n==== gpu-check summary ====\n'
  printf '%s\n' "${summary[@]}"
  if [[ -n $bench_table ]]; then printf '\n%s\n' "$bench_table"; fi
  if [[ -n $train_table ]]; then printf '\n%s\n' "$train_table"; fi
  if [[ -n $decode_table ]]; then printf '\n%s\n' "$decode_table"; fi
  if [[ -n $profile_table ]]; then printf '\n%s\n' "$profile_table"; fi
  if ((failed)); then printf '\nRESULT: FAILED\n'; else printf '\nRESULT: ok\n'; fi
} | tee "$logs/summary.log"
exit "$failed"
