// Decoding linear-layer benchmark (CPU): y[n, m] = x[n, k]·w[m, k]ᵀ through glmrt::linear_forward
// for a few rows (n = 1 and 16, m = 8192, k = 2048, F32 and BF16), against the machine's memory
// read bandwidth measured in the same run (all threads summing a 1 GiB buffer, best of a few).
// At n = 1 a call cannot be faster than (weight bytes / read bandwidth): the table prints the
// median and best time of a call, the weight-stream rate in GB/s and the ratio of the call time
// to that floor (both at the median), and GFLOP/s. The calls cycle through enough weight matrices
// (like the layers of a model) that none is still in cache.
// For reference it also times the general path on the same shapes: OpenBLAS sgemm for F32, and
// for BF16 the conversion of w to F32 followed by sgemm (what a 16-bit call cost before); on a CPU
// with AVX-512 the AVX2 kernels, and with the AVX-512 BF16 units the widening AVX-512 kernels
// (BF16 calls otherwise take the units).
//
// A second table times F32 calls at the shapes of a decoding step of bench/configs/decode_1b.yaml
// (h 2048, F 5461, vocab 32768: QKV, dense, h→4h, 4h→h, output head) for n = 1 and 16, with
// GFLOP/s next to OpenBLAS sgemm at the same shape and to the sgemm peak (4096³, best of 3), and
// the F32 step's linear-layer time those rows add up to (16 layers + the head).
//
// Usage: linear_decode_bench [--threads T] [--iterations N] [--only-1b]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/small_gemm.h"
#include "kernels/ops.h"

namespace {

using namespace glmrt;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Best (shortest) time of `runs` calls of fn.
double best_of(int runs, const std::function<void()>& fn) {
  double best = 1e30;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

// Read bandwidth in bytes/s: all threads sum a 1 GiB buffer (integer adds, which vectorize).
double read_bandwidth() {
  const size_t words = (size_t{1} << 30) / sizeof(uint64_t);
  std::vector<uint64_t> buffer(words);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < words; ++i) buffer[i] = i;
  uint64_t sink = 0;
  const double t = best_of(5, [&] {
    uint64_t s = 0;
#pragma omp parallel for schedule(static) reduction(+ : s)
    for (size_t i = 0; i < words; ++i) s += buffer[i];
    sink += s;
  });
  if (sink == 1) std::printf(" ");  // keeps the sums
  return static_cast<double>(words * sizeof(uint64_t)) / t;
}

struct Timing {
  double median, best;  // seconds per call
};

// Times each of `calls` calls: the median is what a decoding step sees on a machine shared with
// other work, the best what the hardware does.
Timing time_calls(int calls, const std::function<void()>& fn) {
  std::vector<double> t(static_cast<size_t>(calls));
  for (double& s : t) {
    const auto t0 = Clock::now();
    fn();
    s = seconds_since(t0);
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front()};
}

// One table row: times, the weight-stream rate and the ratio to the bandwidth floor at the
// median, and GFLOP/s for n > 1.
void print_row(const std::string& what, Timing t, double w_bytes, double floor_s, int64_t n,
               int64_t m, int64_t k) {
  std::printf("%-26s %11.1f %9.1f %9.2f %11.2f", what.c_str(), t.median * 1e6, t.best * 1e6,
              w_bytes / t.median / 1e9, t.median / floor_s);
  if (n > 1) std::printf(" %9.1f", 2.0 * n * m * k / t.median / 1e9);
  std::printf("\n");
}

Tensor random_tensor(const Shape& shape, DType dtype, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& f : v) f = dist(rng);
  return Tensor::from_floats(v, shape, dtype);
}

// sgemm's GFLOP/s on 4096³ F32 (best of 3): the compute peak the decode_1b table compares to.
double sgemm_peak_gflops() {
  const int64_t s = 4096;
  Tensor a = random_tensor({s, s}, DType::F32, 7), b = random_tensor({s, s}, DType::F32, 8);
  Tensor c = Tensor::empty({s, s}, DType::F32);
  const double t = best_of(3, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s, s, s, 1.0f, a.data_as<float>(), s,
                b.data_as<float>(), s, 0.0f, c.data_as<float>(), s);
  });
  return 2.0 * s * s * s / t / 1e9;
}

