// Linear layers on a few rows (decoding) at the memory-bandwidth floor: see small_gemm.h.
//
// Work split: the weight rows (output columns) are cut into blocks of rw rows (6 or 3, see run;
// then single rows for the remainder), which the OpenMP threads take in chunks of consecutive
// weights (up to 1 MiB for n ≤ 4, 128 KiB otherwise), so that each weight is streamed from
// memory once. A block is multiplied with the rows of x in tiles of up to 4 x rows: the tile
// keeps rx × rw accumulators of 8 fp32 lanes in registers and, for each step of 8 along k, loads
// rw weight vectors (widening BF16 / F16 in registers) and one x vector per x row, so each weight
// load feeds rx FMAs and each x load rw. x is F32 (16-bit x is converted once per call: n·k
// values, small next to m·k).
//
// n = 1..4 (one tile of x rows) is bound by memory, and memory delivers one sequential stream
// per core faster than any interleaving of rows: on a Zen 5 host a plain read of 6 rows of 4 KiB
// side by side ran at 0.56 of a sequential read, 0.79 with the thread's next block prefetched
// whole (bench/RESULTS.md). Where the CPU has AVX-512 a thread therefore reads its weight rows
// one after another (stream_rows), each row's lines 4 KiB ahead prefetched into L2, with two
// FMA chains per row for 16-bit weights; the 1b model's layers then ran within a few % of a plain
// sum over the same bytes. The AVX2 tiles have too few lanes for one row to keep up with memory
// on one chain; they read blocks of rw rows side by side, and where a block fits in L1 prefetch
// the thread's next block from start to end, into L1, spread over their steps, so that memory
// sees one stream. The first block of a thread's chunk, which nothing prefetched, and blocks too
// large for this prefetch each of their rows a few lines ahead instead. With more rows each block
// is read by several tiles and the call is bound by feeding the FMAs; the tiles of a block then
// share out the next block's lines into L2, so that the first tile of a block does not wait on
// memory. F32 weights with more rows go through block_f32_chunked on AVX2 (k in L1-sized
// chunks, an assembly tile; see there).
//
// The AVX2/FMA/F16C kernels are compiled with target attributes and chosen at run time, so the
// file builds without -march flags; other CPUs take a scalar loop with the same per-element order
// (a product rounded before the add where the vector code fuses them). CPUs with AVX-512 take
// 16-lane twins of the tiles instead (and 4 × 6 tiles for F32 with more rows in place of the
// chunked assembly tile), with two accumulators per pair for 16-bit weights: one order again on
// such a CPU (see the AVX-512 section). BF16 on a CPU with the AVX-512 BF16 units takes VDPBF16PS
// with x as BF16 instead (the same tiles and streams; see that section).
#include "kernels/cpu/small_gemm.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/vec_math.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GLMRT_SMALL_GEMM_X86 1
#define GLMRT_AVX2_FMA __attribute__((target("avx2,fma,f16c")))
#endif

