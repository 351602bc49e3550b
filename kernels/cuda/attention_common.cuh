// Pieces shared by the attention forward and backward kernels: where a (batch row, head, token)
// lives in qkv, which keys a query sees (and which queries see a key), how a score is computed
// (bit-identical in both passes, so that exp(score - lse) reproduces the forward probabilities),
// and the dropout index of a probability.
//
// Every kernel here uses one warp per (batch row, head, token) item; lane l holds head dims
// l, l + 32, ... (R = ceil(d / 32) registers each, d <= 256). Item index
// (b * num_heads + head) * seq + t is also the token's position in lse [batch, heads, seq].
#pragma once

#include <cmath>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

constexpr int kAttentionWarps = 4;  // items per block
constexpr int kMaxHeadDim = 256;

// One (batch row, head, token) item of a [batch * seq, heads * 3 * d] qkv tensor.
struct AttentionItem {
  int64_t t;  // token within its batch row
  int64_t head;
  int64_t batch_row;
  int64_t first_token;  // global row of token 0 of this batch row
  int64_t row_width;    // qkv row length: heads * 3 * d

  __device__ AttentionItem(int64_t item, int64_t seq, int64_t num_heads, int head_dim)
      : t(item % seq),
        head((item / seq) % num_heads),
        batch_row(item / (seq * num_heads)),
        first_token(batch_row * seq),
        row_width(num_heads * 3 * head_dim) {}

  // q of token j of this batch row and head (k at + d, v at + 2d).
  template <class T>
  __device__ const T* q_of(const T* qkv, int64_t j, int head_dim) const {
    return qkv + (first_token + j) * row_width + 3 * head * head_dim;
  }
  // Offset of this item's head in a [batch * seq, heads * d] context row of token j.
  __device__ int64_t context_offset(int64_t j, int64_t num_heads, int head_dim) const {
    return (first_token + j) * (num_heads * head_dim) + head * head_dim;
  }
};

// The span {start, sep, end} of token t: it sees keys [start, min(end, max(sep, t + 1))).
// Clamped into [0, seq) so that malformed spans can never read outside the batch row.
__device__ __forceinline__ void visible_keys(const int32_t* span, int64_t t, int64_t seq,
                                             int64_t& lo, int64_t& hi) {
  const int64_t start = span[0], sep = span[1], end = span[2];
  lo = max(start, int64_t{0});
  hi = min(min(end, max(sep, t + 1)), seq);
}

// The queries that see key j of a segment {start, sep, end}: all of it when j < sep (the
// bidirectional part), else the causal ones [j, end).
__device__ __forceinline__ void queries_seeing(const int32_t* span, int64_t j, int64_t seq,
                                               int64_t& lo, int64_t& hi) {
  const int64_t start = span[0], sep = span[1], end = span[2];
  lo = max(j < sep ? start : j, int64_t{0});
  hi = min(end, seq);
}

// Loads a query's dims into score form: q / divisor in fp32, rounded to fp16 for F16 storage
// (the GLM-130B trick: divisor = sqrt(d) * coeff there, sqrt(d) otherwise).
template <class T, int R>
__device__ __forceinline__ void load_score_query(const T* q, int head_dim, float q_divisor,
                                                 float (&out)[R]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = lane + 32 * r;
    float x = i < head_dim ? to_float(q[i]) / q_divisor : 0.0f;
    if constexpr (std::is_same_v<T, __half>) x = __half2float(__float2half_rn(x));
    out[r] = x;
  }
}

// Loads a row's dims as fp32 (0 beyond head_dim).
template <class T, int R>
__device__ __forceinline__ void load_row(const T* x, int head_dim, float (&out)[R]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = lane + 32 * r;
    out[r] = i < head_dim ? to_float(x[i]) : 0.0f;
  }
}

// Σ a·b over the warp's dims; every lane gets the same bits.
template <int R>
__device__ __forceinline__ float warp_dot(const float (&a)[R], const float (&b)[R]) {
  float partial = 0.0f;
#pragma unroll
  for (int r = 0; r < R; ++r) partial += a[r] * b[r];
  return warp_sum(partial);
}

// The score of a query (in score form) and a key: F16 rounds the dot product to fp16 and
// multiplies by the coefficient, as the reference's fp16 GEMM and fp32 rescale do.
template <class T, int R>
__device__ __forceinline__ float attention_score(const float (&q)[R], const float (&k)[R],
                                                 float score_coeff) {
  float s = warp_dot(q, k);
  if constexpr (std::is_same_v<T, __half>) s = __half2float(__float2half_rn(s)) * score_coeff;
  return s;
}

