// GLM masked attention forward on the GPU.
//
// The mask is never materialised. For query token t with span {start, sep, end}, key j is
// visible iff start <= j < end and (j < sep or j <= t), i.e. j < max(sep, t + 1): the visible keys
// are the single contiguous range [start, min(end, max(sep, t + 1))).
//
// 16-bit qkv with head dim 64 or 128 (GLM-130B's 128 among them) goes to the tensor-core kernel
// of attention_flash.cuh; everything else (F32, other head dims) to the kernel below.
//
// Design (simple and exact, linear memory): one warp per (batch, head, query), see
// attention_common.cuh. For each visible key the warp computes the score with a butterfly
// reduction (every lane gets the identical value), then updates an online softmax:
//   m' = max(m, s),  l' = l·e^(m-m') + e^(s-m'),  acc' = acc·e^(m-m') + e^(s-m')·v
// and finally writes acc / l and lse = m + log(l). Warps of a block take consecutive queries of
// one (batch, head), so they walk the same keys and share them through L1/L2.
//
// Dropout (when enabled) drops softmax probabilities after lse is taken: l sums every visible
// key's weight, acc only the kept ones, and the result is scaled by 1 / (1 - p). The decision for
// (row b, head h, query i, key j) is dropout_keep(spec, ((b + row_offset) * total_heads + h +
// head_offset) * seq² + i * seq + j), the same Philox draw as on the CPU.
//
// Numerics: F32 and BF16 scale q by 1/sqrt(d) in fp32. F16 follows the GLM-130B reference,
// which keeps fp16 scores in range: q is divided by sqrt(d)·c and rounded to fp16, the fp32 dot
// product is rounded to fp16 (the reference's fp16 GEMM output) and multiplied by c in fp32.
#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_flash.cuh"

namespace glmrt::cuda {

namespace {

template <class T, int R, bool kDropout>
__global__ void __launch_bounds__(kAttentionWarps * 32)
    attention_forward_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ spans,
                             int64_t seq, int64_t num_heads, int head_dim, int64_t items,
                             float q_divisor, float score_coeff, DropoutSpec dropout,
                             int64_t total_heads, T* __restrict__ context,
                             float* __restrict__ lse) {
  const int lane = threadIdx.x & 31;
  const int64_t index = blockIdx.x * int64_t{kAttentionWarps} + (threadIdx.x >> 5);
  if (index >= items) return;  // the whole warp leaves together
  const AttentionItem item(index, seq, num_heads, head_dim);

  float q[R];
  load_score_query<T, R>(item.q_of(qkv, item.t, head_dim), head_dim, q_divisor, q);
  int64_t lo, hi;
  visible_keys(spans + (item.first_token + item.t) * 3, item.t, seq, lo, hi);
  const uint64_t dropout_base = kDropout ? dropout_row_base(dropout, item, seq, total_heads) : 0;

  float acc[R] = {};
  float m = -INFINITY;  // running max of the scores
  float l = 0.0f;       // running sum of exp(score - m) over every visible key
  for (int64_t j = lo; j < hi; ++j) {
    const T* k_row = item.q_of(qkv, j, head_dim) + head_dim;
    float k[R], v[R];
    load_row<T, R>(k_row, head_dim, k);
    load_row<T, R>(k_row + head_dim, head_dim, v);
    const float s = attention_score<T, R>(q, k, score_coeff);  // uniform across the warp
    const bool keep = !kDropout || dropout_keep(dropout, dropout_base + static_cast<uint64_t>(j));
    if (s > m) {  // new maximum: rescale what was accumulated so far
      const float correction = expf(m - s);
      l = l * correction + 1.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = acc[r] * correction + (keep ? v[r] : 0.0f);
      m = s;
    } else {
      const float p = expf(s - m);
      l += p;
      if (keep) {
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] += p * v[r];
      }
    }
  }

  // No visible key (only possible with malformed spans): context 0, lse -inf.
  float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
  if constexpr (kDropout) inv_l *= 1.0f / (1.0f - dropout.p);
  T* out = context + item.context_offset(item.t, num_heads, head_dim);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = lane + 32 * r;
    if (i < head_dim) out[i] = from_float<T>(acc[r] * inv_l);
  }
  if (lse && lane == 0) lse[index] = l > 0.0f ? m + logf(l) : -INFINITY;
}

}  // namespace

void attention_forward(const Tensor& qkv, const Tensor& mask_spans, int64_t batch,
                       int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                       const DropoutSpec& dropout, Tensor& context, Tensor* lse) {
  const AttentionShape s =
      check_attention("cuda attention_forward", qkv, mask_spans, batch, num_heads, head_dim,
                      query_scale_coeff, dropout, context);
  float* lse_ptr = nullptr;
  if (lse) {
    check_operand(*lse, qkv.device(), DType::F32, "cuda attention_forward lse");
    GLMRT_CHECK(lse->numel() == batch * num_heads * s.seq, "cuda attention_forward: lse ",
                lse->str(), " is not [", batch, ", ", num_heads, ", ", s.seq, "]");
    lse_ptr = static_cast<float*>(lse->data());
  }
  if (s.items == 0) return;

  DeviceGuard guard(qkv.device());
  const unsigned blocks = static_cast<unsigned>((s.items + kAttentionWarps - 1) / kAttentionWarps);
  dispatch_float(qkv.dtype(), "attention_forward", [&](auto zero) {
    using T = decltype(zero);
    if (flash_attention_forward<T>(static_cast<const T*>(qkv.data()),
                                   static_cast<const int32_t*>(mask_spans.data()), batch, s.seq,
                                   num_heads, head_dim, s.q_divisor, query_scale_coeff, dropout,
                                   s.total_heads, static_cast<T*>(context.data()), lse_ptr))
      return;
    dispatch_head_dim(head_dim, [&](auto per_lane) {
      constexpr int R = decltype(per_lane)::value;
      const auto launch = [&](auto kernel) {
        kernel<<<blocks, kAttentionWarps * 32>>>(
            static_cast<const T*>(qkv.data()), static_cast<const int32_t*>(mask_spans.data()),
            s.seq, num_heads, static_cast<int>(head_dim), s.items, s.q_divisor, query_scale_coeff,
            dropout, s.total_heads, static_cast<T*>(context.data()), lse_ptr);
        GLMRT_CUDA_CHECK_LAUNCH(attention_forward_kernel);
      };
      if (dropout.enabled())
        launch(attention_forward_kernel<T, R, true>);
      else
        launch(attention_forward_kernel<T, R, false>);
    });
  });
}

}  // namespace glmrt::cuda
