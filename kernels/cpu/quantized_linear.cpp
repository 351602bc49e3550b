// Weight-only quantized linear (INT8 / INT4) on the CPU: see quantized_linear.h.
//
// A few rows (n ≤ small_gemm_max_rows, decoding) follow small_gemm.cpp: the weight rows (output
// columns) are cut into blocks of rw rows (6 for n = 1, 3 otherwise, then single rows), which the
// OpenMP threads take in chunks of about 512 KiB of stored weights, so that each weight byte is
// streamed from memory once, in its stored form. A block is multiplied with the rows of x in
// tiles of up to 4 x rows keeping rx × rw accumulators of 8 fp32 lanes in registers. Each step
// loads 8 stored bytes of each weight row of the tile, sign-extends them to 32-bit lanes and
// converts them to fp32 in registers: INT8, 8 weights; INT4, 16 weights: clearing the low 4 bits
// of a lane leaves 16 · its high nibble (even column), shifting it up by 28 leaves 2^28 · its low
// nibble (odd column). x is an F32 copy made once per call (n·k values, small next to the m·k
// weights), zero-padded to whole steps; for INT4 it holds per step the 8 even columns times 2^-4,
// then the 8 odd columns times 2^-28, so that the nibbles meet their x values lane for lane
// without shuffles and each product is the same real number x·value (exact power-of-two scaling,
// see lay_out_x). The only tile of a block (n ≤ 4, memory-bound) prefetches its thread's next
// block whole into L1, in address order, where a block fits there (as in small_gemm.cpp: one
// memory stream per thread), else each weight row stream_ahead_bytes ahead (a chunk's first
// block also its first stream_ahead_bytes); several tiles share out prefetching the next block
// into L2. CPUs with AVX-512 take 16-lane twins of the tiles (see the AVX-512 section).
//
// Per output element (the 8-lane order; the AVX-512 one is below): 8 fp32 lanes; lane t takes
// the stored bytes c ≡ t (mod 8) in order, each byte one fused multiply-add (INT8) or two (INT4:
// its even column, then its odd column); the zero-padded tail of a row adds fma(0, 0, ·); then
// ((0+4)+(2+6))+((1+5)+(3+7)); then · scale[j] (the F16 scale, exact in fp32); then + bias[j] in
// fp32; then one round-to-nearest-even to y's dtype. The portable loop (other CPUs, and tests)
// does the same operations with std::fma on the unscaled values: bit-identical results.
//
// More rows (prefill) dequantize blocks of up to 512 weight rows (about 4 MiB of F32) to their
// integer values in F32, multiply them with an F32 copy of x by BLAS sgemm (its own summation
// order), then scale, add the bias and round as above.
#include "kernels/cpu/quantized_linear.h"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/cpu/small_gemm.h"
#include "kernels/cpu/vec_math.h"
#include "kernels/ops.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GLMRT_QLINEAR_X86 1
#define GLMRT_QLINEAR_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace glmrt::cpu {