// Global dropout index of (item, key 0): ((b + row_offset) * total_heads + head + head_offset)
// * seq² + t * seq; key j adds j.
__device__ __forceinline__ uint64_t dropout_row_base(const DropoutSpec& dropout,
                                                     const AttentionItem& item, int64_t seq,
                                                     int64_t total_heads) {
  return static_cast<uint64_t>(
      ((item.batch_row + dropout.row_offset) * total_heads + item.head + dropout.head_offset) *
          seq * seq +
      item.t * seq);
}

// Calls fn(std::integral_constant<int, R>{}) with R = ceil(head_dim / 32) rounded up to 1, 2, 4, 8.
template <class Fn>
void dispatch_head_dim(int64_t head_dim, Fn&& fn) {
  if (head_dim <= 32)
    fn(std::integral_constant<int, 1>{});
  else if (head_dim <= 64)
    fn(std::integral_constant<int, 2>{});
  else if (head_dim <= 128)
    fn(std::integral_constant<int, 4>{});
  else
    fn(std::integral_constant<int, 8>{});
}

}  // namespace glmrt::cuda

namespace glmrt::cuda {

// Host-side checks shared by attention_forward and attention_backward.
struct AttentionShape {
  int64_t seq;          // tokens per batch row
  int64_t items;        // batch * heads * seq
  int64_t total_heads;  // for the dropout index: dropout.total_heads, or this call's heads
  float q_divisor;      // sqrt(d), times the query scale coefficient for F16
};

inline AttentionShape check_attention(const char* op, const Tensor& qkv, const Tensor& mask_spans,
                                      int64_t batch, int64_t num_heads, int64_t head_dim,
                                      float query_scale_coeff, const DropoutSpec& dropout,
                                      const Tensor& context) {
  check_cuda_tensor(qkv, op);
  const Device device = qkv.device();
  const int64_t n = qkv.rows();
  GLMRT_CHECK(batch > 0 && n % batch == 0, op, ": ", n, " rows for batch ", batch);
  GLMRT_CHECK(num_heads > 0 && head_dim > 0 && head_dim <= kMaxHeadDim, op, ": ", num_heads,
              " heads of dim ", head_dim, " (the kernels take head dims 1..", kMaxHeadDim, ")");
  GLMRT_CHECK(qkv.cols() == num_heads * 3 * head_dim, op, ": ", qkv.str(), " is not [n, ",
              num_heads, " * 3 * ", head_dim, "]");
  check_operand(mask_spans, device, DType::I32, op);
  check_shape(mask_spans, {n, 3}, op);
  check_operand(context, device, qkv.dtype(), op);
  GLMRT_CHECK(context.rows() == n && context.cols() == num_heads * head_dim, op, ": context ",
              context.str(), " is not [", n, ", ", num_heads * head_dim, "]");
  AttentionShape s;
  s.seq = n / batch;
  s.items = n * num_heads;
  GLMRT_CHECK((s.items + kAttentionWarps - 1) / kAttentionWarps <= INT32_MAX, op, ": ", s.items,
              " (token, head) items is too many");
  // total_heads = 0 stands for this call's own heads (no tensor parallelism), as on the CPU.
  s.total_heads = dropout.total_heads > 0 ? dropout.total_heads : num_heads;
  if (dropout.enabled())
    GLMRT_CHECK(dropout.p < 1.0f && dropout.row_offset >= 0 && dropout.head_offset >= 0 &&
                    dropout.head_offset + num_heads <= s.total_heads,
                op, ": bad dropout p ", dropout.p, " / head offset ", dropout.head_offset, " of ",
                s.total_heads, " heads for ", num_heads, " local heads");
  const bool half_scores = qkv.dtype() == DType::F16;
  if (half_scores)
    GLMRT_CHECK(std::isfinite(query_scale_coeff) && query_scale_coeff > 0.0f, op,
                ": query_scale_coeff must be positive, got ", query_scale_coeff);
  const double sqrt_d = std::sqrt(static_cast<double>(head_dim));
  s.q_divisor = static_cast<float>(half_scores ? sqrt_d * query_scale_coeff : sqrt_d);
  return s;
}

}  // namespace glmrt::cuda
