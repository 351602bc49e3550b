// GLM masked attention on the CPU: per (segment, head) one BLAS GEMM for the scores, a masked
// fp32 softmax, one GEMM for the context. Segments are block-diagonal, so a packed row never
// computes scores between its sub-sequences.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_common.h"

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
}  // namespace

void attention_forward(const Tensor& qkv, const Tensor& mask_spans, int64_t batch,
                       int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                       Tensor& context, Tensor* lse) {
  const int64_t n = qkv.rows();
  GLMRT_CHECK(batch > 0 && n % batch == 0, "attention_forward: ", n, " rows for batch ", batch);
  const int64_t seq = n / batch, d = head_dim, qkv_ld = qkv.cols(), ctx_ld = num_heads * d;
  GLMRT_CHECK(qkv_ld == num_heads * 3 * d, "attention_forward: ", qkv.str(), " is not [n, ",
              num_heads, " * 3 * ", d, "]");
  check_shape(mask_spans, {n, 3}, "attention_forward mask_spans");
  check_dtype(mask_spans, DType::I32, "attention_forward mask_spans");
  GLMRT_CHECK(context.rows() == n && context.cols() == ctx_ld, "attention_forward: context ",
              context.str());
  if (lse) GLMRT_CHECK(lse->numel() == batch * num_heads * seq, "attention_forward: lse ", lse->str());
  const std::vector<Segment> segments = segments_of(mask_spans, batch, seq);
  const int64_t tasks = static_cast<int64_t>(segments.size()) * num_heads;

  dispatch_float(qkv.dtype(), "attention_forward", [&](auto zero) {
    using T = decltype(zero);
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    const T* base = qkv.data_as<T>();
    T* ctx = context.data_as<T>();
    float* lse_f = (lse && lse->dtype() == DType::F32) ? lse->data_as<float>() : nullptr;
    double* lse_d = (lse && lse->dtype() == DType::F64) ? lse->data_as<double>() : nullptr;
    GLMRT_CHECK(!lse || lse_f || lse_d, "attention_forward: lse must be F32 or F64");
#pragma omp parallel
    {
      std::vector<T> scores;
#pragma omp for schedule(dynamic)
      for (int64_t task = 0; task < tasks; ++task) {
        const Segment& sg = segments[task / num_heads];
        const int64_t h = task % num_heads, len = sg.end - sg.start, sep = sg.sep - sg.start;
        const int64_t row0 = sg.row * seq + sg.start;  // first token of the segment
        const T* q = base + row0 * qkv_ld + 3 * h * d;
        const T* k = q + d;
        const T* v = q + 2 * d;
        scores.resize(static_cast<size_t>(len * len));
        blas_gemm(false, true, len, len, d, scale, q, qkv_ld, k, qkv_ld, T(0), scores.data(), len);
        for (int64_t i = 0; i < len; ++i) {
          T* s = scores.data() + i * len;
          const int64_t visible_end = std::max(sep, i + 1);  // keys [0, visible_end) are visible
          T mx = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j < visible_end; ++j) mx = std::max(mx, s[j]);
          T sum = 0;
          for (int64_t j = 0; j < visible_end; ++j) sum += (s[j] = std::exp(s[j] - mx));
          const T inv = T(1) / sum;
          for (int64_t j = 0; j < visible_end; ++j) s[j] *= inv;
          std::fill(s + visible_end, s + len, T(0));
          const int64_t li = (sg.row * num_heads + h) * seq + sg.start + i;
          if (lse_f) lse_f[li] = static_cast<float>(mx + std::log(sum));
          if (lse_d) lse_d[li] = static_cast<double>(mx + std::log(sum));
        }
        blas_gemm(false, false, len, d, len, T(1), scores.data(), len, v, qkv_ld, T(0),
                  ctx + row0 * ctx_ld + h * d, ctx_ld);
      }
    }
  });
}

}  // namespace glmrt::cpu
