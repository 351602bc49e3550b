// GLM masked attention on the CPU: per (segment, head) one BLAS GEMM for the scores, a masked
// fp32 softmax, one GEMM for the context. Segments are block-diagonal, so a packed row never
// computes scores between its sub-sequences. The backward pass recomputes the probabilities from
// the saved log-sum-exp (no s×s tensor is kept between passes).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/vec_math.h"

namespace glmrt::cpu {

namespace {
struct Segment {
  int64_t row, start, sep, end;  // start/sep/end within the row
};

// Recovers the segments of every row from the per-token spans, checking that they are consistent.
std::vector<Segment> segments_of(const Tensor& spans, int64_t batch, int64_t seq) {
  const int32_t* sp = spans.data_as<int32_t>();
  std::vector<Segment> out;
  for (int64_t b = 0; b < batch; ++b) {
    int64_t t = 0;
    while (t < seq) {
      const int32_t* s = sp + (b * seq + t) * 3;
      GLMRT_CHECK(s[0] == t && s[0] < s[2] && s[2] <= seq && s[0] <= s[1] && s[1] <= s[2],
                  "attention: bad mask span {", s[0], ", ", s[1], ", ", s[2], "} at row ", b,
                  " token ", t);
      for (int64_t u = t + 1; u < s[2]; ++u) {
        const int32_t* su = sp + (b * seq + u) * 3;
        GLMRT_CHECK(su[0] == s[0] && su[1] == s[1] && su[2] == s[2],
                    "attention: token ", u, " of row ", b, " disagrees with its segment's span");
      }
      out.push_back({b, s[0], s[1], s[2]});
      t = s[2];
    }
  }
  return out;
}

// Shapes shared by forward and backward.
struct AttnShape {
  int64_t batch, seq, heads, d, qkv_ld, ctx_ld;
};

AttnShape check_attention(const Tensor& qkv, const Tensor& mask_spans, int64_t batch,
                          int64_t heads, int64_t d, const Tensor& context) {
  const int64_t n = qkv.rows();
  GLMRT_CHECK(batch > 0 && n % batch == 0, "attention: ", n, " rows for batch ", batch);
  AttnShape s{batch, n / batch, heads, d, qkv.cols(), heads * d};
  GLMRT_CHECK(s.qkv_ld == heads * 3 * d, "attention: ", qkv.str(), " is not [n, ", heads,
              " * 3 * ", d, "]");
  check_shape(mask_spans, {n, 3}, "attention mask_spans");
  check_dtype(mask_spans, DType::I32, "attention mask_spans");
  GLMRT_CHECK(context.rows() == n && context.cols() == s.ctx_ld, "attention: context ",
              context.str());
  return s;
}

// Global index of probability (row b, head h, query i, key j) for dropout.
inline uint64_t attn_dropout_index(const DropoutSpec& dp, const AttnShape& s, int64_t b,
                                   int64_t h, int64_t i, int64_t j) {
  const int64_t total_heads = dp.total_heads ? dp.total_heads : s.heads;
  const uint64_t plane = static_cast<uint64_t>((b + dp.row_offset) * total_heads + h + dp.head_offset);
  return plane * static_cast<uint64_t>(s.seq * s.seq) + static_cast<uint64_t>(i * s.seq + j);
}

// Fills probs[len, len] (row-major) of one (segment, head) with the masked softmax, using `lse`
// when given (backward) or computing it (forward, written to lse_out). Invisible entries are 0.
template <class T>
void segment_probs(const T* q, const T* k, int64_t ld, int64_t len, int64_t sep, int64_t d,
                   T* probs, const T* lse_in, T* lse_out) {
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  blas_gemm(false, true, len, len, d, scale, q, ld, k, ld, T(0), probs, len);
  for (int64_t i = 0; i < len; ++i) {
    T* s = probs + i * len;
    const int64_t visible_end = std::max(sep, i + 1);  // keys [0, visible_end) are visible
    if (lse_in) {
      if constexpr (std::is_same_v<T, float>) exp_shifted_sum(s, visible_end, lse_in[i]);
      else for (int64_t j = 0; j < visible_end; ++j) s[j] = std::exp(s[j] - lse_in[i]);
    } else {
      T mx, sum = 0;
      if constexpr (std::is_same_v<T, float>) {  // vec_math.h: exp 8 lanes at a time
        mx = max_of(s, visible_end);
        sum = exp_shifted_sum(s, visible_end, mx);
      } else {
        mx = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < visible_end; ++j) mx = std::max(mx, s[j]);
        for (int64_t j = 0; j < visible_end; ++j) sum += (s[j] = std::exp(s[j] - mx));
      }
      const T inv = T(1) / sum;
      for (int64_t j = 0; j < visible_end; ++j) s[j] *= inv;
      lse_out[i] = mx + std::log(sum);
    }
    std::fill(s + visible_end, s + len, T(0));
  }
}

template <class T>
void apply_attn_dropout(T* m, int64_t len, const DropoutSpec& dp, const AttnShape& s,
                        const Segment& sg, int64_t h) {
  const T scale = T(1) / (T(1) - static_cast<T>(dp.p));
  for (int64_t i = 0; i < len; ++i)
    for (int64_t j = 0; j < len; ++j) {
      T& x = m[i * len + j];
      if (x == T(0)) continue;
      x = dropout_keep(dp, attn_dropout_index(dp, s, sg.row, h, sg.start + i, sg.start + j))
              ? x * scale : T(0);
    }
}

template <class T>
T* lse_ptr(Tensor* lse) {
  return lse ? lse->data_as<T>() : nullptr;
}
}  // namespace