namespace glmrt::cpu {

namespace {

// Below this many multiply-adds (n·m·k) a call runs on the calling thread: an OpenMP fork costs
// more than the work.
constexpr int64_t parallel_min_work = int64_t{1} << 18;
// Threads take the weight rows in chunks of about this many bytes: long enough sequential runs
// for the memory system, short enough that a thread the OS delays does not hold up the call.
// Memory-bound calls (n ≤ 4) take longer chunks while each thread still gets four or more: a
// chunk's first block is read without the next-block prefetch (on 8192 × 2048 BF16 weights,
// 1 MiB chunks took about 0.9× the time of 128 KiB ones).
constexpr int64_t chunk_bytes = int64_t{128} << 10;
constexpr int64_t chunk_bytes_memory_bound = int64_t{1} << 20;
// How far ahead of its loads a memory-bound tile prefetches each weight row.
constexpr int64_t rows_ahead_bytes = 256;
// How far ahead of its loads the AVX-512 one-row kernel (n ≤ 4) prefetches its stream into L2
// (4 and 8 KiB measured alike on Zen 5; 256 bytes, into L1, ~5% slower).
constexpr int64_t stream_ahead_bytes = 4096;

template <class T>
T narrow(float v);
template <>
float narrow<float>(float v) { return v; }
template <>
bf16 narrow<bf16>(float v) { return float_to_bf16(v); }
template <>
f16 narrow<f16>(float v) { return float_to_f16(v); }

// Which kernels a call runs.
enum class Path { Portable, Avx2, Avx512, Avx512Bf16 };

// One call's operands: x as F32 rows (the caller's, or a converted copy), w and y in T.
template <class T>
struct Operands {
  const float* x;     // [n, k]
  const T* w;         // [m, k]
  T* y;               // [n, m]
  const void* bias;   // [m] or null
  DType bias_dtype;   // F32 or T's dtype
  int64_t n, m, k;
  int64_t ldx;        // x's row stride (≥ k)
  const bf16* xb = nullptr;  // Path::Avx512Bf16: x as BF16 rows (stride ldx), zero-padded to 32
};

float bias_at(const void* bias, DType dtype, int64_t j) {
  switch (dtype) {
    case DType::BF16: return bf16_to_float(static_cast<const bf16*>(bias)[j]);
    case DType::F16: return f16_to_float(static_cast<const f16*>(bias)[j]);
    default: return static_cast<const float*>(bias)[j];
  }
}

// y[i0 .. i0+rx, j0 .. j0+rw] = sums (row-major rx × rw) + bias, rounded once to T.
template <class T>
void store_tile(const Operands<T>& op, int64_t i0, int rx, int64_t j0, int rw, const float* sums) {
  for (int i = 0; i < rx; ++i) {
    T* row = op.y + (i0 + i) * op.m + j0;
    for (int j = 0; j < rw; ++j) {
      float v = sums[i * rw + j];
      if (op.bias) v += bias_at(op.bias, op.bias_dtype, j0 + j);
      row[j] = narrow<T>(v);
    }
  }
}

// ---- Portable path ---------------------------------------------------------------------------

// Σ_l x[l]·w[l] in the vector kernels' order: 8 lanes over l mod 8, then ((0+4)+(2+6))+((1+5)+(3+7)).
template <class T>
float dot_scalar(const float* x, const T* w, int64_t k) {
  float lane[8] = {};
  for (int64_t l = 0; l < k; ++l) lane[l & 7] += x[l] * widen(w[l]);
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

template <class T>
void block_scalar(const Operands<T>& op, int64_t j0, int rw) {
  for (int64_t i = 0; i < op.n; ++i)
    for (int j = 0; j < rw; ++j) {
      const float s = dot_scalar(op.x + i * op.ldx, op.w + (j0 + j) * op.k, op.k);
      store_tile(op, i, 1, j0 + j, 1, &s);
    }
}

// ---- AVX2 / FMA / F16C path ------------------------------------------------------------------
#ifdef GLMRT_SMALL_GEMM_X86

// The last r < 8 values, zeros after them (reads nothing past p + r).
template <class T>
GLMRT_AVX2_FMA inline __m256 load_partial(const T* p, int64_t r) {
  alignas(32) float t[8] = {};
  for (int64_t i = 0; i < r; ++i) t[i] = widen(p[i]);
  return _mm256_load_ps(t);
}
// acc[i][j] += x row i · w row j over the 8 values at l, lane by lane.
template <int RX, int RW, class T>
GLMRT_AVX2_FMA inline void fma_step(__m256 (&acc)[RX][RW], const float* x, int64_t ldx, const T* w,
                                    int64_t k, int64_t l) {
  __m256 wv[RW];
  for (int j = 0; j < RW; ++j) {
    wv[j] = load8(w + j * k + l);
    // Keeps the weight vector in a register: left alone, GCC folds the loads into the FMAs of a
    // 4 × 3 tile (all 16 ymm registers live) and loads each weight once per x row (16 loads per
    // 12 FMAs instead of 7), which caps the tile at about 60% of the FMA peak. (With one x row
    // each weight is used once: the folded load is the better code.)
    if constexpr (RX > 1) asm("" : "+x"(wv[j]));
  }
  for (int i = 0; i < RX; ++i) {
    const __m256 xv = _mm256_loadu_ps(x + i * ldx + l);
    for (int j = 0; j < RW; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
  }
}

// acc[i][j] += x row i · w row j over the r < 8 values at l, zero-padded (a row's last k % 8).
template <int RX, int RW, class T>
GLMRT_AVX2_FMA inline void fma_tail(__m256 (&acc)[RX][RW], const float* x, int64_t ldx, const T* w,
                                    int64_t k, int64_t l, int64_t r) {
  __m256 wv[RW];
  for (int j = 0; j < RW; ++j) wv[j] = load_partial(w + j * k + l, r);
  for (int i = 0; i < RX; ++i) {
    const __m256 xv = load_partial(x + i * ldx + l, r);
    for (int j = 0; j < RW; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
  }
}

// What a tile prefetches while it computes.
struct Prefetch {
  // Lines of the next block, in order, spread over the tile's steps: into L1 (`to_l1`: the
  // block's only tile, bound by memory) or L2 (one of several tiles of a block).
  const char* begin = nullptr;
  int64_t lines = 0;
  bool to_l1 = false;
  // Each weight row of this block a few lines ahead of the loads (a block nothing prefetched,
  // or one too large to be prefetched whole), running on into the same row of the next block
  // near the row's end when `into_next_block`. The hardware prefetcher stops at every 4 KiB
  // page, and a row of 2048 16-bit weights is one.
  bool rows_ahead = false;
  bool into_next_block = false;
};

// A tile's prefetching as it walks k a cache line of each weight row at a time (the part shared
// by the AVX2 and AVX-512 tiles): `at(l)` before the line at l.
template <int RW, class T>
struct PrefetchWalk {
  static constexpr int64_t line = 64 / sizeof(T), ahead = rows_ahead_bytes / sizeof(T);
  const T* w;
  int64_t k;
  Prefetch pf;
  int64_t per_line;  // L2 prefetches per line step
  const char* p;
  const char* p_end;
  PrefetchWalk(const T* w_, int64_t k_, Prefetch pf_)
      : w(w_), k(k_), pf(pf_), per_line((pf_.lines + std::max<int64_t>(1, k_ / line) - 1) / std::max<int64_t>(1, k_ / line)),
        p(pf_.begin), p_end(pf_.begin + pf_.lines * 64) {}
  void at(int64_t l) {
    if (pf.to_l1)
      for (int64_t q = 0; q < per_line && p < p_end; ++q, p += 64) _mm_prefetch(p, _MM_HINT_T0);
    else
      for (int64_t q = 0; q < per_line && p < p_end; ++q, p += 64) _mm_prefetch(p, _MM_HINT_T1);
    if (pf.rows_ahead && (l + ahead < k || pf.into_next_block)) {
      const int64_t a = l + ahead < k ? l + ahead : l + ahead + (RW - 1) * k;
      for (int j = 0; j < RW; ++j) _mm_prefetch(reinterpret_cast<const char*>(w + j * k + a), _MM_HINT_T0);
    }
  }
};

// sums[i·RW + j] = x row i · w row j for RX rows of x (stride ldx) and RW rows of w (stride k).
// Steps along k go a cache line of each weight row at a time (16 F32 or 32 16-bit weights).
template <int RX, int RW, class T>
GLMRT_AVX2_FMA void tile_avx2(const float* x, int64_t ldx, const T* w, int64_t k, float* sums,
                              Prefetch pf) {
  constexpr int64_t line = PrefetchWalk<RW, T>::line;
  PrefetchWalk<RW, T> prefetch(w, k, pf);
  __m256 acc[RX][RW];
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t l = 0;
  for (; l + line <= k; l += line) {
    prefetch.at(l);
#pragma GCC unroll 1  // unrolled, the 4 × 3 tiles run out of registers
    for (int64_t s = 0; s < line; s += 8) fma_step(acc, x, ldx, w, k, l + s);
  }
  for (; l + 8 <= k; l += 8) fma_step(acc, x, ldx, w, k, l);
  if (l < k) fma_tail(acc, x, ldx, w, k, l, k - l);
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) sums[i * RW + j] = horizontal_sum(acc[i][j]);
}

// ---- AVX-512 path ------------------------------------------------------------------------------
// Where the CPU has AVX-512 (F, BW, VL, DQ) every path takes 16 fp32 lanes over k in steps of 16
// (the k % 16 tail through masked loads, which read nothing past the row), then adds lanes j and
// j + 8 and sums the 8 lanes as the AVX2 path does: again one fixed order for every n, tile and
// thread count on such a CPU (its results differ from an AVX2 CPU's in the last bits). Half the
// instructions per weight: at 50-84 GB/s two AVX2 cores widening 16-bit weights fall behind
// memory (a Zen 5 host, bench/RESULTS.md).
#define GLMRT_AVX512 GLMRT_VEC_MATH_AVX512  // load16, load16_first, horizontal_sum16: vec_math.h

// acc[i][j][H] += x row i · w row j over the 16 values at l (r < 16: the first r, zero-padded).
template <int H, int RX, int RW, class T>
GLMRT_AVX512 inline void fma_step16(__m512 (&acc)[RX][RW][2], const float* x, int64_t ldx, const T* w,
                                    int64_t k, int64_t l, int64_t r = 16) {
  __m512 wv[RW];
  for (int j = 0; j < RW; ++j) {
    wv[j] = r == 16 ? load16(w + j * k + l) : load16_first(w + j * k + l, r);
    if constexpr (RX > 1) asm("" : "+v"(wv[j]));  // as in fma_step
  }
  for (int i = 0; i < RX; ++i) {
    const __m512 xv = r == 16 ? _mm512_loadu_ps(x + i * ldx + l) : load16_first(x + i * ldx + l, r);
    for (int j = 0; j < RW; ++j) acc[i][j][H] = _mm512_fmadd_ps(xv, wv[j], acc[i][j][H]);
  }
}

// Accumulators per (x row, weight row) pair of the AVX-512 tiles: two for 16-bit weights, one
// for F32. With one, a weight row is one chain of FMAs, each waiting on the last: ~32 GB/s per
// core at 32 bytes of 16-bit weights per FMA, below what memory delivers to one stream (n ≤ 4
// reads one row at a time), while an F32 FMA takes 64 bytes. F32 keeps one because its batch
// tiles need them all: 4 × 6 tiles of one accumulator ran its batch-16 rate ~1.15× that of
// 4 × 3 tiles of two (k in L1-sized chunks or not).
template <class T>
inline constexpr int avx512_chains = sizeof(T) == 2 ? 2 : 1;

// sums[i·RW + j] = x row i · w row j with 16 lanes and C = avx512_chains<T> accumulators per
// pair: steps of 16·C values (one cache line of weights), the c-th 16 into accumulator c; then
// (C = 2) a last k % 32 of 16 or more takes a full step of 16 into accumulator 0 and the rest,
// masked, into 1, a shorter one goes masked into 0 (C = 1: the last k % 16, masked). The
// accumulators are added lane by lane and summed as in horizontal_sum16. Stream: prefetch the
// weights stream_ahead_bytes ahead into L2 (one weight row); otherwise through `walk`.
template <bool Stream, int RX, int RW, class T>
GLMRT_AVX512 inline __attribute__((always_inline)) void tile_avx512_impl(
    const float* x, int64_t ldx, const T* w, int64_t k, float* sums, PrefetchWalk<RW, T>* walk) {
  constexpr int C = avx512_chains<T>;
  __m512 acc[RX][RW][2];
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) acc[i][j][0] = acc[i][j][1] = _mm512_setzero_ps();
  const char* ahead = reinterpret_cast<const char*>(w) + stream_ahead_bytes;
  int64_t l = 0;
  for (; l + 16 * C <= k; l += 16 * C) {
    if constexpr (Stream) _mm_prefetch(ahead + l * static_cast<int64_t>(sizeof(T)), _MM_HINT_T1);
    else walk->at(l);
    fma_step16<0>(acc, x, ldx, w, k, l);
    if constexpr (C == 2) fma_step16<1>(acc, x, ldx, w, k, l + 16);
  }
  if (C == 2 && k - l >= 16) {
    fma_step16<0>(acc, x, ldx, w, k, l);
    l += 16;
    if (l < k) fma_step16<1>(acc, x, ldx, w, k, l, k - l);
  } else if (l < k) {
    fma_step16<0>(acc, x, ldx, w, k, l, k - l);
  }
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j)
      sums[i * RW + j] =
          horizontal_sum16(C == 2 ? _mm512_add_ps(acc[i][j][0], acc[i][j][1]) : acc[i][j][0]);
}

template <int RX, int RW, class T>
GLMRT_AVX512 void tile_avx512(const float* x, int64_t ldx, const T* w, int64_t k, float* sums,
                              Prefetch pf) {
  PrefetchWalk<RW, T> prefetch(w, k, pf);
  tile_avx512_impl<false, RX, RW>(x, ldx, w, k, sums, &prefetch);
}

// A stream's first stream_ahead_bytes (from weight row j0) into L2, before it starts.
template <class T>
inline void prefetch_stream_start(const Operands<T>& op, int64_t j0) {
  const auto* begin = reinterpret_cast<const char*>(op.w + j0 * op.k);
  for (int64_t b = 0; b < stream_ahead_bytes; b += 64) _mm_prefetch(begin + b, _MM_HINT_T1);
}
// Before weight row j of a stream: the bias line 64 rows ahead, once per 16 rows.
template <class T>
inline void prefetch_bias_ahead(const Operands<T>& op, int64_t j) {
  if (op.bias && j % 16 == 0)
    _mm_prefetch(static_cast<const char*>(op.bias) + (j + 64) * dtype_size(op.bias_dtype), _MM_HINT_T0);
}

// Weight rows [j0, j1) one at a time against the n ≤ 4 rows of x (one tile), each row read as
// one stream with the lines 4 KiB ahead prefetched into L2, the same arithmetic as tile_avx512.
// On Zen 5 the 1b model's BF16 layers ran at 0.94× the time of 3-row blocks with the next block
// prefetched whole into L1 (within a few % of a plain sum over the same weights;
// bench/RESULTS.md): memory delivers one stream per core faster than any interleaving of rows,
// however it is prefetched.
template <int RX, class T>
GLMRT_AVX512 void stream_rows_avx512(const Operands<T>& op, int64_t j0, int64_t j1) {
  prefetch_stream_start(op, j0);
  float sums[RX];
  for (int64_t j = j0; j < j1; ++j) {
    prefetch_bias_ahead(op, j);
    tile_avx512_impl<true, RX, 1, T>(op.x, op.ldx, op.w + j * op.k, op.k, sums, nullptr);
    store_tile(op, 0, RX, j, 1, sums);
  }
}

// ---- AVX-512 BF16 units (BF16 weights and x) --------------------------------------------------
// Where the CPU has them, BF16 × BF16 takes VDPBF16PS: per 32-bit lane, two fused multiply-adds
// of exact products, the odd value's first, denormal inputs read as 0 and denormal results
// flushed to 0 (the instruction's definition, checked on Zen 5). The products are those of the
// widening path (a product of two BF16 values is exact in fp32); the order per pair: 16 lanes over
// steps of 32 values, lane t of a step taking values 2t + 1 then 2t, steps alternating between two
// accumulators, the last step with the weights past k masked to zero (x rows are zero-padded);
// then the two accumulators added lane by lane and summed as in horizontal_sum16, + bias, one
// rounding. Half the instructions of widening the weights: batch tiles ~2× the FMA rate.
#define GLMRT_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))

// acc[i][j][H] += the products of x row i and w row j over the 32 values at l (the first r of
// the weights; x is zero-padded there).
template <int H, int RX, int RW>
GLMRT_AVX512_BF16 inline void dp_step(__m512 (&acc)[RX][RW][2], const bf16* x, int64_t ldx,
                                      const bf16* w, int64_t k, int64_t l, int64_t r = 32) {
  __m512i wv[RW];
  for (int j = 0; j < RW; ++j) {
    wv[j] = r == 32 ? _mm512_loadu_si512(w + j * k + l)
                    : _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t{1} << r) - 1), w + j * k + l);
    if constexpr (RX > 1) asm("" : "+v"(wv[j]));  // as in fma_step
  }
  for (int i = 0; i < RX; ++i) {
    const __m512i xv = _mm512_loadu_si512(x + i * ldx + l);
    for (int j = 0; j < RW; ++j)
      acc[i][j][H] = _mm512_dpbf16_ps(acc[i][j][H], (__m512bh)xv, (__m512bh)wv[j]);
  }
}

