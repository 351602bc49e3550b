// Attention against a KV cache on the CPU (decoding and prefill). One task per (row group,
// head): the consecutive tokens of one cache row attend to the same keys, so their scores are
// one GEMM [tokens, visible] against the row's keys, a masked fp32 softmax per token, and one
// GEMM for the context. Keys and values are read in place when a row's keys all live in one
// F32/F64 slot (no beam sharing); otherwise (beam rows sharing a context, 16-bit caches) they are
// gathered into fp32 work buffers first. 16-bit tensors are read and written as 16 bits; the
// arithmetic is fp32 (the CPU backend's convention for F16/BF16).
//
// Decoding (a group of at most direct_max_tokens tokens, fp32 arithmetic) takes direct loops
// instead (decode_chunked below): a token's keys are cut into fixed chunks, each scored, softmaxed
// and summed against its values by one task that walks whole key rows (all heads: a sequential
// stream), read in place in their stored dtype through the slot table (16-bit values widened in
// registers); the chunks are then combined per head. The two GEMM calls cost more in packing
// than in arithmetic for one token against a few hundred keys (~10% of a 16-row decoding step of
// the 1b model), and the gathered fp32 copy of 16-bit caches was a third pass over them.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GLMRT_ATTN_X86 1
#define GLMRT_AVX2_FMA __attribute__((target("avx2,fma,f16c")))
#endif

#include <omp.h>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/vec_math.h"
#include "kernels/half.h"