namespace {

constexpr const char* op_name = "quantized_linear_forward";

// Below this many multiply-adds (n·m·k) a call runs on the calling thread.
constexpr int64_t parallel_min_work = int64_t{1} << 18;
// Threads take the weight rows in chunks of about this many stored bytes: each chunk starts a new
// prefetch stream (see block_vec's chunk_start), and n = 1 INT8 ran ~15% faster with chunks of
// 512 KiB than of 128 KiB (small_gemm.cpp's); still 32 chunks in a 16 MiB matrix to balance.
constexpr int64_t chunk_bytes = int64_t{512} << 10;
// How far ahead of its loads a memory-bound tile prefetches each weight row (into L1), in bytes
// of the matrix: 12 KiB kept the n = 1 INT8 kernel fed from memory (4 KiB: ~25% slower).
constexpr int64_t stream_ahead_bytes = int64_t{12} << 10;
// Prefill: weight rows dequantized per sgemm call (at most; about this many F32 bytes).
constexpr int64_t dequant_max_rows = 512, dequant_min_rows = 64;
constexpr int64_t dequant_block_bytes = int64_t{4} << 20;

// One call of the few-rows kernel.
struct QOp {
  const float* x;   // [n, ldx]: the F32 copy of x (layout above), 32-byte aligned
  int64_t ldx;      // floats per x row: whole steps of 8 (INT8) or 16 (INT4) values
  const int8_t* q;  // [m, kb]
  int64_t kb;       // stored bytes per weight row
  const f16* scale;
  const void* bias;  // [m] or null
  DType bias_dtype;
  void* y;  // [n, m]
  DType y_dtype;
  int64_t n, m;
};

float bias_at(const void* bias, DType dtype, int64_t j) {
  switch (dtype) {
    case DType::BF16: return bf16_to_float(static_cast<const bf16*>(bias)[j]);
    case DType::F16: return f16_to_float(static_cast<const f16*>(bias)[j]);
    default: return static_cast<const float*>(bias)[j];
  }
}

// y[i, j] = sum · scale[j] + bias[j], rounded once to y's dtype.
void store_value(void* y, DType dtype, int64_t index, float v) {
  switch (dtype) {
    case DType::BF16: static_cast<bf16*>(y)[index] = float_to_bf16(v); break;
    case DType::F16: static_cast<f16*>(y)[index] = float_to_f16(v); break;
    default: static_cast<float*>(y)[index] = v; break;
  }
}
inline float finish(float sum, const f16* scale, const void* bias, DType bias_dtype, int64_t j) {
  float v = sum * f16_to_float(scale[j]);
  if (bias) v += bias_at(bias, bias_dtype, j);
  return v;
}

// y[i0 .. i0+rx, j0 .. j0+rw] from the sums (row-major rx × rw).
void store_tile(const QOp& op, int64_t i0, int rx, int64_t j0, int rw, const float* sums) {
  for (int i = 0; i < rx; ++i)
    for (int j = 0; j < rw; ++j)
      store_value(op.y, op.y_dtype, (i0 + i) * op.m + j0 + j,
                  finish(sums[i * rw + j], op.scale, op.bias, op.bias_dtype, j0 + j));
}

// The two values of an INT4 byte: column 2c (high nibble) and 2c + 1 (low nibble).
inline int nibble_high(int8_t b) { return b >> 4; }
inline int nibble_low(int8_t b) {
  return static_cast<int8_t>(static_cast<uint8_t>(static_cast<uint8_t>(b) << 4)) >> 4;
}

inline float lane_sum(const float (&lane)[8]) {
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}
// 16 lanes: lanes t and t + 8 added, then the 8-lane sum.
inline float lane_sum(const float (&lane)[16]) {
  float folded[8];
  for (int t = 0; t < 8; ++t) folded[t] = lane[t] + lane[t + 8];
  return lane_sum(folded);
}

// ---- Portable path: the vector kernels' operations, one lane at a time ---------------------

// L lanes (8: the AVX2 kernel's order, 16: the AVX-512 kernel's) over steps of L stored bytes.
template <int BITS, int L>
float dot_scalar(const float* x, const int8_t* q, int64_t kb) {
  float lane[L] = {};
  const int64_t steps = (kb + L - 1) / L;
  for (int64_t s = 0; s < steps; ++s)
    for (int t = 0; t < L; ++t) {
      const int64_t c = s * L + t;
      const int8_t b = c < kb ? q[c] : int8_t{0};
      if constexpr (BITS == 8) {
        lane[t] = std::fma(x[c], static_cast<float>(b), lane[t]);
      } else {
        lane[t] = std::fma(x[s * 2 * L + t], static_cast<float>(nibble_high(b)), lane[t]);
        lane[t] = std::fma(x[s * 2 * L + L + t], static_cast<float>(nibble_low(b)), lane[t]);
      }
    }
  return lane_sum(lane);
}

template <int BITS, int L>
void block_scalar(const QOp& op, int64_t j0, int rw) {
  for (int64_t i = 0; i < op.n; ++i)
    for (int j = 0; j < rw; ++j) {
      const float s = dot_scalar<BITS, L>(op.x + i * op.ldx, op.q + (j0 + j) * op.kb, op.kb);
      store_tile(op, i, 1, j0 + j, 1, &s);
    }
}

// ---- AVX2 / FMA path -----------------------------------------------------------------------
#ifdef GLMRT_QLINEAR_X86

// The r < 8 bytes at p, zeros after (reads nothing past p + r).
GLMRT_QLINEAR_AVX2 inline __m128i load_bytes_partial(const int8_t* p, int64_t r) {
  alignas(16) int8_t t[16] = {};
  std::memcpy(t, p, static_cast<size_t>(r));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(t));
}

