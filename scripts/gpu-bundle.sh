#!/usr/bin/env bash
# Packs the CUDA binaries of a build folder here (glmrt, the CUDA tests, the CUDA op and training
# step benchmarks)
# with the Debian shared libraries they load beyond what a CUDA machine brings (Open MPI and its
# components, PMIx, yaml-cpp, Boost, OpenBLAS, oneDNN, ...), for a GPU machine that reaches no
# package registry. `scripts/gpu-check.sh --bundle FILE` runs them there without building.
#
# Left out on purpose: the C and C++ runtimes (the CUDA machine's are as new or newer) and the
# CUDA libraries (cudart, cuBLAS, NCCL: the CUDA machine has its own; gpu-check.sh finds them).
#
# Usage: scripts/gpu-bundle.sh [BUILD_DIR (default build)] [FILE (default .gpu/bundle.tar.xz)]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=${1:-build}
out=$(realpath -m "${2:-.gpu/bundle.tar.xz}")
cmake --build "$build" -j"$(nproc)" --target glmrt glmrt_cuda_tests cuda_ops_bench train_step_bench

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin/tests" "$stage/bin/bench" "$stage/lib" "$stage/root"
cp "$build/glmrt" "$stage/bin/"
cp "$build/tests/glmrt_cuda_tests" "$stage/bin/tests/"
cp "$build/bench/cuda_ops_bench" "$build/bench/train_step_bench" "$stage/bin/bench/"
strip --strip-unneeded "$stage/bin/glmrt" "$stage/bin/tests/glmrt_cuda_tests" \
  "$stage/bin/bench/cuda_ops_bench" "$stage/bin/bench/train_step_bench"

# Open MPI finds orted, its components and help texts by their installed paths: those trees go
# into the machine's root as they are (never over a file that is already there).
multiarch=/usr/lib/x86_64-linux-gnu
mpi_trees=("$multiarch/openmpi" "$multiarch/pmix2" /usr/share/openmpi /usr/share/pmix /etc/openmpi
           /usr/bin/orted /usr/bin/orterun)
existing=()
for p in "${mpi_trees[@]}"; do [[ -e $p ]] && existing+=("$p"); done
tar -cf - "${existing[@]}" 2>/dev/null | tar -C "$stage/root" -xf -

# Every library the binaries and the MPI components load, under the name they load it by.
skip='^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux-x86-64|libcuda|libcudart|libcublas|libcublasLt|libnccl|libnvidia-.*)\.so'
mapfile -t objects < <(printf '%s\n' "$stage/bin/glmrt" "$stage/bin/tests/glmrt_cuda_tests" \
  "$stage/bin/bench/cuda_ops_bench" "$stage/bin/bench/train_step_bench"; find "$multiarch/openmpi" "$multiarch/pmix2" -name '*.so*' -type f)
for obj in "${objects[@]}"; do ldd "$obj" 2>/dev/null || true; done |
  awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    [[ $name =~ $skip ]] && continue
    [[ -e $stage/lib/$name ]] || cp -L "$path" "$stage/lib/$name"
  done

mkdir -p "$(dirname "$out")"
tar -C "$stage" -cf - bin lib root | xz -T0 -6 >"$out.tmp"
mv "$out.tmp" "$out"
echo "gpu-bundle: $out ($(du -h "$out" | cut -f1)); libraries: $(ls "$stage/lib" | wc -l)"
