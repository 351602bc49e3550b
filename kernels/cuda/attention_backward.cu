// GLM masked attention backward on the GPU, recomputing the probabilities from the forward's
// lse (flash-attention style; no s×s tensor). With P = softmax, P̃ = P ⊙ keep / (1 - p) (dropout)
// and O = P̃·V:
//   dV = P̃ᵀ·dO,   dP̃ = dO·Vᵀ,   dP = dP̃ ⊙ keep / (1 - p),
//   dS = P ⊙ (dP − Δ) with Δ_t = dO_t·O_t,   dQ = dS·K / sqrt(d),   dK = dSᵀ·Q / sqrt(d).
//
// Two passes, one warp per (batch, head, token) item each, no atomics (deterministic):
//   1. per query t: Δ_t, then dQ_t over the keys t sees (visible_keys);
//   2. per key j: dK_j and dV_j over the queries that see j (queries_seeing: the whole segment
//      when j < sep, else [j, end)).
// Each pass recomputes the scores exactly as the forward did (same lanes, same reduction order,
// the F16 rounding trick included), so exp(score - lse) are the forward's probabilities.
// Gradients flow through the F16 score rounding as the identity: the scale is 1/sqrt(d).
// 16-bit qkv with head dim 64 or 128 goes to the tensor-core passes of
// attention_flash_backward.cuh instead (same passes, same recomputation, tiles on mma.sync).
#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_flash_backward.cuh"

namespace glmrt::cuda {

namespace {

// Everything both passes read.
template <class T>
struct BackwardArgs {
  const T* qkv;
  const int32_t* spans;
  const T* context;
  const T* dcontext;
  const float* lse;
  float* delta;  // Δ per item, written by pass 1, read by pass 2
  T* dqkv;
  int64_t seq, num_heads, items, total_heads;
  int head_dim;
  float q_divisor, score_coeff, grad_scale;
  DropoutSpec dropout;
};

// Pass 1: Δ_t and dQ_t = grad_scale · Σ_j dS_tj k_j.
template <class T, int R, bool kDropout>
__global__ void __launch_bounds__(kAttentionWarps * 32)
    attention_dq_kernel(const BackwardArgs<T> a) {
  const int lane = threadIdx.x & 31;
  const int64_t index = blockIdx.x * int64_t{kAttentionWarps} + (threadIdx.x >> 5);
  if (index >= a.items) return;
  const AttentionItem item(index, a.seq, a.num_heads, a.head_dim);
  const int d = a.head_dim;

  float q[R], dout[R], out[R];
  load_score_query<T, R>(item.q_of(a.qkv, item.t, d), d, a.q_divisor, q);
  const int64_t ctx = item.context_offset(item.t, a.num_heads, d);
  load_row<T, R>(a.dcontext + ctx, d, dout);
  load_row<T, R>(a.context + ctx, d, out);
  const float delta = warp_dot(dout, out);
  if (lane == 0) a.delta[index] = delta;
  const float lse = a.lse[index];

  int64_t lo, hi;
  visible_keys(a.spans + (item.first_token + item.t) * 3, item.t, a.seq, lo, hi);
  const uint64_t dropout_base =
      kDropout ? dropout_row_base(a.dropout, item, a.seq, a.total_heads) : 0;
  const float keep_scale = kDropout ? 1.0f / (1.0f - a.dropout.p) : 1.0f;

  float dq[R] = {};
  for (int64_t j = lo; j < hi; ++j) {
    const T* k_row = item.q_of(a.qkv, j, d) + d;
    float k[R], v[R];
    load_row<T, R>(k_row, d, k);
    load_row<T, R>(k_row + d, d, v);
    const float p = expf(attention_score<T, R>(q, k, a.score_coeff) - lse);
    float dp = warp_dot(dout, v);
    if constexpr (kDropout)
      dp =
          dropout_keep(a.dropout, dropout_base + static_cast<uint64_t>(j)) ? dp * keep_scale : 0.0f;
    const float ds = p * (dp - delta);
#pragma unroll
    for (int r = 0; r < R; ++r) dq[r] += ds * k[r];
  }
  T* dq_row = a.dqkv + (item.first_token + item.t) * item.row_width + 3 * item.head * d;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = lane + 32 * r;
    if (i < d) dq_row[i] = from_float<T>(dq[r] * a.grad_scale);
  }
}

// Pass 2: for key j (this item's token), dK_j = grad_scale · Σ_t dS_tj q_t and dV_j = Σ_t P̃_tj
// dO_t.
template <class T, int R, bool kDropout>
__global__ void __launch_bounds__(kAttentionWarps * 32)
    attention_dkv_kernel(const BackwardArgs<T> a) {
  const int lane = threadIdx.x & 31;
  const int64_t index = blockIdx.x * int64_t{kAttentionWarps} + (threadIdx.x >> 5);
  if (index >= a.items) return;
  const AttentionItem key(index, a.seq, a.num_heads, a.head_dim);
  const int d = a.head_dim;
  const int64_t j = key.t;

  float k[R], v[R];
  const T* k_row = key.q_of(a.qkv, j, d) + d;
  load_row<T, R>(k_row, d, k);
  load_row<T, R>(k_row + d, d, v);
  int64_t lo, hi;
  queries_seeing(a.spans + (key.first_token + j) * 3, j, a.seq, lo, hi);
  const float keep_scale = kDropout ? 1.0f / (1.0f - a.dropout.p) : 1.0f;
  const int64_t item0 = index - j;  // the item of token 0 of this (batch row, head)

  float dk[R] = {}, dv[R] = {};
  for (int64_t t = lo; t < hi; ++t) {
    const T* q_row = key.q_of(a.qkv, t, d);
    float q_score[R], q[R], dout[R];
    load_score_query<T, R>(q_row, d, a.q_divisor, q_score);
    load_row<T, R>(q_row, d, q);
    load_row<T, R>(a.dcontext + key.context_offset(t, a.num_heads, d), d, dout);
    const float p = expf(attention_score<T, R>(q_score, k, a.score_coeff) - a.lse[item0 + t]);
    float dp = warp_dot(dout, v);
    float p_kept = p;  // the probability that multiplied v in the forward
    if constexpr (kDropout) {
      AttentionItem query = key;
      query.t = t;
      const bool keep =
          dropout_keep(a.dropout, dropout_row_base(a.dropout, query, a.seq, a.total_heads) +
                                      static_cast<uint64_t>(j));
      p_kept = keep ? p * keep_scale : 0.0f;
      dp = keep ? dp * keep_scale : 0.0f;
    }
    const float ds = p * (dp - a.delta[item0 + t]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      dk[r] += ds * q[r];
      dv[r] += p_kept * dout[r];
    }
  }
  T* dk_row = a.dqkv + (key.first_token + j) * key.row_width + 3 * key.head * d + d;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = lane + 32 * r;
    if (i < d) {
      dk_row[i] = from_float<T>(dk[r] * a.grad_scale);
      dk_row[d + i] = from_float<T>(dv[r]);
    }
  }
}

}  // namespace