void attention_forward(const Tensor& qkv, const Tensor& mask_spans, int64_t batch,
                       int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                       const DropoutSpec& dropout, Tensor& context, Tensor* lse) {
  const AttnShape s = check_attention(qkv, mask_spans, batch, num_heads, head_dim, context);
  if (lse) {
    GLMRT_CHECK(lse->numel() == batch * num_heads * s.seq, "attention_forward: lse ", lse->str());
    check_dtype(*lse, qkv.dtype(), "attention_forward lse");
  }
  const std::vector<Segment> segments = segments_of(mask_spans, batch, s.seq);
  const int64_t tasks = static_cast<int64_t>(segments.size()) * num_heads;
  dispatch_float(qkv.dtype(), "attention_forward", [&](auto zero) {
    using T = decltype(zero);
    const T* base = qkv.data_as<T>();
    T* ctx = context.data_as<T>();
    T* lse_all = lse_ptr<T>(lse);
#pragma omp parallel
    {
      std::vector<T> probs, lse_local;
#pragma omp for schedule(dynamic)
      for (int64_t task = 0; task < tasks; ++task) {
        const Segment& sg = segments[task / num_heads];
        const int64_t h = task % num_heads, len = sg.end - sg.start;
        const int64_t row0 = sg.row * s.seq + sg.start;  // first token of the segment
        const T* q = base + row0 * s.qkv_ld + 3 * h * head_dim;
        probs.resize(static_cast<size_t>(len * len));
        lse_local.resize(static_cast<size_t>(len));
        segment_probs(q, q + head_dim, s.qkv_ld, len, sg.sep - sg.start, head_dim, probs.data(),
                      static_cast<const T*>(nullptr), lse_local.data());
        if (lse_all)
          std::copy(lse_local.begin(), lse_local.end(),
                    lse_all + (sg.row * num_heads + h) * s.seq + sg.start);
        if (dropout.enabled()) apply_attn_dropout(probs.data(), len, dropout, s, sg, h);
        blas_gemm(false, false, len, head_dim, len, T(1), probs.data(), len, q + 2 * head_dim,
                  s.qkv_ld, T(0), ctx + row0 * s.ctx_ld + h * head_dim, s.ctx_ld);
      }
    }
  });
}

