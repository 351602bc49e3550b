// Read bandwidth by access pattern (CPU): why the decoding kernels (kernels/cpu/small_gemm.cpp)
// prefetch a thread's next block of weight rows whole instead of each row a few lines ahead.
// All OpenMP threads read a 1 GiB buffer (huge pages requested) as a decoding tile of one x row
// does: blocks of R weight rows of B bytes, taken by the threads in chunks of about 1 MiB, each
// block walked a 64-byte line of every row at a time. Patterns:
//   sequential                  each thread its share, in address order (the reference)
//   R rows interleaved          the tile's walk, nothing prefetched
//   ... + rows ahead D          each row prefetched D bytes ahead of its loads (prefetcht0)
//   ... + next block            the thread's next block prefetched in address order, one line
//                               per line loaded (prefetcht0): memory sees one stream per thread
// Prints GB/s, best of a few passes, and the ratio to sequential measured next to it.
//
// Usage: read_patterns [--threads T] [--rows R] [--row-bytes B] [--passes N]
#include <immintrin.h>
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

namespace {

enum class Prefetch { None, RowsAhead, NextBlock };

// Sums the buffer's 64-bit words in the given pattern; returns the sum (kept by the caller).
uint64_t read_blocks(const char* buf, size_t bytes, size_t row_bytes, int rows, Prefetch pf,
                     size_t ahead) {
  const size_t block = row_bytes * static_cast<size_t>(rows), blocks = bytes / block;
  const size_t per_chunk = std::max<size_t>(1, (size_t{1} << 20) / block);
  uint64_t total = 0;
#pragma omp parallel for schedule(dynamic, per_chunk) reduction(+ : total)
  for (size_t b = 0; b < blocks; ++b) {
    const char* p = buf + b * block;
    const bool next_mine = (b + 1) % per_chunk != 0 && b + 1 < blocks;
    const char* q = p + block;  // the next block's lines, one per line loaded
    const char* q_end = next_mine && pf == Prefetch::NextBlock ? q + block : q;
    uint64_t s0 = 0, s1 = 0;
    for (size_t off = 0; off < row_bytes; off += 64)
      for (int j = 0; j < rows; ++j) {
        const char* line = p + j * row_bytes + off;
        if (pf == Prefetch::RowsAhead && off + ahead < row_bytes) _mm_prefetch(line + ahead, _MM_HINT_T0);
        if (q < q_end) _mm_prefetch(q, _MM_HINT_T0), q += 64;
        const auto* w = reinterpret_cast<const uint64_t*>(line);
        s0 += w[0] + w[2] + w[4] + w[6];
        s1 += w[1] + w[3] + w[5] + w[7];
      }
    total += s0 + s1;
  }
  return total;
}

uint64_t read_sequential(const char* buf, size_t bytes) {
  const auto* w = reinterpret_cast<const uint64_t*>(buf);
  const size_t n = bytes / sizeof(uint64_t);
  uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (size_t i = 0; i < n; ++i) total += w[i];
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0, rows = 6, passes = 5;
  size_t row_bytes = 4096;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rows")) rows = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--row-bytes")) row_bytes = static_cast<size_t>(std::atol(argv[i + 1]));
    else if (!std::strcmp(argv[i], "--passes")) passes = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: read_patterns [--threads T] [--rows R] [--row-bytes B] [--passes N]\n");
      return 2;
    }
  }
  if ((argc - 1) % 2 || rows < 1 || rows > 64 || row_bytes < 64 || row_bytes % 64 || passes < 1) {
    std::fprintf(stderr, "read_patterns: want --rows 1..64, --row-bytes a multiple of 64, --passes >= 1\n");
    return 2;
  }
  if (threads > 0) omp_set_num_threads(threads);
  const size_t bytes = size_t{1} << 30;
  char* buf = static_cast<char*>(std::aligned_alloc(size_t{2} << 20, bytes));
  if (!buf) {
    std::fprintf(stderr, "read_patterns: cannot allocate %zu bytes\n", bytes);
    return 1;
  }
#ifdef __linux__
  madvise(buf, bytes, MADV_HUGEPAGE);
#endif
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < bytes; i += 4096) std::memset(buf + i, static_cast<int>(i >> 12), 4096);

  uint64_t sink = 0;
  auto gbs = [&](auto&& read) {
    double best = 1e30;
    for (int p = 0; p < passes; ++p) {
      const auto t0 = std::chrono::steady_clock::now();
      sink += read();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return static_cast<double>(bytes) / best / 1e9;
  };
  auto seq = [&] { return read_sequential(buf, bytes); };
  std::printf("threads %d, 1 GiB, blocks of %d rows of %zu bytes, best of %d passes\n", omp_get_max_threads(),
              rows, row_bytes, passes);
  std::printf("%-34s %8s %14s\n", "pattern", "GB/s", "÷ sequential");
  struct Case {
    const char* name;
    Prefetch pf;
    size_t ahead;
  };
  const Case cases[] = {{"rows interleaved", Prefetch::None, 0},
                        {"rows interleaved + rows ahead 256", Prefetch::RowsAhead, 256},
                        {"rows interleaved + rows ahead 1024", Prefetch::RowsAhead, 1024},
                        {"rows interleaved + next block", Prefetch::NextBlock, 0}};
  for (const Case& c : cases) {
    const double s = gbs(seq);
    const double g = gbs([&] { return read_blocks(buf, bytes, row_bytes, rows, c.pf, c.ahead); });
    std::printf("%-34s %8.1f %14.2f   (sequential next to it %.1f)\n", c.name, g, g / s, s);
  }
  if (sink == 42) std::printf(" ");
  std::free(buf);
  return 0;
}
