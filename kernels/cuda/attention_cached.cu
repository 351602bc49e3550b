// Attention against a KV cache on the GPU (decoding and prefill), the twin of
// kernels/cpu/attention_cached.cpp. Two kernels: one thread per (token, head, dim) stores each
// token's key and value into its cache slot; then one block of warps per (token, head) walks the
// visible keys of its row through the slot table, the keys split among the warps, each with the
// online softmax of attention.cu (every lane holds head dims lane, lane + 32, ...). Scores follow
// attention_common.cuh, including the F16 query-scaling trick. The table is read per key, so
// beams that share a context read it from the one slot that holds it.
#include "kernels/cuda/attention_common.cuh"

namespace glmrt::cuda {

namespace {

template <class T>
__global__ void kv_store_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ index,
                                const int32_t* __restrict__ table, int64_t n, int64_t num_heads,
                                int64_t head_dim, int64_t capacity, T* __restrict__ k_cache,
                                T* __restrict__ v_cache) {
  const int64_t hl = num_heads * head_dim;
  // A grid-stride loop: grid_for caps the grid (a prefill of 11 × 2048 tokens of h 12288 has more
  // values than the capped grid has threads).
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n * hl;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / hl, c = i % hl, h = c / head_dim, e = c % head_dim;
    const int64_t row = index[3 * t], pos = index[3 * t + 1];
    const int64_t slot = table[row * capacity + pos];
    const T* k = qkv + t * 3 * hl + 3 * h * head_dim + head_dim;
    const int64_t dst = (slot * capacity + pos) * hl + c;
    k_cache[dst] = k[e];
    v_cache[dst] = k[head_dim + e];
  }
}

// One block of kCachedWarps warps per (token, head): warp w takes keys w·U .. w·U + U - 1, then
// every kCachedWarps·U-th key after them, U keys at a time (their loads in flight together), with
// an online softmax of its own; the warps' (max, sum, accumulator) are merged in shared memory at
// the end. A decoding token's keys are thus read by 8 warps with 4 loads each in flight, not by
// one warp key after key (that made a batch-1 decoding step of a 130-token context wait ~80 µs
// per layer on memory latency).
constexpr int kCachedWarps = 8;
constexpr int kCachedKeys = 4;  // U: keys per warp and iteration

template <class T, int R>
__global__ void __launch_bounds__(kCachedWarps * 32)
    attention_cached_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ index,
                            const int32_t* __restrict__ table, int64_t num_heads, int head_dim,
                            int64_t capacity, float q_divisor, float score_coeff,
                            const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                            T* __restrict__ context) {
  __shared__ float warp_max[kCachedWarps], warp_sum_exp[kCachedWarps];
  __shared__ float warp_acc[kCachedWarps][kMaxHeadDim];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t item = blockIdx.x;
  const int64_t t = item / num_heads, h = item % num_heads, hl = num_heads * head_dim;
  const int64_t row = index[3 * t], visible = index[3 * t + 2];
  const int32_t* slots = table + row * capacity;
  float q[R];
  load_score_query<T, R>(qkv + t * 3 * hl + 3 * h * head_dim, head_dim, q_divisor, q);
  float acc[R] = {};
  float m = -INFINITY, l = 0.0f;
  for (int64_t j0 = int64_t{warp} * kCachedKeys; j0 < visible;
       j0 += int64_t{kCachedWarps} * kCachedKeys) {
    float k[kCachedKeys][R], v[kCachedKeys][R], s[kCachedKeys];
#pragma unroll
    for (int u = 0; u < kCachedKeys; ++u) {
      const int64_t j = j0 + u;
      if (j < visible) {  // the same for the whole warp
        const int64_t off = (static_cast<int64_t>(slots[j]) * capacity + j) * hl + h * head_dim;
        load_row<T, R>(k_cache + off, head_dim, k[u]);
        load_row<T, R>(v_cache + off, head_dim, v[u]);
      } else {
#pragma unroll
        for (int r = 0; r < R; ++r) k[u][r] = v[u][r] = 0.0f;
      }
    }
    float block_max = m;
#pragma unroll
    for (int u = 0; u < kCachedKeys; ++u) {
      s[u] = j0 + u < visible ? attention_score<T, R>(q, k[u], score_coeff) : -INFINITY;
      block_max = fmaxf(block_max, s[u]);
    }
    // exp(-inf) = 0 drops the empty start and the keys past the end. block_max is -inf only
    // when every score so far is (F16 scores of a dot product below -65504): nothing to add yet,
    // where exp(-inf - -inf) would be NaN.
    if (block_max == -INFINITY) continue;
    const float correction = expf(m - block_max);
    l *= correction;
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] *= correction;
#pragma unroll
    for (int u = 0; u < kCachedKeys; ++u) {
      const float p = expf(s[u] - block_max);
      l += p;
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] += p * v[u][r];
    }
    m = block_max;
  }
  if (lane == 0) {
    warp_max[warp] = m;
    warp_sum_exp[warp] = l;
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = lane + 32 * r;
    if (i < head_dim) warp_acc[warp][i] = acc[r];
  }
  __syncthreads();
  float total_max = -INFINITY;
#pragma unroll
  for (int w = 0; w < kCachedWarps; ++w) total_max = fmaxf(total_max, warp_max[w]);
  T* out = context + t * hl + h * head_dim;
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
    float sum = 0.0f, value = 0.0f;
#pragma unroll
    for (int w = 0; w < kCachedWarps; ++w) {
      // A warp that saw no key (max -inf) weighs nothing; no key at all gives 0, as the CPU op.
      const float weight = warp_max[w] == -INFINITY ? 0.0f : expf(warp_max[w] - total_max);
      sum += warp_sum_exp[w] * weight;
      value += warp_acc[w][i] * weight;
    }
    out[i] = from_float<T>(sum > 0.0f ? value / sum : 0.0f);
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
  GLMRT_CHECK(n * num_heads <= INT32_MAX, op, ": ", n, " tokens of ", num_heads,
              " heads is more blocks than one launch takes");
  // The indices are built on the host by the engine, which checks them there; the kernels trust
  // them (reading them back here would synchronise every decoding step).
  const bool half_scores = qkv.dtype() == DType::F16;
  GLMRT_CHECK(!half_scores || (std::isfinite(query_scale_coeff) && query_scale_coeff > 0), op,
              ": query_scale_coeff must be finite and > 0, got ", query_scale_coeff);
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
    const auto blocks = static_cast<unsigned>(n * num_heads);  // one per (token, head)
    dispatch_head_dim(head_dim, [&](auto per_lane) {
      constexpr int R = decltype(per_lane)::value;
      attention_cached_kernel<T, R><<<blocks, kCachedWarps * 32>>>(
          static_cast<const T*>(qkv.data()), static_cast<const int32_t*>(token_index.data()),
          static_cast<const int32_t*>(table.data()), num_heads, static_cast<int>(head_dim),
          capacity, q_divisor, query_scale_coeff, static_cast<const T*>(k_cache.data()),
          static_cast<const T*>(v_cache.data()), static_cast<T*>(context.data()));
      GLMRT_CUDA_CHECK_LAUNCH(attention_cached_kernel);
    });
  });
}

}  // namespace glmrt::cuda