void attention_backward(const Tensor& qkv, const Tensor& mask_spans, int64_t batch,
                        int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                        const DropoutSpec& dropout, const Tensor& context, const Tensor& lse,
                        const Tensor& dcontext, Tensor& dqkv) {
  const AttnShape s = check_attention(qkv, mask_spans, batch, num_heads, head_dim, context);
  GLMRT_CHECK(dcontext.shape() == context.shape() && dqkv.shape() == qkv.shape(),
              "attention_backward: dcontext ", dcontext.str(), ", dqkv ", dqkv.str());
  GLMRT_CHECK(lse.numel() == batch * num_heads * s.seq, "attention_backward: lse ", lse.str());
  const std::vector<Segment> segments = segments_of(mask_spans, batch, s.seq);
  const int64_t tasks = static_cast<int64_t>(segments.size()) * num_heads, d = head_dim;
  dispatch_float(qkv.dtype(), "attention_backward", [&](auto zero) {
    using T = decltype(zero);
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    const T* base = qkv.data_as<T>();
    const T* out = context.data_as<T>();
    const T* dout = dcontext.data_as<T>();
    const T* lse_all = lse.data_as<T>();
    T* dbase = dqkv.data_as<T>();
#pragma omp parallel
    {
      std::vector<T> probs, dprobs, dropped, delta;
#pragma omp for schedule(dynamic)
      for (int64_t task = 0; task < tasks; ++task) {
        const Segment& sg = segments[task / num_heads];
        const int64_t h = task % num_heads, len = sg.end - sg.start;
        const int64_t row0 = sg.row * s.seq + sg.start;
        const T* q = base + row0 * s.qkv_ld + 3 * h * d;
        const T* k = q + d;
        const T* v = q + 2 * d;
        const T* o = out + row0 * s.ctx_ld + h * d;
        const T* dO = dout + row0 * s.ctx_ld + h * d;
        T* dq = dbase + row0 * s.qkv_ld + 3 * h * d;
        T* dk = dq + d;
        T* dv = dq + 2 * d;
        const size_t sq = static_cast<size_t>(len * len);
        probs.resize(sq);
        dprobs.resize(sq);
        delta.resize(static_cast<size_t>(len));
        segment_probs(q, k, s.qkv_ld, len, sg.sep - sg.start, d, probs.data(),
                      lse_all + (sg.row * num_heads + h) * s.seq + sg.start,
                      static_cast<T*>(nullptr));
        const T* pv = probs.data();  // the probabilities that multiplied V
        if (dropout.enabled()) {
          dropped = probs;
          apply_attn_dropout(dropped.data(), len, dropout, s, sg, h);
          pv = dropped.data();
        }
        // dV = Pᵀ·dO; dP = dO·Vᵀ (then through the dropout mask)
        blas_gemm(true, false, len, d, len, T(1), pv, len, dO, s.ctx_ld, T(0), dv, s.qkv_ld);
        blas_gemm(false, true, len, len, d, T(1), dO, s.ctx_ld, v, s.qkv_ld, T(0), dprobs.data(), len);
        if (dropout.enabled()) apply_attn_dropout(dprobs.data(), len, dropout, s, sg, h);
        // dS = P ⊙ (dP − Δ), Δ_i = Σ_l dO_il·O_il (= Σ_j P_ij·dP_ij)
        for (int64_t i = 0; i < len; ++i) {
          T di = 0;
          for (int64_t l = 0; l < d; ++l) di += dO[i * s.ctx_ld + l] * o[i * s.ctx_ld + l];
          T* row = dprobs.data() + i * len;
          const T* p = probs.data() + i * len;
          for (int64_t j = 0; j < len; ++j) row[j] = p[j] * (row[j] - di);
        }
        // dQ = dS·K·scale; dK = dSᵀ·Q·scale
        blas_gemm(false, false, len, d, len, scale, dprobs.data(), len, k, s.qkv_ld, T(0), dq, s.qkv_ld);
        blas_gemm(true, false, len, d, len, scale, dprobs.data(), len, q, s.qkv_ld, T(0), dk, s.qkv_ld);
      }
    }
  });
}

}  // namespace glmrt::cpu