namespace glmrt::cpu {

namespace {

constexpr int64_t direct_max_tokens = 4;

template <class T, class S>
inline T load_as(const S* p) {
  if constexpr (std::is_same_v<S, f16>) return static_cast<T>(f16_to_float(*p));
  else if constexpr (std::is_same_v<S, bf16>) return static_cast<T>(bf16_to_float(*p));
  else return static_cast<T>(*p);
}
template <class S, class T>
inline void store_from(S* p, T x) {
  if constexpr (std::is_same_v<S, f16>) *p = float_to_f16(static_cast<float>(x));
  else if constexpr (std::is_same_v<S, bf16>) *p = float_to_bf16(static_cast<float>(x));
  else *p = static_cast<S>(x);
}

struct RowGroup {
  int64_t first, count, row, max_visible;
};

// Calls fn(S{}, T{}) with the storage type S and compute type T of `dtype`.
template <class Fn>
void dispatch_storage(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F32: return fn(float{}, float{});
    case DType::F64: return fn(double{}, double{});
    case DType::F16: return fn(f16{}, float{});
    case DType::BF16: return fn(bf16{}, float{});
    default:
      throw InternalError(detail::concat("attention_cached_forward: unsupported dtype ",
                                         dtype_name(dtype)));
  }
}

// ---- Decoding: the keys in fixed chunks ---------------------------------------------------
// A decoding token's visible keys are cut into chunks of key_chunk keys (the last one shorter).
// One work item = (token, chunk, group of heads): it walks the chunk's key rows (key j of all
// heads is one contiguous run of hl values, so a chunk of one cache slot is one sequential read),
// scores them, takes a softmax within the chunk (the chunk's max m and sum l), and accumulates the
// chunk's un-normalised context from its value rows. Then, per (token, head), the chunks are
// combined in order: M = max m_c, w_c = exp(m_c - M), context = (Σ_c w_c · ctx_c) / Σ_c w_c · l_c.
// The chunks are fixed by the key count alone and heads are independent, so a token's result
// does not depend on the thread count, on how heads are grouped, or on the other rows of the
// batch: bit-identical however it is run. Work items spread one row's keys over every thread
// (batch 1: one task per head read 256 bytes out of every 4 KiB key row, at ~14 GB/s).
constexpr int64_t key_chunk = 32;

struct ChunkArgs {
  const float* q;          // [heads · d]: the token's query, fp32
  const int32_t* slot_of;  // the row's slot table
  int64_t capacity, hl, d, h0, h1, j0, j1;  // heads [h0, h1), keys [j0, j1)
  float scale;
  float* s;    // scratch [(h1 - h0) · key_chunk]
  float* m;    // the part's [heads] chunk maxima,
  float* l;    //            [heads] sums of exp(score - m),
  float* ctx;  //            [heads · d] Σ exp(score - m) · value (heads h0..h1 written)
};

inline int64_t row_offset(const ChunkArgs& a, int64_t j) {
  return (static_cast<int64_t>(a.slot_of[j]) * a.capacity + j) * a.hl;
}

// Chunk softmax pieces of heads [h0, h1): s becomes exp(s - m), m and l are stored.
inline void chunk_softmax(const ChunkArgs& a) {
  const int64_t n = a.j1 - a.j0;
  for (int64_t h = a.h0; h < a.h1; ++h) {
    float* s = a.s + (h - a.h0) * key_chunk;
    a.m[h] = max_of(s, n);
    a.l[h] = exp_shifted_sum(s, n, a.m[h]);
  }
}

template <class S>
void attend_chunk_scalar(const ChunkArgs& a, const S* kc, const S* vc) {
  const int64_t d = a.d;
  for (int64_t j = a.j0; j < a.j1; ++j) {
    const S* k = kc + row_offset(a, j);
    for (int64_t h = a.h0; h < a.h1; ++h) {
      float dot = 0;
      for (int64_t i = 0; i < d; ++i) dot += a.q[h * d + i] * load_as<float>(k + h * d + i);
      a.s[(h - a.h0) * key_chunk + (j - a.j0)] = a.scale * dot;
    }
  }
  chunk_softmax(a);
  std::fill(a.ctx + a.h0 * d, a.ctx + a.h1 * d, 0.0f);
  for (int64_t j = a.j0; j < a.j1; ++j) {
    const S* v = vc + row_offset(a, j);
    for (int64_t h = a.h0; h < a.h1; ++h) {
      const float p = a.s[(h - a.h0) * key_chunk + (j - a.j0)];
      for (int64_t i = 0; i < d; ++i) a.ctx[h * d + i] += p * load_as<float>(v + h * d + i);
    }
  }
}

#ifdef GLMRT_ATTN_X86
// The vector kernels, one body for 8 lanes (AVX2) and 16 (AVX-512); L supplies the lanes.
struct Lanes8 {
  using V = __m256;
  static constexpr int64_t n = 8;
  GLMRT_AVX2_FMA static V zero() { return _mm256_setzero_ps(); }
  GLMRT_AVX2_FMA static V set1(float v) { return _mm256_set1_ps(v); }
  GLMRT_AVX2_FMA static V load(const float* p) { return _mm256_loadu_ps(p); }
  template <class S>
  GLMRT_AVX2_FMA static V load(const S* p) { return load8(p); }
  GLMRT_AVX2_FMA static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  GLMRT_AVX2_FMA static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  GLMRT_AVX2_FMA static float sum(V v) { return horizontal_sum(v); }
};
struct Lanes16 {
  using V = __m512;
  static constexpr int64_t n = 16;
  GLMRT_VEC_MATH_AVX512 static V zero() { return _mm512_setzero_ps(); }
  GLMRT_VEC_MATH_AVX512 static V set1(float v) { return _mm512_set1_ps(v); }
  GLMRT_VEC_MATH_AVX512 static V load(const float* p) { return _mm512_loadu_ps(p); }
  template <class S>
  GLMRT_VEC_MATH_AVX512 static V load(const S* p) { return load16(p); }
  GLMRT_VEC_MATH_AVX512 static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  GLMRT_VEC_MATH_AVX512 static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  GLMRT_VEC_MATH_AVX512 static float sum(V v) { return horizontal_sum16(v); }
};

// d a multiple of L::n. A head's score is one L::n-lane FMA chain over its d values (16 lanes:
// lanes t and t + 8 added before the 8-lane sum); eight heads of a key row go side by side
// (independent chains: four left the FMA units half idle), and the chunk's value rows are
// prefetched into L2 meanwhile. The context then takes one head at a time, 8 · L::n of its values
// in registers over all the chunk's value rows (where accumulating every head in place, row by
// row, loaded and stored each context vector once per key: the same FMAs in the same order).
// Inlined into a wrapper per instruction set (attend_chunk_avx2 / _avx512).
template <class L, class S>
inline __attribute__((always_inline)) void attend_chunk_vec(const ChunkArgs& a, const S* kc, const S* vc) {
  using V = typename L::V;
  constexpr int64_t n = L::n;
  const int64_t d = a.d;
  const int64_t v_bytes = (a.h1 - a.h0) * d * static_cast<int64_t>(sizeof(S));
  for (int64_t j = a.j0; j < a.j1; ++j) {
    const S* k = kc + row_offset(a, j);
    const char* v = reinterpret_cast<const char*>(vc + row_offset(a, j) + a.h0 * d);
    for (int64_t b = 0; b < v_bytes; b += 64) _mm_prefetch(v + b, _MM_HINT_T1);
    float* s = a.s + (j - a.j0);
    int64_t h = a.h0;
    for (; h + 8 <= a.h1; h += 8) {
      V acc[8];
      for (int u = 0; u < 8; ++u) acc[u] = L::zero();
      for (int64_t i = 0; i < d; i += n)
        for (int u = 0; u < 8; ++u)
          acc[u] = L::fma(L::load(a.q + (h + u) * d + i), L::load(k + (h + u) * d + i), acc[u]);
      for (int u = 0; u < 8; ++u) s[(h + u - a.h0) * key_chunk] = a.scale * L::sum(acc[u]);
    }
    for (; h < a.h1; ++h) {
      V acc = L::zero();
      for (int64_t i = 0; i < d; i += n) acc = L::fma(L::load(a.q + h * d + i), L::load(k + h * d + i), acc);
      s[(h - a.h0) * key_chunk] = a.scale * L::sum(acc);
    }
  }
  chunk_softmax(a);
  for (int64_t h = a.h0; h < a.h1; ++h) {
    const float* p = a.s + (h - a.h0) * key_chunk;
    float* c = a.ctx + h * d;
    int64_t i0 = 0;
    for (; i0 + 8 * n <= d; i0 += 8 * n) {
      V acc[8];
      for (int u = 0; u < 8; ++u) acc[u] = L::zero();
      for (int64_t j = a.j0; j < a.j1; ++j) {
        const S* v = vc + row_offset(a, j) + h * d + i0;
        const V pj = L::set1(p[j - a.j0]);
        for (int u = 0; u < 8; ++u) acc[u] = L::fma(pj, L::load(v + n * u), acc[u]);
      }
      for (int u = 0; u < 8; ++u) L::store(c + i0 + n * u, acc[u]);
    }
    for (; i0 < d; i0 += n) {
      V acc = L::zero();
      for (int64_t j = a.j0; j < a.j1; ++j)
        acc = L::fma(L::set1(p[j - a.j0]), L::load(vc + row_offset(a, j) + h * d + i0), acc);
      L::store(c + i0, acc);
    }
  }
}

template <class S>
GLMRT_AVX2_FMA void attend_chunk_avx2(const ChunkArgs& a, const S* kc, const S* vc) {
  attend_chunk_vec<Lanes8>(a, kc, vc);
}
// With AVX-512, half the instructions per key of a kernel bound by them (bf16, one row, 16 heads
// × 128: ~27 GB/s of K+V per thread with 8 lanes; 0.83-0.91× the time with 16).
template <class S>
GLMRT_VEC_MATH_AVX512 void attend_chunk_avx512(const ChunkArgs& a, const S* kc, const S* vc) {
  attend_chunk_vec<Lanes16>(a, kc, vc);
}
#endif

template <class S>
void attend_chunk(const ChunkArgs& a, const S* kc, const S* vc) {
#ifdef GLMRT_ATTN_X86
  if (a.d % 16 == 0 && vec_math_avx512()) return attend_chunk_avx512(a, kc, vc);
  if (a.d % 8 == 0 && vec_math_vectorized()) return attend_chunk_avx2(a, kc, vc);
#endif
  attend_chunk_scalar(a, kc, vc);
}

// Decodes tokens `tokens` (each in a group of at most direct_max_tokens of its row): every
// (token, chunk, head group) item, then every (token, head) combination.
template <class S>
void decode_chunked(const std::vector<int64_t>& tokens, const S* src, const int32_t* ti,
                    const int32_t* tab, int64_t capacity, int64_t heads, int64_t d, float scale,
                    const S* kc, const S* vc, S* out) {
  const int64_t hl = heads * d, nt = static_cast<int64_t>(tokens.size());
  // Part p of token i is first_part[i] + chunk; a part holds m [heads], l [heads], ctx [hl].
  const int64_t part_floats = 2 * heads + hl;
  std::vector<int64_t> first_part(static_cast<size_t>(nt + 1), 0);
  for (int64_t i = 0; i < nt; ++i) {
    const int64_t visible = ti[3 * tokens[static_cast<size_t>(i)] + 2];
    first_part[static_cast<size_t>(i + 1)] =
        first_part[static_cast<size_t>(i)] + (visible + key_chunk - 1) / key_chunk;
  }
  const int64_t parts = first_part[static_cast<size_t>(nt)];
  // Head groups only where the chunks alone would leave threads idle.
  const int64_t threads = omp_get_max_threads();
  int64_t groups = 1;
  while (parts * groups < 2 * threads && groups < heads) groups *= 2;
  groups = std::min(groups, heads);
  const int64_t per_group = (heads + groups - 1) / groups;
  groups = (heads + per_group - 1) / per_group;
  struct Item {
    int64_t token, part, j0, j1, h0, h1;
  };
  std::vector<Item> items;
  items.reserve(static_cast<size_t>(parts * groups));
  for (int64_t i = 0; i < nt; ++i) {
    const int64_t visible = ti[3 * tokens[static_cast<size_t>(i)] + 2];
    for (int64_t p = first_part[static_cast<size_t>(i)], j0 = 0; j0 < visible; ++p, j0 += key_chunk)
      for (int64_t g = 0; g < groups; ++g)
        items.push_back({i, p, j0, std::min(visible, j0 + key_chunk), g * per_group,
                         std::min(heads, (g + 1) * per_group)});
  }
  // Reused between calls (one decoding step calls this once per layer).
  thread_local std::vector<float> q_buf, part_buf;
  if (q_buf.size() < static_cast<size_t>(nt * hl)) q_buf.resize(static_cast<size_t>(nt * hl));
  if (part_buf.size() < static_cast<size_t>(parts * part_floats))
    part_buf.resize(static_cast<size_t>(parts * part_floats));
  float* q = q_buf.data();
  float* part = part_buf.data();
  const int64_t nitems = static_cast<int64_t>(items.size());
#pragma omp parallel if (nitems > 1)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nt; ++i) {
      const int64_t t = tokens[static_cast<size_t>(i)];
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t e = 0; e < d; ++e)
          q[i * hl + h * d + e] = load_as<float>(src + t * 3 * hl + 3 * h * d + e);
    }
    std::vector<float> s(static_cast<size_t>(per_group * key_chunk)), acc(static_cast<size_t>(d));