// One step: acc[i][j] += the 8 stored bytes at q + j·kb (r of them in a tail step, zero-padded)
// against x row i (rows ldx floats apart, at this step's values).
template <int BITS, int RX, int RW, bool TAIL = false>
GLMRT_QLINEAR_AVX2 inline void qstep(__m256 (&acc)[RX][RW], const float* x, int64_t ldx,
                                     const int8_t* q, int64_t kb, int64_t r = 8) {
  if constexpr (BITS == 8) {
    __m256 wv[RW];
    for (int j = 0; j < RW; ++j) {
      const __m128i b = TAIL ? load_bytes_partial(q + j * kb, r)
                             : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + j * kb));
      wv[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      if constexpr (RX > 1) asm("" : "+x"(wv[j]));  // one conversion per weight, kept in a register
    }
    for (int i = 0; i < RX; ++i) {
      const __m256 xv = _mm256_load_ps(x + i * ldx);
      for (int j = 0; j < RW; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  } else {
    for (int j = 0; j < RW; ++j) {
      const __m128i b = TAIL ? load_bytes_partial(q + j * kb, r)
                             : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + j * kb));
      // The byte sign-extended to 32 bits: clearing its low 4 bits leaves 16 · high nibble,
      // shifting it up by 28 leaves 2^28 · low nibble (x is scaled to match: see lay_out_x).
      const __m256i v = _mm256_cvtepi8_epi32(b);
      __m256 hi = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(-16)));
      __m256 lo = _mm256_cvtepi32_ps(_mm256_slli_epi32(v, 28));
      if constexpr (RX > 1) asm("" : "+x"(hi), "+x"(lo));
      for (int i = 0; i < RX; ++i) {
        acc[i][j] = _mm256_fmadd_ps(_mm256_load_ps(x + i * ldx), hi, acc[i][j]);
        acc[i][j] = _mm256_fmadd_ps(_mm256_load_ps(x + i * ldx + 8), lo, acc[i][j]);
      }
    }
  }
}

// What a tile prefetches while it computes (as in small_gemm.cpp).
struct Prefetch {
  // Lines of the next block, into L2, spread over the tile's steps (blocks of several tiles).
  const char* begin = nullptr;
  int64_t lines = 0;
  // Each weight row `ahead` bytes ahead of the loads (0: not; the only tile of a block, bound
  // by memory, when the next block is not prefetched whole), while that stays before `end` (the
  // end of the matrix).
  int64_t ahead = 0;
  const int8_t* end = nullptr;
  // The lines above into L1 (the only tile of a block: the next block whole, in address order).
  bool to_l1 = false;
};

// A tile's prefetching as it walks its weight rows a cache line at a time (shared by the AVX2
// and AVX-512 tiles): `at(qc)` before the line at qc of the first row.
template <int RW>
struct PrefetchWalk {
  Prefetch pf;
  int64_t kb;
  int64_t per_line;  // block lines prefetched per line step
  const char* p;
  const char* p_end;
  PrefetchWalk(Prefetch pf_, int64_t kb_)
      : pf(pf_), kb(kb_),
        per_line((pf_.lines + std::max<int64_t>(1, kb_ / 64) - 1) / std::max<int64_t>(1, kb_ / 64)),
        p(pf_.begin), p_end(pf_.begin + pf_.lines * 64) {}
  void at(const int8_t* qc) {
    if (pf.to_l1)
      for (int64_t t = 0; t < per_line && p < p_end; ++t, p += 64) _mm_prefetch(p, _MM_HINT_T0);
    else
      for (int64_t t = 0; t < per_line && p < p_end; ++t, p += 64) _mm_prefetch(p, _MM_HINT_T1);
    if (pf.ahead > 0 && qc + pf.ahead + (RW - 1) * kb < pf.end)
      for (int j = 0; j < RW; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(qc + pf.ahead + j * kb), _MM_HINT_T0);
  }
};

// sums[i·RW + j] = x row i · q row j (unscaled) for RX rows of x and RW weight rows (kb bytes
// apart). Goes a cache line (64 bytes) of each weight row at a time.
template <int BITS, int RX, int RW>
GLMRT_QLINEAR_AVX2 void tile_avx2(const float* x, int64_t ldx, const int8_t* q, int64_t kb,
                                  float* sums, Prefetch pf) {
  constexpr int64_t xs = BITS == 8 ? 8 : 16;  // x values per step of 8 bytes
  PrefetchWalk<RW> prefetch(pf, kb);
  __m256 acc[RX][RW];
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) acc[i][j] = _mm256_setzero_ps();
  const float* xc = x;  // x at the step of qc
  const int8_t* qc = q;
  for (const int8_t* const lines_end = q + kb / 64 * 64; qc < lines_end; qc += 64, xc += 8 * xs) {
    prefetch.at(qc);
    for (int s = 0; s < 8; ++s) qstep<BITS, RX, RW>(acc, xc + s * xs, ldx, qc + 8 * s, kb);
  }
  for (; qc + 8 <= q + kb; qc += 8, xc += xs) qstep<BITS, RX, RW>(acc, xc, ldx, qc, kb);
  if (qc < q + kb) qstep<BITS, RX, RW, true>(acc, xc, ldx, qc, kb, q + kb - qc);
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) sums[i * RW + j] = horizontal_sum(acc[i][j]);
}

