#!/usr/bin/env bash
# Installs what glmrt needs on Debian 12 (as root) and builds it into build/ (incrementally).
#   scripts/setup.sh              packages + configure + build
#   scripts/setup.sh --deps-only  packages only
# Environment: BUILD_DIR (default build), GLMRT_CUDA (AUTO|ON|OFF, default AUTO: on when nvcc
# exists), CMAKE_CUDA_ARCHITECTURES (default "80;90"), JOBS (default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake pkg-config git curl
  libopenblas-openmp-dev libyaml-cpp-dev nlohmann-json3-dev libboost-program-options-dev
  libdnnl-dev ocl-icd-opencl-dev opencl-headers gnuplot-nox bc time
  libopenmpi-dev openmpi-bin libgtest-dev libsentencepiece-dev libxxhash-dev libcpp-httplib-dev
  slurmctld slurmd slurm-client munge libpmix-dev
  python3 python3-pip python3-numpy python3-torch)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages (${missing[*]}); run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The reference safetensors reader (PyPI) for the format tests, into the python3 on PATH.
if ! python3 -c "import safetensors, numpy" 2>/dev/null; then
  echo "setup: installing the safetensors reference reader (pip)"
  python3 -m pip install -q safetensors numpy 2>/dev/null ||
    python3 -m pip install -q --break-system-packages safetensors numpy
fi
# The OpenAI Python client, a real client for `glmrt serve`'s test (tests/serve/serve_test.sh).
if ! python3 -c "import openai" 2>/dev/null; then
  echo "setup: installing the openai Python client (pip)"
  python3 -m pip install -q openai 2>/dev/null ||
    python3 -m pip install -q --break-system-packages openai
fi

[[ "${1:-}" == "--deps-only" ]] && exit 0

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DGLMRT_CUDA="${GLMRT_CUDA:-AUTO}" \
    -DCMAKE_CUDA_ARCHITECTURES="${CMAKE_CUDA_ARCHITECTURES:-80;90}"
fi
cmake --build "$BUILD_DIR" -j "$JOBS"