#pragma omp for schedule(dynamic)
    for (int64_t it = 0; it < nitems; ++it) {
      const Item& w = items[static_cast<size_t>(it)];
      const int64_t t = tokens[static_cast<size_t>(w.token)];
      float* pp = part + w.part * part_floats;
      const ChunkArgs a{q + w.token * hl, tab + ti[3 * t] * capacity, capacity, hl, d, w.h0, w.h1,
                        w.j0, w.j1, scale, s.data(), pp, pp + heads, pp + 2 * heads};
      attend_chunk(a, kc, vc);
    }
#pragma omp for schedule(static)
    for (int64_t th = 0; th < nt * heads; ++th) {
      const int64_t i = th / heads, h = th % heads, t = tokens[static_cast<size_t>(i)];
      const int64_t p0 = first_part[static_cast<size_t>(i)], p1 = first_part[static_cast<size_t>(i + 1)];
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t p = p0; p < p1; ++p) mx = std::max(mx, part[p * part_floats + h]);
      float sum = 0;
      float* c = acc.data();
      std::fill(c, c + d, 0.0f);
      for (int64_t p = p0; p < p1; ++p) {
        const float* pp = part + p * part_floats;
        const float w = std::exp(pp[h] - mx);
        sum += w * pp[heads + h];
        const float* cp = pp + 2 * heads + h * d;
        for (int64_t e = 0; e < d; ++e) c[e] += w * cp[e];
      }
      const float inv = 1.0f / sum;
      for (int64_t e = 0; e < d; ++e) store_from(out + t * hl + h * d + e, c[e] * inv);
    }
  }
}

}  // namespace