// ---- AVX-512 path ----------------------------------------------------------------------------
// Where the CPU has AVX-512 (F, BW, VL, DQ): 16 lanes over steps of 16 stored bytes, lane t
// taking the bytes c ≡ t (mod 16) in order (INT4: its even column, then its odd column, from an
// x copy laid out per step of 16 bytes); lanes t and t + 8 added, then the AVX2 path's 8-lane
// sum. One order again, which the portable loop reproduces with 16 lanes. Twice the weights per
// instruction: the AVX2 INT4 kernel, 6 instructions per 8 stored bytes, fell behind memory on
// two Zen 5 cores (bench/RESULTS.md).
#define GLMRT_QLINEAR_AVX512 GLMRT_VEC_MATH_AVX512

// One step: acc[i][j] += the 16 stored bytes at q + j·kb (the first r, zero-padded, in a tail
// step) against x row i.
template <int BITS, int RX, int RW, bool TAIL = false>
GLMRT_QLINEAR_AVX512 inline void qstep16(__m512 (&acc)[RX][RW], const float* x, int64_t ldx,
                                         const int8_t* q, int64_t kb, int64_t r = 16) {
  for (int j = 0; j < RW; ++j) {
    const __m128i b =
        TAIL ? _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << r) - 1), q + j * kb)
             : _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + j * kb));
    // (The maskz forms of these intrinsics: the plain ones trip GCC 12's -Wmaybe-uninitialized.)
    const __m512i v = _mm512_maskz_cvtepi8_epi32(0xFFFF, b);
    if constexpr (BITS == 8) {
      __m512 wv = _mm512_maskz_cvtepi32_ps(0xFFFF, v);
      if constexpr (RX > 1) asm("" : "+v"(wv));
      for (int i = 0; i < RX; ++i)
        acc[i][j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * ldx), wv, acc[i][j]);
    } else {
      __m512 hi = _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_and_si512(v, _mm512_set1_epi32(-16)));
      __m512 lo = _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_maskz_slli_epi32(0xFFFF, v, 28));
      if constexpr (RX > 1) asm("" : "+v"(hi), "+v"(lo));
      for (int i = 0; i < RX; ++i) {
        acc[i][j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * ldx), hi, acc[i][j]);
        acc[i][j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * ldx + 16), lo, acc[i][j]);
      }
    }
  }
}

// tile_avx2 with 16 lanes (steps of 16 bytes), the same prefetching.
template <int BITS, int RX, int RW>
GLMRT_QLINEAR_AVX512 void tile_avx512(const float* x, int64_t ldx, const int8_t* q, int64_t kb,
                                      float* sums, Prefetch pf) {
  constexpr int64_t xs = BITS == 8 ? 16 : 32;  // x values per step of 16 bytes
  PrefetchWalk<RW> prefetch(pf, kb);
  __m512 acc[RX][RW];
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) acc[i][j] = _mm512_setzero_ps();
  const float* xc = x;
  const int8_t* qc = q;
  for (const int8_t* const lines_end = q + kb / 64 * 64; qc < lines_end; qc += 64, xc += 4 * xs) {
    prefetch.at(qc);
    for (int s = 0; s < 4; ++s) qstep16<BITS, RX, RW>(acc, xc + s * xs, ldx, qc + 16 * s, kb);
  }
  for (; qc + 16 <= q + kb; qc += 16, xc += xs) qstep16<BITS, RX, RW>(acc, xc, ldx, qc, kb);
  if (qc < q + kb) qstep16<BITS, RX, RW, true>(acc, xc, ldx, qc, kb, q + kb - qc);
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) sums[i * RW + j] = horizontal_sum16(acc[i][j]);  // t + (t + 8) first
}