template <bool Stream, int RX, int RW>
GLMRT_AVX512_BF16 inline __attribute__((always_inline)) void tile_dp_impl(
    const bf16* x, int64_t ldx, const bf16* w, int64_t k, float* sums, PrefetchWalk<RW, bf16>* walk) {
  __m512 acc[RX][RW][2];
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) acc[i][j][0] = acc[i][j][1] = _mm512_setzero_ps();
  const char* ahead = reinterpret_cast<const char*>(w) + stream_ahead_bytes;
  int64_t l = 0;
  for (; l + 64 <= k; l += 64) {  // two steps, two cache lines of each weight row
    if constexpr (Stream) {
      _mm_prefetch(ahead + 2 * l, _MM_HINT_T1);
      _mm_prefetch(ahead + 2 * l + 64, _MM_HINT_T1);
    } else {
      walk->at(l);
      walk->at(l + 32);
    }
    dp_step<0>(acc, x, ldx, w, k, l);
    dp_step<1>(acc, x, ldx, w, k, l + 32);
  }
  if (k - l > 32) {
    dp_step<0>(acc, x, ldx, w, k, l);
    dp_step<1>(acc, x, ldx, w, k, l + 32, k - l - 32);
  } else if (l < k) {
    dp_step<0>(acc, x, ldx, w, k, l, k - l);
  }
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j)
      sums[i * RW + j] = horizontal_sum16(_mm512_add_ps(acc[i][j][0], acc[i][j][1]));
}

