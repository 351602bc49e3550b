// Attention against a KV cache on the CPU (decoding and prefill). One task per (row group,
// head): the consecutive tokens of one cache row attend to the same keys, so their scores are
// one GEMM [tokens, visible] against the row's keys, a masked fp32 softmax per token, and one
// GEMM for the context. Keys and values are read in place when a row's keys all live in one
// F32/F64 slot (no beam sharing); otherwise (beam rows sharing a context, 16-bit caches) they are
// gathered into fp32 work buffers first. 16-bit tensors are read and written as 16 bits; the
// arithmetic is fp32 (the CPU backend's convention for F16/BF16).
//
// Decoding (a group of at most direct_max_tokens tokens, fp32 arithmetic) takes direct loops
// instead: per token, the scores are dot products with each visible key and the context a
// weighted sum of the values, both read in place in their stored dtype through the slot table
// (16-bit values widened in registers); with AVX2 and at least as many rows as threads, one task
// per cache row walks the row key by key across all heads (a sequential stream), else one task
// per (row, head). The two GEMM calls cost more in packing than in arithmetic for one token
// against a few hundred keys (~10% of a 16-row decoding step of the 1b model), and the gathered
// fp32 copy of 16-bit caches was a third pass over them.
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

// ---- Direct decoding loops -------------------------------------------------------------------
// One token against the keys/values of its cache row: key j of head `hoff / d` is at
// cache + (slot_of[j] · capacity + j) · hl + hoff. probs [visible] receives the softmax, ctx [d]
// the context.
struct DirectArgs {
  const float* q;           // [d], the token's query (F32)
  const int32_t* slot_of;   // the row's slot table
  int64_t capacity, hl, hoff, visible, d;
  float scale;
  float* probs;             // [visible]
  float* ctx;               // [d]
};

inline int64_t key_offset(const DirectArgs& a, int64_t j) {
  return (static_cast<int64_t>(a.slot_of[j]) * a.capacity + j) * a.hl + a.hoff;
}

// probs[0 .. visible) = softmax(probs) in place (fp32, max subtracted).
inline void softmax_in_place(float* s, int64_t visible) {
  const float sum = exp_shifted_sum(s, visible, max_of(s, visible));
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < visible; ++j) s[j] *= inv;
}

template <class S>
void attend_direct_scalar(const DirectArgs& a, const S* kc, const S* vc) {
  for (int64_t j = 0; j < a.visible; ++j) {
    const S* k = kc + key_offset(a, j);
    float dot = 0;
    for (int64_t i = 0; i < a.d; ++i) dot += a.q[i] * load_as<float>(k + i);
    a.probs[j] = a.scale * dot;
  }
  softmax_in_place(a.probs, a.visible);
  std::fill(a.ctx, a.ctx + a.d, 0.0f);
  for (int64_t j = 0; j < a.visible; ++j) {
    const S* v = vc + key_offset(a, j);
    for (int64_t i = 0; i < a.d; ++i) a.ctx[i] += a.probs[j] * load_as<float>(v + i);
  }
}

#ifdef GLMRT_ATTN_X86
// Fetches the d values of key/value row j (when there is one) into the cache: rows are
// hl values apart in the cache, too far for the hardware prefetcher to follow.
template <class S>
GLMRT_AVX2_FMA inline void prefetch_row(const DirectArgs& a, const S* cache, int64_t j) {
  if (j >= a.visible) return;
  const char* p = reinterpret_cast<const char*>(cache + key_offset(a, j));
  const int64_t bytes = a.d * static_cast<int64_t>(sizeof(S));
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
}

// How many rows ahead of its reads the direct loop prefetches.
constexpr int64_t rows_ahead = 8;