// One tile through the AVX2 or (Wide) the AVX-512 kernel.
template <bool Wide, int BITS, int RX, int RW>
inline void tile_vec(const float* x, int64_t ldx, const int8_t* q, int64_t kb, float* sums,
                     Prefetch pf) {
  if constexpr (Wide) tile_avx512<BITS, RX, RW>(x, ldx, q, kb, sums, pf);
  else tile_avx2<BITS, RX, RW>(x, ldx, q, kb, sums, pf);
}

// Weight rows [j0, j0 + RW) against every row of x, in tiles of up to RX_MAX x rows.
// `prefetch_next`: the next RW weight rows are this thread's next block, worth prefetching.
// `chunk_start`: the first block of a thread's chunk, whose first stream_ahead_bytes no earlier
// block of this thread has prefetched.
template <int BITS, int RW, int RX_MAX, bool Wide>
void block_vec(const QOp& op, int64_t j0, bool prefetch_next, bool chunk_start) {
  const int64_t kb = op.kb, tiles = (op.n + RX_MAX - 1) / RX_MAX;
  const int8_t* q = op.q + j0 * kb;
  const auto next = reinterpret_cast<uintptr_t>(q + RW * kb);
  const auto next_line = reinterpret_cast<const char*>(next & ~uintptr_t{63});
  // One tile: the next block whole into L1 where a block fits there (memory serves one stream
  // per thread better than RW rows interleaved), else each row stream_ahead_bytes ahead.
  const bool seq = tiles == 1 && fits_l1(RW * kb);
  const int64_t lines =
      prefetch_next && (tiles > 1 || seq)
          ? static_cast<int64_t>((next + RW * kb - (next & ~uintptr_t{63}) + 63) / 64)
          : 0;
  auto share = [&](int64_t t) {  // tile t's prefetch
    const int64_t b = t * lines / tiles, e = (t + 1) * lines / tiles;
    return Prefetch{next_line + b * 64, e - b, tiles == 1 && !seq ? stream_ahead_bytes : 0,
                    op.q + op.m * kb, seq};
  };
  if (chunk_start && tiles == 1) {
    const int8_t* const end = std::min(q + stream_ahead_bytes, op.q + op.m * kb);
    for (const int8_t* p = q; p < end; p += 64)
      _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
  }
  if (prefetch_next) {  // the scales and bias of the block after next
    _mm_prefetch(reinterpret_cast<const char*>(op.scale + j0 + 2 * RW), _MM_HINT_T0);
    if (op.bias)
      _mm_prefetch(static_cast<const char*>(op.bias) + (j0 + 2 * RW) * dtype_size(op.bias_dtype),
                   _MM_HINT_T0);
  }
  float sums[RX_MAX * RW];
  int64_t i = 0;
  for (; i + RX_MAX <= op.n; i += RX_MAX) {
    tile_vec<Wide, BITS, RX_MAX, RW>(op.x + i * op.ldx, op.ldx, q, kb, sums, share(i / RX_MAX));
    store_tile(op, i, RX_MAX, j0, RW, sums);
  }
  const int rest = static_cast<int>(op.n - i);
  if (rest == 0) return;
  const float* x = op.x + i * op.ldx;
  const Prefetch pf = share(i / RX_MAX);
  if constexpr (RX_MAX > 3) {
    if (rest == 3) tile_vec<Wide, BITS, 3, RW>(x, op.ldx, q, kb, sums, pf);
  }
  if constexpr (RX_MAX > 2) {
    if (rest == 2) tile_vec<Wide, BITS, 2, RW>(x, op.ldx, q, kb, sums, pf);
  }
  if (rest == 1) tile_vec<Wide, BITS, 1, RW>(x, op.ldx, q, kb, sums, pf);
  store_tile(op, i, rest, j0, RW, sums);
}

#endif  // GLMRT_QLINEAR_X86

// Which kernels a call runs: the portable loop or a vector kernel, in 8 or 16 lanes.
struct Kernel {
  bool vectorized;
  bool wide;  // 16 lanes (AVX-512)
};