template <int RX, int RW>
GLMRT_AVX512_BF16 void tile_dp(const bf16* x, int64_t ldx, const bf16* w, int64_t k, float* sums,
                               Prefetch pf) {
  PrefetchWalk<RW, bf16> prefetch(w, k, pf);
  tile_dp_impl<false, RX, RW>(x, ldx, w, k, sums, &prefetch);
}

// stream_rows_avx512 on the BF16 units.
template <int RX>
GLMRT_AVX512_BF16 void stream_rows_dp(const Operands<bf16>& op, int64_t j0, int64_t j1) {
  prefetch_stream_start(op, j0);
  float sums[RX];
  for (int64_t j = j0; j < j1; ++j) {
    prefetch_bias_ahead(op, j);
    tile_dp_impl<true, RX, 1>(op.xb, op.ldx, op.w + j * op.k, op.k, sums, nullptr);
    store_tile(op, 0, RX, j, 1, sums);
  }
}

template <class T>
void stream_rows(const Operands<T>& op, int64_t j0, int64_t j1, Path path) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (path == Path::Avx512Bf16) {
      switch (op.n) {
        case 1: return stream_rows_dp<1>(op, j0, j1);
        case 2: return stream_rows_dp<2>(op, j0, j1);
        case 3: return stream_rows_dp<3>(op, j0, j1);
        default: return stream_rows_dp<4>(op, j0, j1);
      }
    }
  }
  switch (op.n) {
    case 1: return stream_rows_avx512<1>(op, j0, j1);
    case 2: return stream_rows_avx512<2>(op, j0, j1);
    case 3: return stream_rows_avx512<3>(op, j0, j1);
    default: return stream_rows_avx512<4>(op, j0, j1);
  }
}

// One tile of x rows [i, i + RX) through the AVX2, (Wide) the AVX-512 or (Dp, BF16) the AVX-512
// BF16 kernel.
template <bool Wide, bool Dp, int RX, int RW, class T>
inline void tile_vec(const Operands<T>& op, int64_t i, const T* w, float* sums, Prefetch pf) {
  if constexpr (Dp) tile_dp<RX, RW>(op.xb + i * op.ldx, op.ldx, w, op.k, sums, pf);
  else if constexpr (Wide) tile_avx512<RX, RW>(op.x + i * op.ldx, op.ldx, w, op.k, sums, pf);
  else tile_avx2<RX, RW>(op.x + i * op.ldx, op.ldx, w, op.k, sums, pf);
}

