// Attention against a KV cache on the GPU (decoding and prefill), the twin of
// kernels/cpu/attention_cached.cpp. Two kernels: one thread per (token, head, dim) stores each
// token's key and value into its cache slot; then one warp per (token, head) walks the visible
// keys of its row through the slot table with the online softmax of attention.cu (every lane
// holds head dims lane, lane + 32, ...). Scores follow attention_common.cuh, including the F16
// query-scaling trick. The table is read per key, so beams that share a context read it from
// the one slot that holds it.
#include "kernels/cuda/attention_common.cuh"

namespace glmrt::cuda {

namespace {

template <class T>
__global__ void kv_store_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ index,
                                const int32_t* __restrict__ table, int64_t n, int64_t num_heads,
                                int64_t head_dim, int64_t capacity, T* __restrict__ k_cache,
                                T* __restrict__ v_cache) {
  const int64_t hl = num_heads * head_dim;
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n * hl) return;
  const int64_t t = i / hl, c = i % hl, h = c / head_dim, e = c % head_dim;
  const int64_t row = index[3 * t], pos = index[3 * t + 1];
  const int64_t slot = table[row * capacity + pos];
  const T* k = qkv + t * 3 * hl + 3 * h * head_dim + head_dim;
  const int64_t dst = (slot * capacity + pos) * hl + c;
  k_cache[dst] = k[e];
  v_cache[dst] = k[head_dim + e];
}

template <class T, int R>
__global__ void __launch_bounds__(kAttentionWarps * 32)
    attention_cached_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ index,
                            const int32_t* __restrict__ table, int64_t items, int64_t num_heads,
                            int head_dim, int64_t capacity, float q_divisor, float score_coeff,
                            const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                            T* __restrict__ context) {
  const int lane = threadIdx.x & 31;
  const int64_t item = blockIdx.x * int64_t{kAttentionWarps} + (threadIdx.x >> 5);
  if (item >= items) return;  // the whole warp leaves together
  const int64_t t = item / num_heads, h = item % num_heads, hl = num_heads * head_dim;
  const int64_t row = index[3 * t], visible = index[3 * t + 2];
  float q[R];
  load_score_query<T, R>(qkv + t * 3 * hl + 3 * h * head_dim, head_dim, q_divisor, q);
  float acc[R] = {};
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = 0; j < visible; ++j) {
    const int64_t off = (static_cast<int64_t>(table[row * capacity + j]) * capacity + j) * hl + h * head_dim;
    float k[R], v[R];
    load_row<T, R>(k_cache + off, head_dim, k);
    load_row<T, R>(v_cache + off, head_dim, v);
    const float s = attention_score<T, R>(q, k, score_coeff);
    if (s > m) {
      const float correction = expf(m - s);
      l = l * correction + 1.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = acc[r] * correction + v[r];
      m = s;
    } else {
      const float p = expf(s - m);
      l += p;
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] += p * v[r];
    }
  }
  const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
  T* out = context + t * hl + h * head_dim;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = lane + 32 * r;
    if (i < head_dim) out[i] = from_float<T>(acc[r] * inv_l);
  }
}

}  // namespace

void attention_cached_forward(const Tensor& qkv, const Tensor& token_index, const Tensor& table,
                              int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                              Tensor& k_cache, Tensor& v_cache, Tensor& context) {
  const char* op = "cuda attention_cached_forward";
  check_cuda_tensor(qkv, op);
  const Device device = qkv.device();
  const int64_t n = qkv.rows(), hl = num_heads * head_dim;
  GLMRT_CHECK(num_heads > 0 && head_dim > 0 && head_dim <= kMaxHeadDim, op, ": ", num_heads,
              " heads of dim ", head_dim);
  GLMRT_CHECK(qkv.cols() == 3 * hl, op, ": ", qkv.str(), " is not [n, ", num_heads, " * 3 * ",
              head_dim, "]");
  check_operand(token_index, device, DType::I32, op);
  check_shape(token_index, {n, 3}, op);
  check_operand(table, device, DType::I32, op);
  check_operand(k_cache, device, qkv.dtype(), op);
  check_operand(v_cache, device, qkv.dtype(), op);
  check_operand(context, device, qkv.dtype(), op);
  GLMRT_CHECK(k_cache.ndim() == 3 && k_cache.shape() == v_cache.shape() && k_cache.shape()[2] == hl,
              op, ": caches ", k_cache.str(), " are not [slots, capacity, ", hl, "]");
  const int64_t capacity = k_cache.shape()[1];
  GLMRT_CHECK(table.ndim() == 2 && table.shape()[1] == capacity, op, ": table ", table.str());
  GLMRT_CHECK(context.rows() == n && context.cols() == hl, op, ": context ", context.str());
  if (n == 0) return;
  // The indices are built on the host by the engine, which checks them there; the kernels trust
  // them (reading them back here would synchronise every decoding step).
  const bool half_scores = qkv.dtype() == DType::F16;
  const double sqrt_d = std::sqrt(static_cast<double>(head_dim));
  const float q_divisor = static_cast<float>(half_scores ? sqrt_d * query_scale_coeff : sqrt_d);
  DeviceGuard guard(device);
  dispatch_float(qkv.dtype(), "attention_cached_forward", [&](auto zero) {
    using T = decltype(zero);
    kv_store_kernel<T><<<grid_for(n * hl), kThreads>>>(
        static_cast<const T*>(qkv.data()), static_cast<const int32_t*>(token_index.data()),
        static_cast<const int32_t*>(table.data()), n, num_heads, head_dim, capacity,
        static_cast<T*>(k_cache.data()), static_cast<T*>(v_cache.data()));
    GLMRT_CUDA_CHECK_LAUNCH(kv_store_kernel);
    const int64_t items = n * num_heads;
    const unsigned blocks = static_cast<unsigned>((items + kAttentionWarps - 1) / kAttentionWarps);
    dispatch_head_dim(head_dim, [&](auto per_lane) {
      constexpr int R = decltype(per_lane)::value;
      attention_cached_kernel<T, R><<<blocks, kAttentionWarps * 32>>>(
          static_cast<const T*>(qkv.data()), static_cast<const int32_t*>(token_index.data()),
          static_cast<const int32_t*>(table.data()), items, num_heads, static_cast<int>(head_dim),
          capacity, q_divisor, query_scale_coeff, static_cast<const T*>(k_cache.data()),
          static_cast<const T*>(v_cache.data()), static_cast<T*>(context.data()));
      GLMRT_CUDA_CHECK_LAUNCH(attention_cached_kernel);
    });
  });
}

}  // namespace glmrt::cuda