void attention_cached_forward(const Tensor& qkv, const Tensor& token_index, const Tensor& table,
                              int64_t num_heads, int64_t head_dim, float /*query_scale_coeff*/,
                              Tensor& k_cache, Tensor& v_cache, Tensor& context) {
  const int64_t n = qkv.rows(), d = head_dim, hl = num_heads * head_dim;
  GLMRT_CHECK(qkv.cols() == 3 * hl, "attention_cached_forward: ", qkv.str(), " is not [n, ",
              num_heads, " * 3 * ", head_dim, "]");
  check_shape(token_index, {n, 3}, "attention_cached_forward token_index");
  check_dtype(token_index, DType::I32, "attention_cached_forward token_index");
  check_dtype(table, DType::I32, "attention_cached_forward table");
  GLMRT_CHECK(k_cache.ndim() == 3 && k_cache.shape() == v_cache.shape() && k_cache.shape()[2] == hl,
              "attention_cached_forward: caches ", k_cache.str(), " / ", v_cache.str(),
              " are not [slots, capacity, ", hl, "]");
  GLMRT_CHECK(k_cache.dtype() == qkv.dtype() && v_cache.dtype() == qkv.dtype() &&
                  context.dtype() == qkv.dtype(),
              "attention_cached_forward: dtypes of qkv ", qkv.str(), ", caches ", k_cache.str(),
              ", context ", context.str(), " differ");
  GLMRT_CHECK(context.rows() == n && context.cols() == hl, "attention_cached_forward: context ",
              context.str());
  const int64_t slots = k_cache.shape()[0], capacity = k_cache.shape()[1];
  GLMRT_CHECK(table.ndim() == 2 && table.shape()[1] == capacity,
              "attention_cached_forward: table ", table.str(), " is not [rows, ", capacity, "]");
  const int64_t rows = table.shape()[0];
  const int32_t* ti = token_index.data_as<int32_t>();
  const int32_t* tab = table.data_as<int32_t>();

  // Validate every index before touching memory, and group consecutive tokens of one row.
  std::vector<RowGroup> groups;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t row = ti[3 * t], pos = ti[3 * t + 1], visible = ti[3 * t + 2];
    GLMRT_CHECK(row >= 0 && row < rows && pos >= 0 && pos < capacity && visible >= 1 &&
                    visible <= capacity,
                "attention_cached_forward: token ", t, " has {row ", row, ", pos ", pos,
                ", visible ", visible, "} outside ", rows, " rows x ", capacity, " positions");
    for (int64_t j : {pos, visible - 1}) {
      const int32_t slot = tab[row * capacity + j];
      GLMRT_CHECK(slot >= 0 && slot < slots, "attention_cached_forward: table[", row, ", ", j,
                  "] = ", slot, " is not one of ", slots, " slots");
    }
    if (!groups.empty() && groups.back().row == row && groups.back().first + groups.back().count == t) {
      ++groups.back().count;
      groups.back().max_visible = std::max(groups.back().max_visible, visible);
    } else {
      groups.push_back({t, 1, row, visible});
    }
  }
  for (const RowGroup& g : groups)
    for (int64_t j = 0; j < g.max_visible; ++j) {
      const int32_t slot = tab[g.row * capacity + j];
      GLMRT_CHECK(slot >= 0 && slot < slots, "attention_cached_forward: table[", g.row, ", ", j,
                  "] = ", slot, " is not one of ", slots, " slots");
    }

  dispatch_storage(qkv.dtype(), [&](auto storage, auto compute) {
    using S = decltype(storage);
    using T = decltype(compute);
    const S* src = qkv.data_as<S>();
    S* kc = k_cache.data_as<S>();
    S* vc = v_cache.data_as<S>();
    S* out = context.data_as<S>();
    // 1. Store every token's key and value.
#pragma omp parallel for schedule(static) if (parallel_rows(n, 2 * hl))
    for (int64_t t = 0; t < n; ++t) {
      const int64_t row = ti[3 * t], pos = ti[3 * t + 1];
      const int64_t base = (static_cast<int64_t>(tab[row * capacity + pos]) * capacity + pos) * hl;
      for (int64_t h = 0; h < num_heads; ++h) {
        const S* k = src + t * 3 * hl + 3 * h * d + d;
        std::copy(k, k + d, kc + base + h * d);
        std::copy(k + d, k + 2 * d, vc + base + h * d);
      }
    }
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    // 2a. Decoding tokens (groups of at most direct_max_tokens, fp32 arithmetic): the keys in
    // fixed chunks spread over every thread (decode_chunked).
    std::vector<RowGroup> gemm_groups;
    if constexpr (std::is_same_v<T, float>) {
      std::vector<int64_t> decode;
      for (const RowGroup& g : groups) {
        if (g.count > direct_max_tokens) {
          gemm_groups.push_back(g);
          continue;
        }
        for (int64_t r = 0; r < g.count; ++r) decode.push_back(g.first + r);
      }
      if (!decode.empty()) decode_chunked(decode, src, ti, tab, capacity, num_heads, d, scale, kc, vc, out);
    } else {
      gemm_groups = groups;
    }
    // 2b. The other groups (prefill, F64): one task per (row group, head), two GEMMs.
    const int64_t tasks = static_cast<int64_t>(gemm_groups.size()) * num_heads;
    if (tasks == 0) return;
#pragma omp parallel
    {
      std::vector<T> q, kbuf, vbuf, probs, ctx;
#pragma omp for schedule(dynamic)
      for (int64_t task = 0; task < tasks; ++task) {
        const RowGroup& g = gemm_groups[static_cast<size_t>(task / num_heads)];
        const int64_t h = task % num_heads, m = g.count, vis = g.max_visible;
        const int32_t* slot_of = tab + g.row * capacity;
        // Keys and values in place when possible.
        const T* K = nullptr;
        const T* V = nullptr;
        int64_t kld = hl;
        const bool one_slot = std::all_of(slot_of, slot_of + vis, [&](int32_t s) { return s == slot_of[0]; });
        if constexpr (std::is_same_v<S, T>) {
          if (one_slot) {
            K = kc + static_cast<int64_t>(slot_of[0]) * capacity * hl + h * d;
            V = vc + static_cast<int64_t>(slot_of[0]) * capacity * hl + h * d;
          }
        }
        if (!K) {
          kbuf.resize(static_cast<size_t>(vis * d));
          vbuf.resize(static_cast<size_t>(vis * d));
          for (int64_t j = 0; j < vis; ++j) {
            const int64_t off = (static_cast<int64_t>(slot_of[j]) * capacity + j) * hl + h * d;
            for (int64_t i = 0; i < d; ++i) {
              kbuf[static_cast<size_t>(j * d + i)] = load_as<T>(kc + off + i);
              vbuf[static_cast<size_t>(j * d + i)] = load_as<T>(vc + off + i);
            }
          }
          K = kbuf.data();
          V = vbuf.data();
          kld = d;
        }
        q.resize(static_cast<size_t>(m * d));
        for (int64_t r = 0; r < m; ++r)
          for (int64_t i = 0; i < d; ++i)
            q[static_cast<size_t>(r * d + i)] =
                load_as<T>(src + (g.first + r) * 3 * hl + 3 * h * d + i);
        probs.resize(static_cast<size_t>(m * vis));
        blas_gemm(false, true, m, vis, d, scale, q.data(), d, K, kld, T(0), probs.data(), vis);
        for (int64_t r = 0; r < m; ++r) {
          T* s = probs.data() + r * vis;
          const int64_t visible = ti[3 * (g.first + r) + 2];
          T mx = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, s[j]);
          T sum = 0;
          for (int64_t j = 0; j < visible; ++j) sum += (s[j] = std::exp(s[j] - mx));
          const T inv = T(1) / sum;
          for (int64_t j = 0; j < visible; ++j) s[j] *= inv;
          std::fill(s + visible, s + vis, T(0));
        }
        ctx.resize(static_cast<size_t>(m * d));
        blas_gemm(false, false, m, d, vis, T(1), probs.data(), vis, V, kld, T(0), ctx.data(), d);
        for (int64_t r = 0; r < m; ++r)
          for (int64_t i = 0; i < d; ++i)
            store_from(out + (g.first + r) * hl + h * d + i, ctx[static_cast<size_t>(r * d + i)]);
      }
    }
  });
}

}  // namespace glmrt::cpu