// Weight rows [j0, j0 + RW) against every row of x, in tiles of up to RX_MAX x rows.
// `prefetch_next`: the next RW weight rows are this thread's next block, worth prefetching.
// `first`: the first block of the thread's chunk (no earlier block prefetched it).
template <int RW, int RX_MAX, bool Wide, bool Dp = false, class T>
void block_vec(const Operands<T>& op, int64_t j0, bool prefetch_next, bool first) {
  const int64_t k = op.k, tiles = (op.n + RX_MAX - 1) / RX_MAX;
  // One tile: the next block whole into L1 where a block fits there, else each row a few lines
  // ahead.
  const bool sequential = tiles == 1 && fits_l1(RW * k * static_cast<int64_t>(sizeof(T)));
  const T* w = op.w + j0 * k;
  // The tiles share out the next block's lines, from the one holding its first byte.
  const auto next = reinterpret_cast<uintptr_t>(w + RW * k);
  const auto next_line = reinterpret_cast<const char*>(next & ~uintptr_t{63});
  const int64_t lines =
      prefetch_next
          ? static_cast<int64_t>((next + RW * k * sizeof(T) - (next & ~uintptr_t{63}) + 63) / 64)
          : 0;
  auto share = [&](int64_t t) {  // tile t's prefetch
    const int64_t b = t * lines / tiles, e = (t + 1) * lines / tiles;
    if (tiles > 1) return Prefetch{next_line + b * 64, e - b, false, false, false};
    if (!sequential) return Prefetch{nullptr, 0, false, true, prefetch_next};
    return Prefetch{next_line, lines, true, first, false};
  };
  // The bias of the block after next: one cache line serves 16 or 32 blocks' worth of columns,
  // but left to its demand load each line is a full memory latency that nothing hides.
  if (op.bias && prefetch_next)
    _mm_prefetch(static_cast<const char*>(op.bias) + (j0 + 2 * RW) * dtype_size(op.bias_dtype),
                 _MM_HINT_T0);
  float sums[RX_MAX * RW];
  int64_t i = 0;
  for (; i + RX_MAX <= op.n; i += RX_MAX) {
    tile_vec<Wide, Dp, RX_MAX, RW>(op, i, w, sums, share(i / RX_MAX));
    store_tile(op, i, RX_MAX, j0, RW, sums);
  }
  const int rest = static_cast<int>(op.n - i);
  if (rest == 0) return;
  const Prefetch pf = share(i / RX_MAX);
  if constexpr (RX_MAX > 3) {
    if (rest == 3) tile_vec<Wide, Dp, 3, RW>(op, i, w, sums, pf);
  }
  if constexpr (RX_MAX > 2) {
    if (rest == 2) tile_vec<Wide, Dp, 2, RW>(op, i, w, sums, pf);
  }
  if (rest == 1) tile_vec<Wide, Dp, 1, RW>(op, i, w, sums, pf);
  store_tile(op, i, rest, j0, RW, sums);
}

// ---- F32 weights, several tiles of x rows: k in chunks (x86-64) -----------------------------
#if defined(__x86_64__)
#define GLMRT_SMALL_GEMM_F32_CHUNKED 1
// With more than one tile of x rows the F32 kernel is bound by how fast the core is fed, not by
// memory: a 4 × 3 tile over the whole of k reads its 4 x rows and 3 weight rows from L2 (neither
// fits in L1 next to the other), 7 vector loads per 12 FMAs, which L2 cannot deliver at the FMA
// rate. Here a block's 3 weight rows are taken in chunks of f32_chunk values: a chunk
// (3 × 2 KiB) stays in L1 while every tile of x rows passes over it, so only the x rows come from
// L2 (4 loads per 12 FMAs); the tiles' accumulators wait in memory between chunks. The x rows
// are a padded copy (row stride not a multiple of 4 KiB, so that they do not all fall into the
// same L1 sets). The first tile of each chunk prefetches the next chunk (after the last chunk,
// the next block's first). Each lane sees the same FMAs in the same order as in tile_avx2: the
// results are bit-identical to the other paths.
constexpr int64_t f32_chunk = 512;

// acc (4 x rows × 3 weight rows × 8 lanes, row-major) += 2·pairs steps of 8 values from x
// (4 rows, ldx bytes apart) and w (3 rows, ldw bytes apart). Each pair of steps also prefetches
// the 64 bytes at pf + r·ldw for r < prefetch_rows (0, 1 or 3), then advances pf by 64. Written
// in assembly because the tile needs all 16 ymm registers (12 accumulators, 3 weights, 1 x):
// from intrinsics GCC spills accumulators around the loop or folds the weight loads into the
// FMAs (each weight loaded 4 times).
#define GLMRT_MK4X3_STEP(off)                         \
  "vmovups " off "(%[w]), %%ymm12\n\t"                \
  "vmovups " off "(%[w],%[ldw]), %%ymm13\n\t"         \
  "vmovups " off "(%[w],%[ldw],2), %%ymm14\n\t"       \
  "vmovups " off "(%[x]), %%ymm15\n\t"                \
  "vfmadd231ps %%ymm15, %%ymm12, %%ymm0\n\t"          \
  "vfmadd231ps %%ymm15, %%ymm13, %%ymm1\n\t"          \
  "vfmadd231ps %%ymm15, %%ymm14, %%ymm2\n\t"          \
  "vmovups " off "(%[x],%[ldx]), %%ymm15\n\t"         \
  "vfmadd231ps %%ymm15, %%ymm12, %%ymm3\n\t"          \
  "vfmadd231ps %%ymm15, %%ymm13, %%ymm4\n\t"          \
  "vfmadd231ps %%ymm15, %%ymm14, %%ymm5\n\t"          \
  "vmovups " off "(%[x],%[ldx],2), %%ymm15\n\t"       \
  "vfmadd231ps %%ymm15, %%ymm12, %%ymm6\n\t"          \
  "vfmadd231ps %%ymm15, %%ymm13, %%ymm7\n\t"          \
  "vfmadd231ps %%ymm15, %%ymm14, %%ymm8\n\t"          \
  "vmovups " off "(%[x3]), %%ymm15\n\t"               \
  "vfmadd231ps %%ymm15, %%ymm12, %%ymm9\n\t"          \
  "vfmadd231ps %%ymm15, %%ymm13, %%ymm10\n\t"         \
  "vfmadd231ps %%ymm15, %%ymm14, %%ymm11\n\t"

