// Attention against a KV cache on the CPU (decoding and prefill). One task per (row group,
// head): the consecutive tokens of one cache row attend to the same keys, so their scores are
// one GEMM [tokens, visible] against the row's keys, a masked fp32 softmax per token, and one
// GEMM for the context. Keys and values are read in place when a row's keys all live in one
// F32/F64 slot (no beam sharing); otherwise (beam rows sharing a context, 16-bit caches) they are
// gathered into fp32 work buffers first. 16-bit tensors are read and written as 16 bits; the
// arithmetic is fp32 (the CPU backend's convention for F16/BF16).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_common.h"
#include "kernels/half.h"

namespace glmrt::cpu {

namespace {

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
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      const int64_t row = ti[3 * t], pos = ti[3 * t + 1];
      const int64_t base = (static_cast<int64_t>(tab[row * capacity + pos]) * capacity + pos) * hl;
      for (int64_t h = 0; h < num_heads; ++h) {
        const S* k = src + t * 3 * hl + 3 * h * d + d;
        std::copy(k, k + d, kc + base + h * d);
        std::copy(k + d, k + 2 * d, vc + base + h * d);
      }
    }
    // 2. Attend, one task per (row group, head).
    const int64_t tasks = static_cast<int64_t>(groups.size()) * num_heads;
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
#pragma omp parallel
    {
      std::vector<T> q, kbuf, vbuf, probs, ctx;
#pragma omp for schedule(dynamic)
      for (int64_t task = 0; task < tasks; ++task) {
        const RowGroup& g = groups[static_cast<size_t>(task / num_heads)];
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
