// GLM masked attention backward on the tensor cores (FlashAttention-2 style), for 16-bit qkv with
// head dims 64 and 128; attention_backward.cu falls back to the warp-per-item kernels otherwise.
// The same two deterministic passes as there (no atomics), with tiles on mma.sync:
//   0. Δ_t = dO_t·O_t, one warp per (token, head);
//   1. per block of 64 queries (16 per warp), over 32-key tiles of K and V that some query sees:
//      S = Q·Kᵀ, P = exp(S − lse), dP = dO·Vᵀ (dropout applied), dS = P ⊙ (dP − Δ), dQ += dS·K;
//   2. per block of 64 keys (16 per warp, K and V of the block in shared memory), over 32-query
//      tiles of Q, dO, lse and Δ that see some key of the block: Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ,
//      dV += P̃ᵀ·dO, dK += dSᵀ·Q.
// Scores are recomputed as in the forward kernel of attention_flash.cuh (F16: q / (sqrt(d)·c)
// rounded to fp16, the product rounded to fp16, times c); P̃ and dS are rounded to the 16-bit type
// for the second products. F16 keeps Q in score form in pass 2, so dK is scaled by sqrt(d)·c /
// sqrt(d) = c there instead of 1 / sqrt(d) (the gradient flows through the rounding as identity).
#pragma once

#include "kernels/cuda/attention_flash.cuh"

namespace glmrt::cuda {

namespace flash {

constexpr int kBwdTile = 32;  // keys per tile in pass 1, queries per tile in pass 2

template <class T>
struct BackwardParams {
  const T* qkv;
  const int32_t* spans;
  const T* context;
  const T* dcontext;
  const float* lse;
  float* delta;
  T* dqkv;
  int seq, num_heads;
  float q_divisor, score_coeff, grad_scale;
  DropoutSpec dropout;
  int64_t total_heads;
};

// The score of an S accumulator: F16 rounds to fp16 and multiplies by c, others divide by sqrt(d).
template <class T>
__device__ __forceinline__ float score_of(float acc, float scale) {
  if constexpr (std::is_same_v<T, __half>) acc = __half2float(__float2half_rn(acc));
  return acc * scale;
}

// Pass 0: Δ for (token, head) item i = (b * heads + head) * seq + t, the lse layout.
template <class T, int D>
__global__ void __launch_bounds__(128) delta_kernel(const BackwardParams<T> a, int64_t items) {
  const int lane = threadIdx.x & 31;
  const int64_t index = blockIdx.x * int64_t{4} + (threadIdx.x >> 5);
  if (index >= items) return;
  const int64_t t = index % a.seq, head = (index / a.seq) % a.num_heads, b = index / (int64_t{a.seq} * a.num_heads);
  const int64_t off = (b * a.seq + t) * (int64_t{a.num_heads} * D) + head * D;
  float s = 0.0f;
#pragma unroll
  for (int i = lane; i < D; i += 32) s += to_float(a.dcontext[off + i]) * to_float(a.context[off + i]);
  s = warp_sum(s);
  if (lane == 0) a.delta[index] = s;
}

// Pass 1: dQ.
template <class T, int D, bool kDropout>
__global__ void __launch_bounds__(kThreads) dq_kernel(const BackwardParams<T> a) {
  constexpr int KS = D + 8;
  __shared__ __align__(16) T k_tile[kBwdTile * KS];
  __shared__ __align__(16) T v_tile[kBwdTile * KS];
  __shared__ int key_range[2];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = lane >> 2, tig = lane & 3;
  const int head = blockIdx.y, b = blockIdx.z, seq = a.seq;
  const int64_t row_width = static_cast<int64_t>(a.num_heads) * 3 * D;
  const int64_t ctx_width = static_cast<int64_t>(a.num_heads) * D;
  const int64_t first = static_cast<int64_t>(b) * seq;
  const T* base = a.qkv + first * row_width + static_cast<int64_t>(3) * head * D;
  const int64_t stat0 = (static_cast<int64_t>(b) * a.num_heads + head) * seq;  // lse / Δ of token 0

  const int row0 = blockIdx.x * kQueries + warp * 16 + group;
  int rows[2] = {row0, row0 + 8}, lo[2], hi[2];
  float lse[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lo[r] = hi[r] = 0;
    lse[r] = delta[r] = 0.0f;
    if (rows[r] < seq) {
      const int32_t* span = a.spans + (first + rows[r]) * 3;
      lo[r] = max(span[0], 0);
      hi[r] = min(min(span[2], max(span[1], rows[r] + 1)), seq);
      lse[r] = a.lse[stat0 + rows[r]];
      delta[r] = a.delta[stat0 + rows[r]];
    }
  }
  if (threadIdx.x == 0) {
    key_range[0] = seq;
    key_range[1] = 0;
  }
  __syncthreads();
  if (tig == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (lo[r] < hi[r]) {
        atomicMin(&key_range[0], lo[r]);
        atomicMax(&key_range[1], hi[r]);
      }
  }

  // Q (score form for F16) and dO as A fragments.
  uint32_t qf[D / 16][4], df[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = rows[i & 1], col = kk * 16 + tig * 2 + (i >= 2 ? 8 : 0);
      uint32_t qv = 0, dv = 0;
      if (row < seq) {
        const T* q = base + row * row_width + col;
        if constexpr (std::is_same_v<T, __half>)
          qv = pack2<T>(to_float(q[0]) / a.q_divisor, to_float(q[1]) / a.q_divisor);
        else
          qv = load2(q);
        dv = load2(a.dcontext + (first + row) * ctx_width + head * D + col);
      }
      qf[kk][i] = qv;
      df[kk][i] = dv;
    }
  const float score_scale = std::is_same_v<T, __half> ? a.score_coeff : 1.0f / a.q_divisor;
  const float keep_scale = kDropout ? 1.0f / (1.0f - a.dropout.p) : 1.0f;
  constexpr float kLog2e = 1.4426950408889634f;
  uint64_t dropout_base[2] = {0, 0};
  if constexpr (kDropout) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      dropout_base[r] = static_cast<uint64_t>(
          ((b + a.dropout.row_offset) * a.total_heads + head + a.dropout.head_offset) * seq * seq +
          static_cast<int64_t>(rows[r]) * seq);
  }