// d a multiple of 8. Scores four keys at a time (four independent FMA chains); the context in
// chunks of 64 values (eight accumulators) over every visible value row, the first chunk
// prefetching the rows ahead (later chunks find them in L2).
template <class S>
GLMRT_AVX2_FMA void attend_direct_avx2(const DirectArgs& a, const S* kc, const S* vc) {
  const int64_t d = a.d;
  for (int64_t j = 0; j < rows_ahead; ++j) prefetch_row(a, kc, j);
  int64_t j = 0;
  for (; j + 4 <= a.visible; j += 4) {
    for (int64_t t = 0; t < 4; ++t) prefetch_row(a, kc, j + rows_ahead + t);
    const S* k0 = kc + key_offset(a, j);
    const S* k1 = kc + key_offset(a, j + 1);
    const S* k2 = kc + key_offset(a, j + 2);
    const S* k3 = kc + key_offset(a, j + 3);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = 0; i < d; i += 8) {
      const __m256 q = _mm256_loadu_ps(a.q + i);
      s0 = _mm256_fmadd_ps(q, load8(k0 + i), s0);
      s1 = _mm256_fmadd_ps(q, load8(k1 + i), s1);
      s2 = _mm256_fmadd_ps(q, load8(k2 + i), s2);
      s3 = _mm256_fmadd_ps(q, load8(k3 + i), s3);
    }
    a.probs[j] = a.scale * horizontal_sum(s0);
    a.probs[j + 1] = a.scale * horizontal_sum(s1);
    a.probs[j + 2] = a.scale * horizontal_sum(s2);
    a.probs[j + 3] = a.scale * horizontal_sum(s3);
  }
  for (; j < a.visible; ++j) {
    const S* k = kc + key_offset(a, j);
    __m256 s0 = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.q + i), load8(k + i), s0);
    a.probs[j] = a.scale * horizontal_sum(s0);
  }
  for (int64_t t = 0; t < rows_ahead; ++t) prefetch_row(a, vc, t);
  softmax_in_place(a.probs, a.visible);
  int64_t i0 = 0;
  for (; i0 + 64 <= d; i0 += 64) {
    __m256 c[8];
    for (int u = 0; u < 8; ++u) c[u] = _mm256_setzero_ps();
    for (int64_t t = 0; t < a.visible; ++t) {
      if (i0 == 0) prefetch_row(a, vc, t + rows_ahead);
      const S* v = vc + key_offset(a, t) + i0;
      const __m256 p = _mm256_set1_ps(a.probs[t]);
      for (int u = 0; u < 8; ++u) c[u] = _mm256_fmadd_ps(p, load8(v + 8 * u), c[u]);
    }
    for (int u = 0; u < 8; ++u) _mm256_storeu_ps(a.ctx + i0 + 8 * u, c[u]);
  }
  for (; i0 < d; i0 += 8) {
    __m256 c0 = _mm256_setzero_ps();
    for (int64_t t = 0; t < a.visible; ++t)
      c0 = _mm256_fmadd_ps(_mm256_set1_ps(a.probs[t]), load8(vc + key_offset(a, t) + i0), c0);
    _mm256_storeu_ps(a.ctx + i0, c0);
  }
}

// One token against every head of its cache row, walking the row key by key: key j of all heads
// is one contiguous run of hl = heads · d values, so the keys and then the values are read as
// one sequential stream, where the per-head loops above read d values out of every hl (16
// decoding rows of the 1b model streamed their K and V at ~10-16 GB/s that way, ~20-25 GB/s this
// way). The same FMAs in the same order per head as attend_direct_avx2: bit-identical.
// q, ctx: [heads · d] (ctx accumulated in place, in L1); probs [heads · visible].
struct RowArgs {
  const float* q;
  const int32_t* slot_of;
  int64_t capacity, hl, heads, visible, d;
  float scale;
  float* probs;
  float* ctx;
};

template <class S>
GLMRT_AVX2_FMA void attend_row_avx2(const RowArgs& a, const S* kc, const S* vc) {
  const int64_t d = a.d, H = a.heads, vis = a.visible;
  for (int64_t j = 0; j < vis; ++j) {
    const S* k = kc + (static_cast<int64_t>(a.slot_of[j]) * a.capacity + j) * a.hl;
    for (int64_t h = 0; h < H; ++h) {
      __m256 s = _mm256_setzero_ps();
      for (int64_t i = 0; i < d; i += 8)
        s = _mm256_fmadd_ps(_mm256_loadu_ps(a.q + h * d + i), load8(k + h * d + i), s);
      a.probs[h * vis + j] = a.scale * horizontal_sum(s);
    }
  }
  for (int64_t h = 0; h < H; ++h) softmax_in_place(a.probs + h * vis, vis);
  std::fill(a.ctx, a.ctx + H * d, 0.0f);
  for (int64_t j = 0; j < vis; ++j) {
    const S* v = vc + (static_cast<int64_t>(a.slot_of[j]) * a.capacity + j) * a.hl;
    for (int64_t h = 0; h < H; ++h) {
      const __m256 p = _mm256_set1_ps(a.probs[h * vis + j]);
      float* c = a.ctx + h * d;
      for (int64_t i = 0; i < d; i += 8)
        _mm256_storeu_ps(c + i, _mm256_fmadd_ps(p, load8(v + h * d + i), _mm256_loadu_ps(c + i)));
    }
  }
}