// F32 linear layers at decode_1b's shapes, n = 1 and 16: glmrt (linear_forward) against OpenBLAS
// sgemm on the same shape, and the step total (16 layers of the four layer shapes + the head).
void decode_1b_table(int iterations) {
  const double peak = sgemm_peak_gflops();
  std::printf("\ndecode_1b F32 linear layers; sgemm 4096^3 peak %.1f GFLOP/s\n", peak);
  std::printf("%-24s %4s %11s %9s %8s %11s %9s %8s\n", "layer [m x k]", "n", "glmrt (us)",
              "GFLOP/s", "% peak", "sgemm (us)", "GFLOP/s", "% peak");
  struct Shape1b {
    const char* name;
    int64_t m, k, per_step;  // per_step: calls per decoding step
  };
  const Shape1b shapes[] = {{"qkv", 6144, 2048, 16},
                            {"dense", 2048, 2048, 16},
                            {"h_to_4h", 10922, 2048, 16},
                            {"4h_to_h", 2048, 5461, 16},
                            {"head", 32768, 2048, 1}};
  for (int64_t n : {1, 16}) {
    double step_glmrt = 0, step_blas = 0;
    for (const Shape1b& sh : shapes) {
      const int64_t m = sh.m, k = sh.k;
      const double w_bytes = static_cast<double>(m * k * 4);
      const int copies = static_cast<int>(std::max(1.0, (256.0 * (1 << 20)) / w_bytes));
      std::vector<Tensor> weights;
      for (int c = 0; c < copies; ++c) weights.push_back(random_tensor({m, k}, DType::F32, 200 + c));
      Tensor x = random_tensor({n, k}, DType::F32, 3), y = Tensor::empty({n, m}, DType::F32);
      int next = 0;
      auto call = [&] { linear_forward(x, weights[next++ % copies], nullptr, y); };
      auto blas = [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, 1.0f, x.data_as<float>(), k,
                    weights[next++ % copies].data_as<float>(), k, 0.0f, y.data_as<float>(), m);
      };
      for (int i = 0; i < copies; ++i) call(), blas();  // warm-up
      const int calls = std::max(8, iterations * 4096 * 2048 / static_cast<int>(m * k) / 2);
      const double tg = time_calls(calls, call).median, tb = time_calls(calls, blas).median;
      const double flops = 2.0 * n * m * k;
      const std::string what = std::string(sh.name) + " [" + std::to_string(m) + " x " +
                               std::to_string(k) + "]";
      std::printf("%-24s %4lld %11.1f %9.1f %7.0f%% %11.1f %9.1f %7.0f%%\n", what.c_str(),
                  static_cast<long long>(n), tg * 1e6, flops / tg / 1e9, 100 * flops / tg / 1e9 / peak,
                  tb * 1e6, flops / tb / 1e9, 100 * flops / tb / 1e9 / peak);
      step_glmrt += sh.per_step * tg;
      step_blas += sh.per_step * tb;
    }
    std::printf("%-24s %4lld %11.1f %9s %8s %11.1f\n", "  step (16 layers + head)",
                static_cast<long long>(n), step_glmrt * 1e6, "", "", step_blas * 1e6);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0, iterations = 40;
  bool only_1b = false;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--threads") && has_value) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--iterations") && has_value) iterations = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--only-1b")) only_1b = true;  // just the decode_1b table
    else {
      std::fprintf(stderr,
                   "usage: linear_decode_bench [--threads T] [--iterations N] [--only-1b]\n");
      return 2;
    }
  }
  if (threads > 0) omp_set_num_threads(threads);
  const int64_t m = 8192, k = 2048;
  const double bandwidth = read_bandwidth();
  std::printf("threads %d, memory read bandwidth %.2f GB/s (1 GiB sum, best of 5)\n\n",
              omp_get_max_threads(), bandwidth / 1e9);
  std::printf("%-26s %11s %9s %9s %11s %9s\n", "m=8192 k=2048", "median (us)", "best (us)",
              "GB/s", "time/floor", "GFLOP/s");

  for (DType dt : {DType::F32, DType::BF16}) {
    if (only_1b) break;
    // Enough distinct weight matrices to cover 8× the last-level cache (256 MiB).
    const double w_bytes = static_cast<double>(m * k * dtype_size(dt));
    const double floor_s = w_bytes / bandwidth;  // a call's time at the read bandwidth
    const int copies = static_cast<int>(std::max(1.0, (256.0 * (1 << 20)) / w_bytes));
    std::vector<Tensor> weights;
    for (int c = 0; c < copies; ++c) weights.push_back(random_tensor({m, k}, dt, 100 + c));
    for (int64_t n : {1, 16}) {
      Tensor x = random_tensor({n, k}, dt, 1), y = Tensor::empty({n, m}, dt);
      int next = 0;
      auto call = [&] { linear_forward(x, weights[next++ % copies], nullptr, y); };
      for (int i = 0; i < copies; ++i) call();  // warm-up: thread pool, page tables
      const std::string what = std::string(dtype_name(dt)) + " n=" + std::to_string(n);
      print_row(what, time_calls(iterations, call), w_bytes, floor_s, n, m, k);
      if (dt == DType::BF16 && cpu::small_gemm_bf16_units()) {  // widening instead of VDPBF16PS
        auto widening = [&] {
          cpu::small_linear_forward(x, weights[next++ % copies], nullptr, y, true, true, false);
        };
        print_row("  (widening AVX-512)", time_calls(iterations, widening), w_bytes, floor_s, n, m, k);
      }
      if (cpu::small_gemm_avx512()) {  // the same kernels at 8 lanes, as on a CPU without AVX-512
        auto avx2 = [&] { cpu::small_linear_forward(x, weights[next++ % copies], nullptr, y, true, false); };
        print_row("  (AVX2 kernels)", time_calls(iterations, avx2), w_bytes, floor_s, n, m, k);
      }
      // The general path on the same shape, for reference.
      Tensor x32 = x.to(DType::F32), y32 = Tensor::empty({n, m}, DType::F32);
      auto general = [&] {
        const Tensor& w = weights[next++ % copies];
        Tensor w32 = dt == DType::F32 ? w : w.to(DType::F32);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, 1.0f, x32.data_as<float>(),
                    k, w32.data_as<float>(), k, 0.0f, y32.data_as<float>(), m);
      };
      print_row(dt == DType::F32 ? "  (OpenBLAS sgemm)" : "  (to F32, then sgemm)",
                time_calls(std::max(4, iterations / 4), general), w_bytes, floor_s, n, m, k);
    }
  }
  decode_1b_table(iterations);
  return 0;
}