  float dq[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

  __syncthreads();
  const int key_lo = key_range[0], key_hi = key_range[1];
  for (int k0 = key_lo / kBwdTile * kBwdTile; k0 < key_hi; k0 += kBwdTile) {
    __syncthreads();
    constexpr int kChunksPerRow = D / 8;
    for (int c = threadIdx.x; c < kBwdTile * kChunksPerRow; c += kThreads) {
      const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (k0 + r < seq) {
        const T* src = base + static_cast<int64_t>(k0 + r) * row_width + D + col;
        kv = *reinterpret_cast<const uint4*>(src);
        vv = *reinterpret_cast<const uint4*>(src + D);
      }
      *reinterpret_cast<uint4*>(&k_tile[r * KS + col]) = kv;
      *reinterpret_cast<uint4*>(&v_tile[r * KS + col]) = vv;
    }
    __syncthreads();

    float s[kBwdTile / 8][4], dp[kBwdTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kBwdTile / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
      const T* krow = &k_tile[(nt * 8 + group) * KS + tig * 2];
      const T* vrow = &v_tile[(nt * 8 + group) * KS + tig * 2];
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        mma<T>(s[nt], qf[kk], load2(krow + kk * 16), load2(krow + kk * 16 + 8));
        mma<T>(dp[nt], df[kk], load2(vrow + kk * 16), load2(vrow + kk * 16 + 8));
      }
    }
    // dS = P ⊙ (dP − Δ), into s.
#pragma unroll
    for (int nt = 0; nt < kBwdTile / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, key = k0 + nt * 8 + tig * 2 + (e & 1);
        const bool visible = key >= lo[r] && key < hi[r];
        const float p =
            visible ? exp2f((score_of<T>(s[nt][e], score_scale) - lse[r]) * kLog2e) : 0.0f;
        float g = dp[nt][e];
        if constexpr (kDropout)
          g = dropout_keep(a.dropout, dropout_base[r] + static_cast<uint64_t>(key)) ? g * keep_scale : 0.0f;
        s[nt][e] = p * (g - delta[r]);
      }
    // dQ += dS·K.
#pragma unroll
    for (int kt = 0; kt < kBwdTile / 16; ++kt) {
      const uint32_t af[4] = {pack2<T>(s[2 * kt][0], s[2 * kt][1]), pack2<T>(s[2 * kt][2], s[2 * kt][3]),
                              pack2<T>(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                              pack2<T>(s[2 * kt + 1][2], s[2 * kt + 1][3])};
      const T* krow = &k_tile[(kt * 16 + (lane & 15)) * KS];
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        uint32_t b0, b1;
        ldmatrix_x2_trans(b0, b1, krow + n * 8);
        mma<T>(dq[n], af, b0, b1);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= seq) continue;
    T* out = a.dqkv + (first + rows[r]) * row_width + static_cast<int64_t>(3) * head * D + tig * 2;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(out + n * 8) =
          pack2<T>(dq[n][2 * r] * a.grad_scale, dq[n][2 * r + 1] * a.grad_scale);
  }
}

// Shared memory of pass 2: K and V of the block's 64 keys, then a tile of Q and dO, lse and Δ.
template <int D>
constexpr size_t dkv_shared_bytes() {
  return (2 * kQueries + 2 * kBwdTile) * (D + 8) * 2 + 2 * kBwdTile * sizeof(float);
}

// Pass 2: dK and dV.
template <class T, int D, bool kDropout>
__global__ void __launch_bounds__(kThreads) dkv_kernel(const BackwardParams<T> a) {
  constexpr int KS = D + 8;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  T* k_blk = reinterpret_cast<T*>(shared_bytes);
  T* v_blk = k_blk + kQueries * KS;
  T* q_tile = v_blk + kQueries * KS;
  T* do_tile = q_tile + kBwdTile * KS;
  float* lse_tile = reinterpret_cast<float*>(do_tile + kBwdTile * KS);
  float* delta_tile = lse_tile + kBwdTile;
  __shared__ int query_range[2];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = lane >> 2, tig = lane & 3;
  const int head = blockIdx.y, b = blockIdx.z, seq = a.seq;
  const int64_t row_width = static_cast<int64_t>(a.num_heads) * 3 * D;
  const int64_t ctx_width = static_cast<int64_t>(a.num_heads) * D;
  const int64_t first = static_cast<int64_t>(b) * seq;
  const T* base = a.qkv + first * row_width + static_cast<int64_t>(3) * head * D;
  const int64_t stat0 = (static_cast<int64_t>(b) * a.num_heads + head) * seq;
  const int key_block = blockIdx.x * kQueries;

  // This thread's two keys and the queries that see each (the whole segment before sep, else
  // [j, end)).
  const int key0 = key_block + warp * 16 + group;
  int keys[2] = {key0, key0 + 8}, lo[2], hi[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lo[r] = hi[r] = 0;
    if (keys[r] < seq) {
      const int32_t* span = a.spans + (first + keys[r]) * 3;
      lo[r] = max(keys[r] < span[1] ? span[0] : keys[r], 0);
      hi[r] = min(span[2], seq);
    }
  }
  if (threadIdx.x == 0) {
    query_range[0] = seq;
    query_range[1] = 0;
  }
  constexpr int kChunksPerRow = D / 8;
  for (int c = threadIdx.x; c < kQueries * kChunksPerRow; c += kThreads) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
    if (key_block + r < seq) {
      const T* src = base + static_cast<int64_t>(key_block + r) * row_width + D + col;
      kv = *reinterpret_cast<const uint4*>(src);
      vv = *reinterpret_cast<const uint4*>(src + D);
    }
    *reinterpret_cast<uint4*>(&k_blk[r * KS + col]) = kv;
    *reinterpret_cast<uint4*>(&v_blk[r * KS + col]) = vv;
  }
  __syncthreads();
  if (tig == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (lo[r] < hi[r]) {
        atomicMin(&query_range[0], lo[r]);
        atomicMax(&query_range[1], hi[r]);
      }
  }