void attention_backward(const Tensor& qkv, const Tensor& mask_spans, int64_t batch,
                        int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                        const DropoutSpec& dropout, const Tensor& context, const Tensor& lse,
                        const Tensor& dcontext, Tensor& dqkv) {
  const AttentionShape s =
      check_attention("cuda attention_backward", qkv, mask_spans, batch, num_heads, head_dim,
                      query_scale_coeff, dropout, context);
  const Device device = qkv.device();
  check_operand(lse, device, DType::F32, "cuda attention_backward lse");
  GLMRT_CHECK(lse.numel() == batch * num_heads * s.seq, "cuda attention_backward: lse ", lse.str(),
              " is not [", batch, ", ", num_heads, ", ", s.seq, "]");
  check_operand(dcontext, device, qkv.dtype(), "cuda attention_backward dcontext");
  check_operand(dqkv, device, qkv.dtype(), "cuda attention_backward dqkv");
  GLMRT_CHECK(dcontext.shape() == context.shape() && dqkv.shape() == qkv.shape(),
              "cuda attention_backward: dcontext ", dcontext.str(), ", dqkv ", dqkv.str());
  GLMRT_CHECK(dqkv.data() != qkv.data(), "cuda attention_backward: dqkv must not alias qkv");
  if (s.items == 0) return;

  DeviceGuard guard(device);
  DeviceScratch delta(static_cast<size_t>(s.items) * sizeof(float));
  const unsigned blocks = static_cast<unsigned>((s.items + kAttentionWarps - 1) / kAttentionWarps);
  dispatch_float(qkv.dtype(), "attention_backward", [&](auto zero) {
    using T = decltype(zero);
    const BackwardArgs<T> args{static_cast<const T*>(qkv.data()),
                               static_cast<const int32_t*>(mask_spans.data()),
                               static_cast<const T*>(context.data()),
                               static_cast<const T*>(dcontext.data()),
                               static_cast<const float*>(lse.data()),
                               delta.as<float>(),
                               static_cast<T*>(dqkv.data()),
                               s.seq,
                               num_heads,
                               s.items,
                               s.total_heads,
                               static_cast<int>(head_dim),
                               s.q_divisor,
                               query_scale_coeff,
                               static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim))),
                               dropout};
    const flash::BackwardParams<T> flash_args{args.qkv,        args.spans,      args.context,
                                              args.dcontext,   args.lse,        args.delta,
                                              args.dqkv,       static_cast<int>(s.seq),
                                              static_cast<int>(num_heads),      s.q_divisor,
                                              query_scale_coeff, args.grad_scale, dropout,
                                              s.total_heads};
    if (s.seq <= (int64_t{1} << 30) && flash_attention_backward<T>(flash_args, batch, head_dim))
      return;
    dispatch_head_dim(head_dim, [&](auto per_lane) {
      constexpr int R = decltype(per_lane)::value;
      // Pass 1 writes Δ, which pass 2 reads: the two launches are ordered on the default stream.
      if (dropout.enabled()) {
        attention_dq_kernel<T, R, true><<<blocks, kAttentionWarps * 32>>>(args);
        GLMRT_CUDA_CHECK_LAUNCH(attention_dq_kernel);
        attention_dkv_kernel<T, R, true><<<blocks, kAttentionWarps * 32>>>(args);
        GLMRT_CUDA_CHECK_LAUNCH(attention_dkv_kernel);
      } else {
        attention_dq_kernel<T, R, false><<<blocks, kAttentionWarps * 32>>>(args);
        GLMRT_CUDA_CHECK_LAUNCH(attention_dq_kernel);
        attention_dkv_kernel<T, R, false><<<blocks, kAttentionWarps * 32>>>(args);
        GLMRT_CUDA_CHECK_LAUNCH(attention_dkv_kernel);
      }
    });
  });
}

}  // namespace glmrt::cuda