// Weight rows [j0, j0 + rw) against every row of x; rw is 6 (n = 1), 3 (n > 1) or 1.
template <int BITS>
void run_block(const QOp& op, int64_t j0, int rw, bool prefetch_next, bool chunk_start,
               Kernel kernel) {
#ifdef GLMRT_QLINEAR_X86
  if (kernel.vectorized && kernel.wide) {
    if (rw == 6) return block_vec<BITS, 6, 1, true>(op, j0, prefetch_next, chunk_start);
    if (rw == 3) return block_vec<BITS, 3, 4, true>(op, j0, prefetch_next, chunk_start);
    return block_vec<BITS, 1, 4, true>(op, j0, false, false);
  }
  if (kernel.vectorized) {
    if (rw == 6) return block_vec<BITS, 6, 1, false>(op, j0, prefetch_next, chunk_start);
    if (rw == 3) return block_vec<BITS, 3, 4, false>(op, j0, prefetch_next, chunk_start);
    return block_vec<BITS, 1, 4, false>(op, j0, false, false);
  }
#endif
  if (kernel.wide) block_scalar<BITS, 16>(op, j0, rw);
  else block_scalar<BITS, 8>(op, j0, rw);
}

template <int BITS>
void run_small(const QOp& op, Kernel kernel) {
  const int rw = op.n == 1 ? 6 : 3;
  const int64_t blocks = op.m / rw;                  // full blocks of rw weight rows
  const int64_t units = blocks + op.m - blocks * rw;  // then one unit per remaining row
  const int64_t per_chunk = std::max<int64_t>(1, chunk_bytes / std::max<int64_t>(1, rw * op.kb));
  const int64_t k = op.kb * (BITS == 8 ? 1 : 2);
  const bool parallel = op.n * op.m * k >= parallel_min_work;
#pragma omp parallel for schedule(dynamic, per_chunk) if (parallel)
  for (int64_t u = 0; u < units; ++u) {
    if (u < blocks) {
      // (schedule(dynamic, c) hands out the units [i·c, (i + 1)·c): the next block is this
      // thread's unless it starts a chunk.)
      run_block<BITS>(op, u * rw, rw, u + 1 < blocks && (u + 1) % per_chunk != 0,
                      u % per_chunk == 0, kernel);
    } else {
      run_block<BITS>(op, blocks * rw + (u - blocks), 1, false, false, kernel);
    }
  }
}

// The AVX2 INT4 kernel widens a byte's high nibble to 16·value and its low nibble to 2^28·value
// (one instruction each); its x copy holds the even columns times 2^-4 and the odd ones times
// 2^-28, so each product is the same real number x·value and rounds the same. Scaling a float by
// 2^-28 is exact unless the result falls below the normal range: |x| < 2^-98.
constexpr float int4_even_scale = 0x1p-4f, int4_odd_scale = 0x1p-28f;
constexpr float int4_exact_min = 0x1p-98f;

// The n rows of x (k values of type T each) in the kernel's F32 layout for steps of `lanes`
// stored bytes (ldx floats a row, zero-padded; INT4: per step the even columns, then the odd
// ones); `scaled`: the vector INT4 kernels' scaled x. Returns false when a scaled value is not
// exact (some nonzero |x| < 2^-98), the layout then being unusable.
template <class T>
bool lay_out_x(const T* x, int64_t n, int64_t k, int bits, int lanes, bool scaled, float* out,
               int64_t ldx) {
  const float even = scaled ? int4_even_scale : 1.0f, odd = scaled ? int4_odd_scale : 1.0f;
  bool exact = true;
  for (int64_t i = 0; i < n; ++i) {
    const T* src = x + i * k;
    float* dst = out + i * ldx;
    std::fill(dst, dst + ldx, 0.0f);
    if (bits == 8) {
      for (int64_t l = 0; l < k; ++l) dst[l] = widen(src[l]);
    } else {
      for (int64_t c = 0; c < k / 2; ++c) {  // stored byte c: columns 2c and 2c + 1
        const float a = widen(src[2 * c]), b = widen(src[2 * c + 1]);
        if (scaled)
          exact = exact && (a == 0 || !(std::abs(a) < int4_exact_min)) &&
                  (b == 0 || !(std::abs(b) < int4_exact_min));
        dst[c / lanes * 2 * lanes + c % lanes] = a * even;
        dst[c / lanes * 2 * lanes + lanes + c % lanes] = b * odd;
      }
    }
  }
  return exact;
}