#endif

template <class S>
void attend_direct(const DirectArgs& a, const S* kc, const S* vc) {
#ifdef GLMRT_ATTN_X86
  if (a.d % 8 == 0 && vec_math_vectorized()) return attend_direct_avx2(a, kc, vc);
#endif
  attend_direct_scalar(a, kc, vc);
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
#ifdef GLMRT_ATTN_X86
    // 2a. Decoding rows of at least as many queries as threads: one task per row group, every
    // head at once, walking the row's keys and values as one stream (attend_row_avx2). Fewer
    // rows take the per-(row, head) tasks of 2b, which keep every thread busy (one row walked
    // on one thread, or its heads split between two, measured level to 5% slower over a whole
    // batch-1 step; 16 rows: the attention 1.3-3x faster).
    if constexpr (std::is_same_v<T, float>) {
      const int64_t ngroups = static_cast<int64_t>(groups.size());
      const bool decoding = std::all_of(groups.begin(), groups.end(),
                                        [](const RowGroup& g) { return g.count <= direct_max_tokens; });
      if (decoding && d % 8 == 0 && vec_math_vectorized() && ngroups >= omp_get_max_threads()) {
#pragma omp parallel
        {
          std::vector<float> q(static_cast<size_t>(hl)), ctx(static_cast<size_t>(hl)), probs;
#pragma omp for schedule(dynamic)
          for (int64_t gi = 0; gi < ngroups; ++gi) {
            const RowGroup& g = groups[static_cast<size_t>(gi)];
            for (int64_t r = 0; r < g.count; ++r) {
              const int64_t t = g.first + r, visible = ti[3 * t + 2];
              for (int64_t h = 0; h < num_heads; ++h)
                for (int64_t i = 0; i < d; ++i)
                  q[static_cast<size_t>(h * d + i)] = load_as<float>(src + t * 3 * hl + 3 * h * d + i);
              probs.resize(static_cast<size_t>(num_heads * visible));
              const RowArgs a{q.data(), tab + g.row * capacity, capacity, hl, num_heads, visible, d,
                              scale, probs.data(), ctx.data()};
              attend_row_avx2(a, kc, vc);
              for (int64_t i = 0; i < hl; ++i) store_from(out + t * hl + i, ctx[static_cast<size_t>(i)]);
            }
          }
        }
        return;
      }
    }
#endif
    // 2b. Attend, one task per (row group, head).
    const int64_t tasks = static_cast<int64_t>(groups.size()) * num_heads;
#pragma omp parallel
    {
      std::vector<T> q, kbuf, vbuf, probs, ctx;
#pragma omp for schedule(dynamic)
      for (int64_t task = 0; task < tasks; ++task) {
        const RowGroup& g = groups[static_cast<size_t>(task / num_heads)];
        const int64_t h = task % num_heads, m = g.count, vis = g.max_visible;
        const int32_t* slot_of = tab + g.row * capacity;
        if constexpr (std::is_same_v<T, float>) {
          if (m <= direct_max_tokens) {  // decoding: direct loops, keys and values in place
            q.resize(static_cast<size_t>(d));
            probs.resize(static_cast<size_t>(vis));
            ctx.resize(static_cast<size_t>(d));
            for (int64_t r = 0; r < m; ++r) {
              const S* qs = src + (g.first + r) * 3 * hl + 3 * h * d;
              for (int64_t i = 0; i < d; ++i) q[static_cast<size_t>(i)] = load_as<T>(qs + i);
              const DirectArgs a{q.data(), slot_of, capacity, hl, h * d,
                                 ti[3 * (g.first + r) + 2], d, scale, probs.data(), ctx.data()};
              attend_direct(a, kc, vc);
              for (int64_t i = 0; i < d; ++i)
                store_from(out + (g.first + r) * hl + h * d + i, ctx[static_cast<size_t>(i)]);
            }
            continue;
          }
        }
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