#define GLMRT_MK4X3_LOAD_ACC                                                                  \
  "vmovups 0(%[acc]), %%ymm0\n\t"                                                             \
  "vmovups 32(%[acc]), %%ymm1\n\t"                                                            \
  "vmovups 64(%[acc]), %%ymm2\n\t"                                                            \
  "vmovups 96(%[acc]), %%ymm3\n\t"                                                            \
  "vmovups 128(%[acc]), %%ymm4\n\t"                                                           \
  "vmovups 160(%[acc]), %%ymm5\n\t"                                                           \
  "vmovups 192(%[acc]), %%ymm6\n\t"                                                           \
  "vmovups 224(%[acc]), %%ymm7\n\t"                                                           \
  "vmovups 256(%[acc]), %%ymm8\n\t"                                                           \
  "vmovups 288(%[acc]), %%ymm9\n\t"                                                           \
  "vmovups 320(%[acc]), %%ymm10\n\t"                                                          \
  "vmovups 352(%[acc]), %%ymm11\n\t"
#define GLMRT_MK4X3_STORE_ACC                                                                 \
  "vmovups %%ymm0, 0(%[acc])\n\t"                                                             \
  "vmovups %%ymm1, 32(%[acc])\n\t"                                                            \
  "vmovups %%ymm2, 64(%[acc])\n\t"                                                            \
  "vmovups %%ymm3, 96(%[acc])\n\t"                                                            \
  "vmovups %%ymm4, 128(%[acc])\n\t"                                                           \
  "vmovups %%ymm5, 160(%[acc])\n\t"                                                           \
  "vmovups %%ymm6, 192(%[acc])\n\t"                                                           \
  "vmovups %%ymm7, 224(%[acc])\n\t"                                                           \
  "vmovups %%ymm8, 256(%[acc])\n\t"                                                           \
  "vmovups %%ymm9, 288(%[acc])\n\t"                                                           \
  "vmovups %%ymm10, 320(%[acc])\n\t"                                                          \
  "vmovups %%ymm11, 352(%[acc])\n\t"
#define GLMRT_MK4X3_PREFETCH3                                                                 \
  "prefetcht0 (%[pf])\n\t"                                                                    \
  "prefetcht0 (%[pf],%[ldw])\n\t"                                                             \
  "prefetcht0 (%[pf],%[ldw],2)\n\t"                                                           \
  "add $64, %[pf]\n\t"
#define GLMRT_MK4X3_PREFETCH1                                                                 \
  "prefetcht0 (%[pf])\n\t"                                                                    \
  "add $64, %[pf]\n\t"
#define GLMRT_MK4X3_LOOP(prefetch)                                                            \
  GLMRT_MK4X3_LOAD_ACC                                                                        \
  ".p2align 4\n"                                                                              \
  "1:\n\t" prefetch GLMRT_MK4X3_STEP("0") GLMRT_MK4X3_STEP("32")                              \
  "add $64, %[w]\n\t"                                                                         \
  "add $64, %[x]\n\t"                                                                         \
  "add $64, %[x3]\n\t"                                                                        \
  "dec %[n]\n\t"                                                                              \
  "jnz 1b\n\t" GLMRT_MK4X3_STORE_ACC

template <int prefetch_rows>
inline void mk4x3_f32(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t pairs,
                      float* acc, const char* pf) {
  if (pairs <= 0) return;
  const float* x3 = reinterpret_cast<const float*>(reinterpret_cast<const char*>(x) + 3 * ldx);
#define GLMRT_MK4X3_OPERANDS                                                                  \
  : [x] "+r"(x), [x3] "+r"(x3), [w] "+r"(w), [n] "+r"(pairs), [pf] "+r"(pf)                   \
  : [ldx] "r"(ldx), [ldw] "r"(ldw), [acc] "r"(acc)                                            \
  : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",   \
    "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
  if constexpr (prefetch_rows == 3)
    asm volatile(GLMRT_MK4X3_LOOP(GLMRT_MK4X3_PREFETCH3) GLMRT_MK4X3_OPERANDS);
  else if constexpr (prefetch_rows == 1)
    asm volatile(GLMRT_MK4X3_LOOP(GLMRT_MK4X3_PREFETCH1) GLMRT_MK4X3_OPERANDS);
  else
    asm volatile(GLMRT_MK4X3_LOOP("") GLMRT_MK4X3_OPERANDS);
#undef GLMRT_MK4X3_OPERANDS
}

// acc (RX x rows × 3 weight rows × 8 lanes, in memory) += the steps of 8 over [l0, l1) (l1 - l0
// a multiple of 8), and over the r < 8 values after l1 (zero-padded) when r > 0.
template <int RX>
GLMRT_AVX2_FMA void steps_in_memory(const float* x, int64_t ldx, const float* w, int64_t k,
                                    int64_t l0, int64_t l1, int64_t r, float* acc) {
  __m256 a[RX][3];
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < 3; ++j) a[i][j] = _mm256_loadu_ps(acc + (i * 3 + j) * 8);
  for (int64_t l = l0; l < l1; l += 8) fma_step(a, x, ldx, w, k, l);
  if (r > 0) fma_tail(a, x, ldx, w, k, l1, r);
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < 3; ++j) _mm256_storeu_ps(acc + (i * 3 + j) * 8, a[i][j]);
}

template <int RX>
void steps_in_memory_rows(int rows, const float* x, int64_t ldx, const float* w, int64_t k,
                          int64_t l0, int64_t l1, int64_t r, float* acc) {
  if constexpr (RX > 0) {
    if (rows == RX) return steps_in_memory<RX>(x, ldx, w, k, l0, l1, r, acc);
    steps_in_memory_rows<RX - 1>(rows, x, ldx, w, k, l0, l1, r, acc);
  }
}