void small_path(const Tensor& x, const Tensor& q, const Tensor& scale, int bits, const Tensor* bias,
                Tensor& y, Kernel kernel) {
  const int64_t n = x.rows(), k = x.cols(), m = q.dim(0), kb = q.dim(1);
  const int lanes = kernel.wide ? 16 : 8;
  const int64_t steps = (kb + lanes - 1) / lanes, ldx = steps * (bits == 8 ? lanes : 2 * lanes);
  // The calling thread keeps the buffer between calls (64-byte aligned).
  thread_local std::vector<float> x_buf;
  x_buf.resize(static_cast<size_t>(n * ldx + 16));
  float* px = x_buf.data() + (16 - reinterpret_cast<uintptr_t>(x_buf.data()) / 4 % 16) % 16;
  auto lay_out = [&](bool scaled) {
    switch (x.dtype()) {
      case DType::F32: return lay_out_x(x.data_as<float>(), n, k, bits, lanes, scaled, px, ldx);
      case DType::BF16: return lay_out_x(x.data_as<bf16>(), n, k, bits, lanes, scaled, px, ldx);
      default: return lay_out_x(x.data_as<f16>(), n, k, bits, lanes, scaled, px, ldx);
    }
  };
  // INT4 with some |x| < 2^-98 (not seen in practice): the portable loop (the same lanes), which
  // needs no scaling.
  if (!lay_out(kernel.vectorized && bits == 4)) {
    kernel.vectorized = false;
    lay_out(false);
  }
  const bool has_bias = bias && bias->defined();
  const QOp op{px,
               ldx,
               q.data_as<int8_t>(),
               kb,
               scale.data_as<f16>(),
               has_bias ? bias->data() : nullptr,
               has_bias ? bias->dtype() : DType::F32,
               y.data(),
               y.dtype(),
               n,
               m};
  if (bits == 8) run_small<8>(op, kernel);
  else run_small<4>(op, kernel);
}

// Weight rows [j0, j0 + rows) as their integer values in F32: out[r, l] = q[j0 + r, l].
void dequantize_rows(const int8_t* q, int64_t kb, int bits, int64_t j0, int64_t rows, float* out) {
  const int64_t k = bits == 8 ? kb : 2 * kb;
#pragma omp parallel for schedule(static) if (rows * k >= (int64_t{1} << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* src = q + (j0 + r) * kb;
    float* dst = out + r * k;
    if (bits == 8) {
      for (int64_t l = 0; l < kb; ++l) dst[l] = static_cast<float>(src[l]);
    } else {
      for (int64_t c = 0; c < kb; ++c) {
        dst[2 * c] = static_cast<float>(nibble_high(src[c]));
        dst[2 * c + 1] = static_cast<float>(nibble_low(src[c]));
      }
    }
  }
}

// n > small_gemm_max_rows: blocks of dequantized weight rows through sgemm.
void prefill_path(const Tensor& x, const Tensor& q, const Tensor& scale, int bits,
                  const Tensor* bias, Tensor& y) {
  const int64_t n = x.rows(), k = x.cols(), m = q.dim(0), kb = q.dim(1);
  GLMRT_CHECK(n <= INT_MAX && k <= INT_MAX, op_name, ": x ", x.str(), " is too large for BLAS");
  std::unique_ptr<float[]> x_copy;
  const float* x32;
  if (x.dtype() == DType::F32) {
    x32 = x.data_as<float>();
  } else {
    x_copy.reset(new float[static_cast<size_t>(n * k)]);
    convert_host(x.dtype(), x.data(), DType::F32, x_copy.get(), n * k);
    x32 = x_copy.get();
  }
  const int64_t block_rows = std::min(
      m, std::clamp(dequant_block_bytes / std::max<int64_t>(1, 4 * k), dequant_min_rows,
                    dequant_max_rows));
  // The dequantized block (at most max(4 MiB, 64 rows)), in a buffer the calling thread keeps
  // between calls: fresh pages cost a page fault and a clearing each, per call.
  thread_local std::vector<float> w_block;
  w_block.resize(static_cast<size_t>(block_rows * k));
  float* const pw = w_block.data();  // (inside the parallel loops, w_block is another thread's)
  const std::unique_ptr<float[]> c_block(new float[static_cast<size_t>(n * block_rows)]);
  float* const pc = c_block.get();
  const int8_t* pq = q.data_as<int8_t>();
  const f16* ps = scale.data_as<f16>();
  const bool has_bias = bias && bias->defined();
  const void* pb = has_bias ? bias->data() : nullptr;
  const DType bias_dtype = has_bias ? bias->dtype() : DType::F32;
  void* py = y.data();
  const DType y_dtype = y.dtype();
  for (int64_t j0 = 0; j0 < m; j0 += block_rows) {
    const int64_t mb = std::min(block_rows, m - j0);
    dequantize_rows(pq, kb, bits, j0, mb, pw);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(mb),
                static_cast<int>(k), 1.0f, x32, static_cast<int>(k), pw, static_cast<int>(k), 0.0f,
                pc, static_cast<int>(mb));
#pragma omp parallel for schedule(static) if (n * mb >= (int64_t{1} << 16))
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < mb; ++j)
        store_value(py, y_dtype, i * m + j0 + j,
                    finish(pc[i * mb + j], ps, pb, bias_dtype, j0 + j));
  }
}

