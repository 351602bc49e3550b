// Memory read bandwidth (CPU), for the decoding benchmark's floor (bench/generate_bench.sh): all
// OpenMP threads sum their share of a 1 GiB float buffer (transparent huge pages requested),
// eight independent 8-wide accumulators per thread so the loop is bound by memory, not by the
// add latency; best of several passes. Prints one line, then one JSON line:
//   read bandwidth 34.12 GB/s (1 GiB of floats, 2 threads, best of 8 passes)
//   {"read_gbs": 34.12, "bytes": 1073741824, "threads": 2, "passes": 8, "huge_pages": true}
//
// Usage: read_bandwidth [--threads T] [--passes N] [--mib M]
#include <omp.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  int threads = 0, passes = 8;
  size_t mib = 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--passes")) passes = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--mib")) mib = static_cast<size_t>(std::atol(argv[i + 1]));
    else {
      std::fprintf(stderr, "usage: read_bandwidth [--threads T] [--passes N] [--mib M]\n");
      return 2;
    }
  }
  if (threads > 0) omp_set_num_threads(threads);
  constexpr size_t kAlign = size_t{2} << 20, kBlock = 64;  // floats per inner step
  const size_t bytes = std::max<size_t>(mib, 64) << 20, n = bytes / sizeof(float);
  float* buf = static_cast<float*>(std::aligned_alloc(kAlign, bytes));
  if (!buf) {
    std::fprintf(stderr, "read_bandwidth: cannot allocate %zu bytes\n", bytes);
    return 1;
  }
  bool huge = false;
#ifdef __linux__
  huge = madvise(buf, bytes, MADV_HUGEPAGE) == 0;
#endif
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = static_cast<float>(i & 1023);  // first touch per thread

  double best = 1e30, sink = 0;
  for (int p = 0; p < passes; ++p) {
    const auto t0 = std::chrono::steady_clock::now();
    double total = 0;
#pragma omp parallel reduction(+ : total)
    {
      const size_t T = static_cast<size_t>(omp_get_num_threads()), t = static_cast<size_t>(omp_get_thread_num());
      const size_t blocks = n / kBlock, b0 = blocks * t / T, b1 = blocks * (t + 1) / T;
      // Eight 8-float vector accumulators (GCC/Clang vector extensions: AVX registers).
      typedef float v8 __attribute__((vector_size(32)));
      const v8* v = reinterpret_cast<const v8*>(buf);
      v8 a0 = {}, a1 = {}, a2 = {}, a3 = {}, a4 = {}, a5 = {}, a6 = {}, a7 = {};
      for (size_t b = b0; b < b1; ++b) {
        const v8* q = v + b * 8;
        a0 += q[0]; a1 += q[1]; a2 += q[2]; a3 += q[3];
        a4 += q[4]; a5 += q[5]; a6 += q[6]; a7 += q[7];
      }
      const v8 a = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
      double s = 0;
      for (int j = 0; j < 8; ++j) s += a[j];
      total += s;
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    sink += total;
  }
  std::free(buf);
  const double gbs = static_cast<double>(bytes) / best / 1e9;
  std::printf("read bandwidth %.2f GB/s (%zu MiB of floats, %d threads, best of %d passes)%s\n", gbs,
              bytes >> 20, omp_get_max_threads(), passes, sink == 0.5 ? " " : "");
  std::printf("{\"read_gbs\": %.3f, \"bytes\": %zu, \"threads\": %d, \"passes\": %d, \"huge_pages\": %s}\n",
              gbs, bytes, omp_get_max_threads(), passes, huge ? "true" : "false");
  return 0;
}