  const float score_scale = std::is_same_v<T, __half> ? a.score_coeff : 1.0f / a.q_divisor;
  const float dk_scale = std::is_same_v<T, __half> ? a.grad_scale * a.q_divisor : a.grad_scale;
  const float keep_scale = kDropout ? 1.0f / (1.0f - a.dropout.p) : 1.0f;
  constexpr float kLog2e = 1.4426950408889634f;
  const uint64_t dropout_head =
      kDropout ? static_cast<uint64_t>(((b + a.dropout.row_offset) * a.total_heads + head +
                                        a.dropout.head_offset) * seq * seq)
               : 0;

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;

  __syncthreads();
  const int q_lo = query_range[0], q_hi = query_range[1];
  const T* krow = &k_blk[(warp * 16 + group) * KS + tig * 2];  // A fragments of K and V
  const T* vrow = &v_blk[(warp * 16 + group) * KS + tig * 2];
  for (int q0 = q_lo / kBwdTile * kBwdTile; q0 < q_hi; q0 += kBwdTile) {
    __syncthreads();
    for (int c = threadIdx.x; c < kBwdTile * kChunksPerRow; c += kThreads) {
      const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
      uint4 qv = make_uint4(0, 0, 0, 0), dv4 = make_uint4(0, 0, 0, 0);
      if (q0 + r < seq) {
        qv = *reinterpret_cast<const uint4*>(base + static_cast<int64_t>(q0 + r) * row_width + col);
        dv4 = *reinterpret_cast<const uint4*>(a.dcontext + (first + q0 + r) * ctx_width + head * D + col);
        if constexpr (std::is_same_v<T, __half>) {  // score form
          __half* h = reinterpret_cast<__half*>(&qv);
#pragma unroll
          for (int i = 0; i < 8; ++i) h[i] = __float2half_rn(__half2float(h[i]) / a.q_divisor);
        }
      }
      *reinterpret_cast<uint4*>(&q_tile[r * KS + col]) = qv;
      *reinterpret_cast<uint4*>(&do_tile[r * KS + col]) = dv4;
    }
    if (threadIdx.x < kBwdTile) {
      const int t = q0 + threadIdx.x;
      lse_tile[threadIdx.x] = t < seq ? a.lse[stat0 + t] : 0.0f;
      delta_tile[threadIdx.x] = t < seq ? a.delta[stat0 + t] : 0.0f;
    }
    __syncthreads();

    // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ for the warp's 16 keys and the tile's 32 queries.
    float s[kBwdTile / 8][4], dp[kBwdTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kBwdTile / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t ka[4] = {load2(krow + kk * 16), load2(krow + 8 * KS + kk * 16),
                              load2(krow + kk * 16 + 8), load2(krow + 8 * KS + kk * 16 + 8)};
      const uint32_t va[4] = {load2(vrow + kk * 16), load2(vrow + 8 * KS + kk * 16),
                              load2(vrow + kk * 16 + 8), load2(vrow + 8 * KS + kk * 16 + 8)};
#pragma unroll
      for (int nt = 0; nt < kBwdTile / 8; ++nt) {
        const T* qrow = &q_tile[(nt * 8 + group) * KS + tig * 2 + kk * 16];
        const T* drow = &do_tile[(nt * 8 + group) * KS + tig * 2 + kk * 16];
        mma<T>(s[nt], ka, load2(qrow), load2(qrow + 8));
        mma<T>(dp[nt], va, load2(drow), load2(drow + 8));
      }
    }
    // P̃ (the kept, scaled probabilities) into s, dS into dp.
#pragma unroll
    for (int nt = 0; nt < kBwdTile / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, tq = nt * 8 + tig * 2 + (e & 1), t = q0 + tq;
        const bool visible = t >= lo[r] && t < hi[r];
        const float p =
            visible ? exp2f((score_of<T>(s[nt][e], score_scale) - lse_tile[tq]) * kLog2e) : 0.0f;
        float g = dp[nt][e], p_kept = p;
        if constexpr (kDropout) {
          const bool keep = dropout_keep(a.dropout, dropout_head + static_cast<uint64_t>(t) * seq +
                                                        static_cast<uint64_t>(keys[r]));
          g = keep ? g * keep_scale : 0.0f;
          p_kept = keep ? p * keep_scale : 0.0f;
        }
        s[nt][e] = p_kept;
        dp[nt][e] = p * (g - delta_tile[tq]);
      }
    // dV += P̃ᵀ·dO and dK += dSᵀ·Q (16 queries per step).
#pragma unroll
    for (int kt = 0; kt < kBwdTile / 16; ++kt) {
      const uint32_t pa[4] = {pack2<T>(s[2 * kt][0], s[2 * kt][1]), pack2<T>(s[2 * kt][2], s[2 * kt][3]),
                              pack2<T>(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                              pack2<T>(s[2 * kt + 1][2], s[2 * kt + 1][3])};
      const uint32_t da[4] = {pack2<T>(dp[2 * kt][0], dp[2 * kt][1]), pack2<T>(dp[2 * kt][2], dp[2 * kt][3]),
                              pack2<T>(dp[2 * kt + 1][0], dp[2 * kt + 1][1]),
                              pack2<T>(dp[2 * kt + 1][2], dp[2 * kt + 1][3])};
      const T* dorow = &do_tile[(kt * 16 + (lane & 15)) * KS];
      const T* qtrow = &q_tile[(kt * 16 + (lane & 15)) * KS];
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        uint32_t b0, b1;
        ldmatrix_x2_trans(b0, b1, dorow + n * 8);
        mma<T>(dv[n], pa, b0, b1);
        ldmatrix_x2_trans(b0, b1, qtrow + n * 8);
        mma<T>(dk[n], da, b0, b1);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (keys[r] >= seq) continue;
    T* out = a.dqkv + (first + keys[r]) * row_width + static_cast<int64_t>(3) * head * D + D + tig * 2;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(out + n * 8) = pack2<T>(dk[n][2 * r] * dk_scale, dk[n][2 * r + 1] * dk_scale);
      *reinterpret_cast<uint32_t*>(out + D + n * 8) = pack2<T>(dv[n][2 * r], dv[n][2 * r + 1]);
    }
  }
}

template <class T, int D, bool kDropout>
void launch_backward(const BackwardParams<T>& a, int64_t batch) {
  const int64_t items = batch * a.num_heads * a.seq;
  delta_kernel<T, D><<<static_cast<unsigned>((items + 3) / 4), 128>>>(a, items);
  GLMRT_CUDA_CHECK_LAUNCH(flash::delta_kernel);
  const dim3 grid(static_cast<unsigned>((a.seq + kQueries - 1) / kQueries),
                  static_cast<unsigned>(a.num_heads), static_cast<unsigned>(batch));
  dq_kernel<T, D, kDropout><<<grid, kThreads>>>(a);
  GLMRT_CUDA_CHECK_LAUNCH(flash::dq_kernel);
  constexpr size_t shared = dkv_shared_bytes<D>();
  GLMRT_CUDA_CHECK(cudaFuncSetAttribute(dkv_kernel<T, D, kDropout>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared)));
  dkv_kernel<T, D, kDropout><<<grid, kThreads, shared>>>(a);
  GLMRT_CUDA_CHECK_LAUNCH(flash::dkv_kernel);
}

}  // namespace flash

// Runs the tensor-core backward when it applies (as flash_attention_forward); false leaves the
// call to the general kernels. `delta` holds batch * heads * seq floats of scratch.
template <class T>
bool flash_attention_backward(const flash::BackwardParams<T>& a, int64_t batch, int64_t head_dim) {
  if constexpr (!std::is_same_v<T, __half> && !std::is_same_v<T, __nv_bfloat16>) {
    return false;
  } else {
    if (head_dim != 64 && head_dim != 128) return false;
    for (const void* p : {static_cast<const void*>(a.qkv), static_cast<const void*>(a.dcontext),
                          static_cast<const void*>(a.dqkv)})
      if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
    if (batch > 65535 || a.num_heads > 65535) return false;
    const bool drop = a.dropout.enabled();
    if (head_dim == 64)
      drop ? flash::launch_backward<T, 64, true>(a, batch) : flash::launch_backward<T, 64, false>(a, batch);
    else
      drop ? flash::launch_backward<T, 128, true>(a, batch) : flash::launch_backward<T, 128, false>(a, batch);
    return true;
  }
}

}  // namespace glmrt::cuda