bool is_io_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

void check_operands(const Tensor& x, const Tensor& q, const Tensor& scale, int bits,
                    const Tensor* bias, const Tensor& y) {
  GLMRT_CHECK(bits == 4 || bits == 8, op_name, ": bits must be 4 or 8, got ", bits);
  GLMRT_CHECK(x.defined() && q.defined() && scale.defined() && y.defined(), op_name,
              ": x, q, scale and y must be given");
  const bool has_bias = bias && bias->defined();
  for (const Tensor* t : {&x, &q, &scale, bias, static_cast<const Tensor*>(&y)})
    GLMRT_CHECK(!t || !t->defined() || t->device().is_cpu(), op_name,
                ": the CPU kernel got a tensor on another device: ", t->str());
  GLMRT_CHECK(is_io_dtype(x.dtype()), op_name, ": x must be F32, F16 or BF16, got ", x.str());
  GLMRT_CHECK(q.dtype() == DType::I8 && q.ndim() == 2, op_name,
              ": q must be a 2-D I8 tensor [m, k", bits == 4 ? " / 2" : "", "], got ", q.str());
  GLMRT_CHECK(x.ndim() >= 1, op_name, ": x must have at least one dimension, got ", x.str());
  const int64_t m = q.dim(0), k = x.cols();
  if (bits == 4)
    GLMRT_CHECK(k % 2 == 0, op_name, ": bits 4 needs an even k (two values per byte of q), got x ",
                x.str());
  const int64_t kb = bits == 8 ? k : k / 2;
  GLMRT_CHECK(q.dim(1) == kb, op_name, ": q ", q.str(), " does not match x ", x.str(), " (bits ",
              bits, ": q must be [m, ", kb, "])");
  GLMRT_CHECK(scale.dtype() == DType::F16 && scale.ndim() == 1 && scale.dim(0) == m, op_name,
              ": scale must be F16 [", m, "] (one per row of q ", q.str(), "), got ", scale.str());
  GLMRT_CHECK(y.dtype() == x.dtype(), op_name, ": y ", y.str(), " must have x's dtype (x ",
              x.str(), ")");
  GLMRT_CHECK(y.ndim() >= 1 && y.rows() == x.rows() && y.cols() == m, op_name, ": y ", y.str(),
              " must be [", x.rows(), ", ", m, "] for x ", x.str(), " and q ", q.str());
  if (has_bias)
    GLMRT_CHECK((bias->dtype() == y.dtype() || bias->dtype() == DType::F32) &&
                    bias->ndim() == 1 && bias->dim(0) == m,
                op_name, ": bias must be [", m, "] in ", dtype_name(y.dtype()), " or F32, got ",
                bias->str());
}

}  // namespace

bool quantized_linear_vectorized() {
#ifdef GLMRT_QLINEAR_X86
  return vec_math_vectorized();
#else
  return false;
#endif
}

bool quantized_linear_avx512() {
#ifdef GLMRT_QLINEAR_X86
  return quantized_linear_vectorized() && small_gemm_avx512();  // the same CPU features
#else
  return false;
#endif
}

void quantized_linear_forward_impl(const Tensor& x, const Tensor& q, const Tensor& scale, int bits,
                                   const Tensor* bias, Tensor& y, bool allow_vectorized,
                                   bool allow_avx512) {
  check_operands(x, q, scale, bits, bias, y);
  if (x.rows() == 0 || q.dim(0) == 0) return;
  if (x.rows() <= small_gemm_max_rows || x.cols() == 0)
    small_path(x, q, scale, bits, bias, y,
               Kernel{allow_vectorized && quantized_linear_vectorized(),
                      allow_avx512 && quantized_linear_avx512()});
  else
    prefill_path(x, q, scale, bits, bias, y);
}

void quantized_linear_forward(const Tensor& x, const Tensor& q, const Tensor& scale, int bits,
                              const Tensor* bias, Tensor& y) {
  quantized_linear_forward_impl(x, q, scale, bits, bias, y, true, true);
}

}  // namespace glmrt::cpu