// Weight rows [j0, j0 + 3) of F32 weights against every row of x (n > 4; op.ldx padded).
GLMRT_AVX2_FMA void block_f32_chunked(const Operands<float>& op, int64_t j0, bool prefetch_next) {
  const int64_t k = op.k, n = op.n, ldx = op.ldx, k8 = k & ~int64_t{7};
  const int64_t full = n / 4 * 4;  // rows in full tiles of 4
  const float* w = op.w + j0 * k;
  alignas(32) float acc[small_gemm_max_rows * 3 * 8];
  std::fill(acc, acc + n * 3 * 8, 0.0f);
  for (int64_t l0 = 0; l0 < k8 || l0 == 0; l0 += f32_chunk) {  // (k < 8: one chunk, the tail)
    const int64_t l1 = std::min(k8, l0 + f32_chunk), steps = (l1 - l0) / 8;
    const bool last = l1 == k8;
    const int64_t r = last ? k - k8 : 0;  // the zero-padded tail, with the last chunk
    // What is prefetched: this block's next chunk, or the next block's first; one weight row by
    // each of the first three tiles when there are three, else all three by the first.
    const char* pf = reinterpret_cast<const char*>(last ? w + 3 * k : w + l1);
    const bool prefetch = !last || prefetch_next, spread = full >= 12;
    for (int64_t i = 0; i < full; i += 4) {
      const float* x = op.x + i * ldx;
      float* a = acc + i * 3 * 8;
      const int64_t t = i / 4;
      if (prefetch && spread && t < 3)
        mk4x3_f32<1>(x + l0, ldx * 4, w + l0, k * 4, steps / 2, a, pf + t * k * 4);
      else if (prefetch && !spread && t == 0)
        mk4x3_f32<3>(x + l0, ldx * 4, w + l0, k * 4, steps / 2, a, pf);
      else
        mk4x3_f32<0>(x + l0, ldx * 4, w + l0, k * 4, steps / 2, a, pf);
      if (steps % 2 || r) steps_in_memory<4>(x, ldx, w, k, l1 - steps % 2 * 8, l1, r, a);
    }
    if (full < n)
      steps_in_memory_rows<3>(static_cast<int>(n - full), op.x + full * ldx, ldx, w, k, l0, l1, r,
                              acc + full * 3 * 8);
  }
  float sums[small_gemm_max_rows * 3];
  for (int64_t t = 0; t < n * 3; ++t) sums[t] = horizontal_sum(_mm256_load_ps(acc + t * 8));
  store_tile(op, 0, static_cast<int>(n), j0, 3, sums);
}
#endif  // __x86_64__

#endif  // GLMRT_SMALL_GEMM_X86

// Weight rows [j0, j0 + rw) against every row of x; rw is 6, 3 or 1 (see run).
template <class T>
void run_block(const Operands<T>& op, int64_t j0, int rw, bool prefetch_next, bool first,
               Path path) {
#ifdef GLMRT_SMALL_GEMM_X86
  if constexpr (std::is_same_v<T, bf16>) {
    if (path == Path::Avx512Bf16) {  // n > 4, as below
      if (rw == 3) return block_vec<3, 4, true, true>(op, j0, prefetch_next, first);
      return block_vec<1, 4, true, true>(op, j0, prefetch_next, first);
    }
  }
  if (path == Path::Avx512) {  // n > 4 (stream_rows takes fewer rows); 24 of 32 registers
    if constexpr (avx512_chains<T> == 1) {
      if (rw == 6) return block_vec<6, 4, true>(op, j0, prefetch_next, first);
    }
    if (rw == 3) return block_vec<3, 4, true>(op, j0, prefetch_next, first);
    return block_vec<1, 4, true>(op, j0, prefetch_next, first);
  }
  if (path == Path::Avx2) {
    if (rw == 6) return block_vec<6, 1, false>(op, j0, prefetch_next, first);
#ifdef GLMRT_SMALL_GEMM_F32_CHUNKED
    if constexpr (std::is_same_v<T, float>) {
      if (rw == 3 && op.n > 4) return block_f32_chunked(op, j0, prefetch_next);
    }
#endif
    if (rw == 3) return block_vec<3, 4, false>(op, j0, prefetch_next, first);
    return block_vec<1, 4, false>(op, j0, prefetch_next, first);
  }
#endif
  block_scalar(op, j0, rw);
}

template <class T>
void run(const Operands<T>& op, Path path) {
  const int64_t row_bytes = op.k * static_cast<int64_t>(sizeof(T));
  const bool parallel = op.n * op.m * op.k >= parallel_min_work;
  // Memory-bound calls (n ≤ 4) take chunks of up to 1 MiB while each thread still gets four or
  // more.
  auto chunk_for = [&](int64_t bytes) {
    return op.n <= 4 && parallel
               ? std::clamp(bytes / (4 * omp_get_max_threads()), chunk_bytes, chunk_bytes_memory_bound)
               : chunk_bytes;
  };
#ifdef GLMRT_SMALL_GEMM_X86
  if ((path == Path::Avx512 || path == Path::Avx512Bf16) && op.n <= 4) {  // one weight row at a time
    const int64_t per_chunk = std::max<int64_t>(1, chunk_for(op.m * row_bytes) / row_bytes);
    const int64_t chunks = (op.m + per_chunk - 1) / per_chunk;
#pragma omp parallel for schedule(dynamic) if (parallel)
    for (int64_t c = 0; c < chunks; ++c)
      stream_rows(op, c * per_chunk, std::min(op.m, (c + 1) * per_chunk), path);
    return;
  }
#endif
  // Otherwise weight rows in blocks. One x row (AVX2): 3 where a block of 3 fits in L1, its
  // successor then prefetched whole (on Zen 5 at k = 2048, 3 BF16 rows took 0.94-0.96× the time
  // of 6, whose two blocks fill the 48 KiB L1, and 3 F32 rows 0.80-0.86× that of 6 read row by
  // row; at k = 5461, 3 BF16 rows of 11 KiB 0.90× that of 6 read row by row), else 6, each row
  // read a few lines ahead (3 F32 rows of 22 KiB prefetched whole took 1.05-1.09× that time).
  // More x rows: 3 (AVX-512: 24 of the 32 registers as 4 × 3 tiles of two accumulators, or for
  // F32 weights 4 × 6 of one, each weight load used 4 times, each x load 6 times).
  const int rw = op.n == 1 ? (fits_l1(3 * row_bytes) ? 3 : 6)
                 : path == Path::Avx512 && avx512_chains<T> == 1 ? 6 : 3;
  const int64_t blocks = op.m / rw;                  // full blocks of rw weight rows
  const int64_t units = blocks + op.m - blocks * rw;  // then one unit per remaining row
  const int64_t block_bytes = rw * row_bytes;
  const int64_t per_chunk = std::max<int64_t>(1, chunk_for(blocks * block_bytes) / block_bytes);
  // schedule(dynamic, c) hands out the units [i·c, (i + 1)·c): a block's successor is the same
  // thread's next block unless it starts a chunk.
#pragma omp parallel for schedule(dynamic, per_chunk) if (parallel)
  for (int64_t u = 0; u < units; ++u) {
    const bool first = u % per_chunk == 0, next_is_mine = (u + 1) % per_chunk != 0;
    if (u < blocks) run_block(op, u * rw, rw, u + 1 < blocks && next_is_mine, first, path);
    else run_block(op, blocks * rw + (u - blocks), 1, false, first, path);
  }
}

bool is_small_gemm_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

}  // namespace

bool small_gemm_vectorized() {
#ifdef GLMRT_SMALL_GEMM_X86
  return vec_math_vectorized();
#else
  return false;
#endif
}

bool fits_l1(int64_t block_bytes) {
  static const int64_t l1 = [] {
    const long v = ::sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return v > 0 ? int64_t{v} : int64_t{32} << 10;
  }();
  return block_bytes <= l1;
}

bool small_gemm_avx512() {
#ifdef GLMRT_SMALL_GEMM_X86
  return vec_math_avx512();
#else
  return false;
#endif
}

bool small_gemm_bf16_units() {
#ifdef GLMRT_SMALL_GEMM_X86
  static const bool supported = small_gemm_avx512() && __builtin_cpu_supports("avx512bf16");
  return supported;
#else
  return false;
#endif
}

bool small_linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y,
                          bool allow_vectorized, bool allow_avx512, bool allow_bf16_units) {
  const DType dt = w.dtype();
  if (!x.defined() || !w.defined() || !y.defined() || !is_small_gemm_dtype(dt) ||
      x.dtype() != dt || y.dtype() != dt)
    return false;
  if (!x.device().is_cpu() || !w.device().is_cpu() || !y.device().is_cpu()) return false;
  if (w.ndim() != 2 || x.ndim() < 1 || y.ndim() < 1) return false;
  const int64_t m = w.dim(0), k = w.dim(1);
  if (m <= 0 || k <= 0 || x.dim(-1) != k || y.dim(-1) != m) return false;
  const int64_t n = x.rows();
  if (n < 1 || n > small_gemm_max_rows || y.rows() != n) return false;
  const bool has_bias = bias && bias->defined();
  if (has_bias && (!bias->device().is_cpu() || bias->ndim() != 1 || bias->dim(0) != m ||
                   (bias->dtype() != DType::F32 && bias->dtype() != dt)))
    return false;

  const bool vectorized = allow_vectorized && small_gemm_vectorized();
  const Path path = !vectorized                                ? Path::Portable
                    : !allow_avx512 || !small_gemm_avx512()       ? Path::Avx2
                    : dt == DType::BF16 && allow_bf16_units && small_gemm_bf16_units() ? Path::Avx512Bf16
                                                                  : Path::Avx512;
  // The BF16 units take x as BF16: a copy with padded rows (as below), zero past k to a whole step.
  thread_local std::vector<bf16> x_bf16;
  const bf16* pxb = nullptr;
  if (path == Path::Avx512Bf16) {
    const int64_t ldb = (k + 31) / 32 * 32 + 32;
    x_bf16.resize(static_cast<size_t>(n * ldb + 32));
    bf16* base = x_bf16.data() + (32 - reinterpret_cast<uintptr_t>(x_bf16.data()) / 2 % 32) % 32;
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(base + i * ldb, x.data_as<bf16>() + i * k, static_cast<size_t>(k) * sizeof(bf16));
      std::fill(base + i * ldb + k, base + i * ldb + (k + 31) / 32 * 32, bf16{});
    }
    pxb = base;
    const void* pb = has_bias ? bias->data() : nullptr;
    run(Operands<bf16>{nullptr, w.data_as<bf16>(), y.data_as<bf16>(), pb,
                       has_bias ? bias->dtype() : DType::F32, n, m, k, ldb, pxb},
        path);
    return true;
  }
  // 16-bit x, and F32 x of more than 4 rows: one F32 copy per call, in a buffer the calling
  // thread keeps between calls, 64-byte aligned, its rows padded so that their stride is not a
  // multiple of 4 KiB. At k = 2048 unpadded rows all fall into the same L1 sets, beside the
  // weight rows (4 KiB apart) and the next block prefetched under them: BF16 n = 16 calls took
  // 1.5× the time or not from one process to the next, depending on where the buffer landed.
  thread_local std::vector<float> x_f32;
  const float* px;
  int64_t ldx = k;
  if (dt == DType::F32 && n <= 4) {
    px = x.data_as<float>();
  } else {
    ldx = (k + 15) / 16 * 16 + 16;
    x_f32.resize(static_cast<size_t>(n * ldx + 16));
    float* base = x_f32.data() + (16 - reinterpret_cast<uintptr_t>(x_f32.data()) / 4 % 16) % 16;
    const auto* src = static_cast<const char*>(x.data());
    for (int64_t i = 0; i < n; ++i)
      convert_host(dt, src + i * k * static_cast<int64_t>(dtype_size(dt)), DType::F32, base + i * ldx, k);
    px = base;
  }
  const void* pb = has_bias ? bias->data() : nullptr;
  const DType bias_dtype = has_bias ? bias->dtype() : DType::F32;
  switch (dt) {
    case DType::F32:
      run(Operands<float>{px, w.data_as<float>(), y.data_as<float>(), pb, bias_dtype, n, m, k, ldx},
          path);
      break;
    case DType::BF16:
      run(Operands<bf16>{px, w.data_as<bf16>(), y.data_as<bf16>(), pb, bias_dtype, n, m, k, ldx},
          path);
      break;
    default:
      run(Operands<f16>{px, w.data_as<f16>(), y.data_as<f16>(), pb, bias_dtype, n, m, k, ldx},
          path);
      break;
  }
  return true;
}

}  // namespace glmrt::cpu
