// GLM masked attention forward on the tensor cores (FlashAttention-2 style), for 16-bit qkv and
// head dims 64 and 128; attention.cu falls back to the exact warp-per-query kernel otherwise.
//
// A block takes 64 queries of one (batch row, head), 16 per warp, and walks 64-key tiles of K and
// V through shared memory, two stages deep: cp.async fetches the next tile while the current one
// is multiplied. Only the tiles that some query of the block sees are visited: the
// union of the queries' visible ranges [start, min(end, max(sep, t + 1))) (attention.cu), so the
// causal part costs about half of the bidirectional one and other segments of a packed row are
// skipped. Inside a tile the per-query range is applied element by element.
//
// S = Q·Kᵀ and O += P·V run on mma.sync m16n8k16 (16-bit operands, fp32 accumulators); the
// softmax is online in registers (running max m, row sum l, rescaled O), as in the simple kernel.
// P is rounded to the 16-bit type for the second product, the usual flash-attention trade.
//
// Numerics, as in attention.cu: BF16 scores are (q·k) / sqrt(d) in fp32; F16 follows the
// GLM-130B reference: q / (sqrt(d)·c) rounded to fp16, the fp32 dot product rounded to fp16, then
// times c (so scores that overflow fp16 there overflow here). Dropout draws the same Philox bits
// for (row, head, query, key) as every other attention kernel, after lse is taken.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/attention_common.cuh"

namespace glmrt::cuda {

namespace flash {

constexpr int kQueries = 64;  // per block, 16 per warp
constexpr int kKeys = 64;     // per tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t u;
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    memcpy(&u, &h, 4);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    memcpy(&u, &h, 4);
  }
  return u;
}

// d += a·b for one m16n8k16 tile (row-major A, column-major B, fp32 accumulators).
template <class T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two 8x8 16-bit matrices from shared memory, transposed: with lane i (< 16) pointing at row i of
// a [16 keys][8 dims] block, r0 / r1 are the m16n8k16 B fragments of keys 0-7 / 8-15.
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t& r0, uint32_t& r1, const void* row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r0), "=r"(r1)
               : "r"(addr));
}

template <class T>
__device__ __forceinline__ uint32_t load2(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// 16 bytes global -> shared without passing through registers; zeros when !valid (`gmem` must
// still be a mapped address).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Dynamic shared memory of the forward kernel: two stages of a K and a V tile.
template <int D>
constexpr size_t forward_shared_bytes() {
  return size_t{2} * 2 * kKeys * (D + 8) * 2;
}

template <class T, int D, bool kDropout>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ qkv, const int32_t* __restrict__ spans, int seq,
                   int num_heads, float q_divisor, float score_coeff, DropoutSpec dropout,
                   int64_t total_heads, T* __restrict__ context, float* __restrict__ lse) {
  static_assert(D % 16 == 0 && D <= 128, "head dim");
  constexpr int KS = D + 8;  // shared row stride in elements: 16-byte rows, no bank conflicts
  constexpr int kTile = kKeys * KS;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  T* const k_tiles = reinterpret_cast<T*>(shared_bytes);  // [2][kTile]
  T* const v_tiles = k_tiles + 2 * kTile;                   // [2][kTile]
  __shared__ int key_range[2];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = lane >> 2, tig = lane & 3;
  const int head = blockIdx.y, b = blockIdx.z;
  const int64_t row_width = static_cast<int64_t>(num_heads) * 3 * D;
  const int64_t first = static_cast<int64_t>(b) * seq;
  const T* base = qkv + first * row_width + static_cast<int64_t>(3) * head * D;  // q of token 0

  // This thread's two query rows (of the warp's 16) and the keys each sees.
  const int row0 = blockIdx.x * kQueries + warp * 16 + group;
  int rows[2] = {row0, row0 + 8}, lo[2], hi[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lo[r] = 0;
    hi[r] = 0;
    if (rows[r] < seq) {
      const int32_t* span = spans + (first + rows[r]) * 3;
      lo[r] = max(span[0], 0);
      hi[r] = min(min(span[2], max(span[1], rows[r] + 1)), seq);
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

  // Q as A fragments, in score form for F16 (q / divisor rounded to fp16).
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = rows[i & 1], col = kk * 16 + tig * 2 + (i >= 2 ? 8 : 0);
      uint32_t v = 0;
      if (row < seq) {
        const T* q = base + row * row_width + col;
        if constexpr (std::is_same_v<T, __half>)
          v = pack2<T>(to_float(q[0]) / q_divisor, to_float(q[1]) / q_divisor);
        else
          v = load2(q);
      }
      qf[kk][i] = v;
    }
  const float score_scale = std::is_same_v<T, __half> ? score_coeff : 1.0f / q_divisor;
  constexpr float kLog2e = 1.4426950408889634f;

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  uint64_t dropout_base[2] = {0, 0};
  if constexpr (kDropout) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      dropout_base[r] = static_cast<uint64_t>(
          ((b + dropout.row_offset) * total_heads + head + dropout.head_offset) * seq * seq +
          static_cast<int64_t>(rows[r]) * seq);
  }

  __syncthreads();
  const int key_lo = key_range[0], key_hi = key_range[1];
  // Starts fetching the tile of keys [k0, k0 + 64) into stage `stage` (zeros past the row).
  const auto fetch = [&](int k0, int stage) {
    constexpr int kChunksPerRow = D / 8;  // 16-byte chunks
    T* kt = k_tiles + stage * kTile;
    T* vt = v_tiles + stage * kTile;
    for (int c = threadIdx.x; c < kKeys * kChunksPerRow; c += kThreads) {
      const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
      const bool inside = k0 + r < seq;
      const T* src = base + static_cast<int64_t>(inside ? k0 + r : 0) * row_width + D + col;
      cp_async16(&kt[r * KS + col], src, inside);
      cp_async16(&vt[r * KS + col], src + D, inside);
    }
    cp_async_commit();
  };
  const int first_tile = key_lo / kKeys * kKeys;
  if (first_tile < key_hi) fetch(first_tile, 0);
  int stage = 0;
  for (int k0 = first_tile; k0 < key_hi; k0 += kKeys, stage ^= 1) {
    // The other stage was last read in the previous iteration, which ended with a barrier.
    if (k0 + kKeys < key_hi) {
      fetch(k0 + kKeys, stage ^ 1);
      cp_async_wait<1>();  // this tile has landed; the next may still be on its way
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // every thread's part of this tile is visible
    const T* k_tile = k_tiles + stage * kTile;
    const T* v_tile = v_tiles + stage * kTile;

    // S = Q·Kᵀ for the warp's 16 queries and the tile's 64 keys.
    float s[kKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      const T* krow = &k_tile[(nt * 8 + group) * KS + tig * 2];
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) mma<T>(s[nt], qf[kk], load2(krow + kk * 16), load2(krow + kk * 16 + 8));
    }

    // Scores, the mask, and the running max of each row (over the 4 lanes that share it).
    float row_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, key = k0 + nt * 8 + tig * 2 + (e & 1);
        float x = s[nt][e];
        if constexpr (std::is_same_v<T, __half>) x = __half2float(__float2half_rn(x));
        x *= score_scale;
        x = key >= lo[r] && key < hi[r] ? x : -INFINITY;
        s[nt][e] = x;
        row_max[r] = fmaxf(row_max[r], x);
      }
    float base_scaled[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffffu, row_max[r], 1));
      row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffffu, row_max[r], 2));
      const float m_new = fmaxf(m[r], row_max[r]);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet: no -inf - -inf
      const float correction = exp2f((m[r] - m_use) * kLog2e);
      l[r] *= correction;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][2 * r] *= correction;
        o[n][2 * r + 1] *= correction;
      }
      m[r] = m_new;
      base_scaled[r] = m_use * kLog2e;
    }

    // P = exp(S - m): l sums every visible key, O only the kept ones (dropout).
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const float p = exp2f(fmaf(s[nt][e], kLog2e, -base_scaled[r]));
        l[r] += p;
        bool keep = true;
        if constexpr (kDropout)
          keep = dropout_keep(dropout, dropout_base[r] + static_cast<uint64_t>(k0 + nt * 8 + tig * 2 + (e & 1)));
        s[nt][e] = keep ? p : 0.0f;
      }

    // O += P·V: the S accumulators are the A fragments of P, 16 keys at a time.
#pragma unroll
    for (int kt = 0; kt < kKeys / 16; ++kt) {
      const uint32_t a[4] = {pack2<T>(s[2 * kt][0], s[2 * kt][1]), pack2<T>(s[2 * kt][2], s[2 * kt][3]),
                             pack2<T>(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                             pack2<T>(s[2 * kt + 1][2], s[2 * kt + 1][3])};
      const T* vrow = &v_tile[(kt * 16 + (lane & 15)) * KS];
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        uint32_t b0, b1;
        ldmatrix_x2_trans(b0, b1, vrow + n * 8);
        mma<T>(o[n], a, b0, b1);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is fetched into again
  }

  // Row sums over the 4 lanes of a row, then O / l and lse = m + log(l).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    if (rows[r] >= seq) continue;
    float inv_l = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;  // no visible key: context 0, lse -inf
    if constexpr (kDropout) inv_l *= 1.0f / (1.0f - dropout.p);
    T* out = context + (first + rows[r]) * (static_cast<int64_t>(num_heads) * D) + head * D + tig * 2;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(out + n * 8) = pack2<T>(o[n][2 * r] * inv_l, o[n][2 * r + 1] * inv_l);
    if (lse && tig == 0)
      lse[(static_cast<int64_t>(b) * num_heads + head) * seq + rows[r]] =
          l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
  }
}

}  // namespace flash

// Runs the tensor-core kernel when it applies (16-bit qkv, head dim 64 or 128, aligned rows,
// grid limits); false leaves the call to the general kernel.
template <class T>
bool flash_attention_forward(const T* qkv, const int32_t* spans, int64_t batch, int64_t seq,
                             int64_t num_heads, int64_t head_dim, float q_divisor,
                             float score_coeff, const DropoutSpec& dropout, int64_t total_heads,
                             T* context, float* lse) {
  if constexpr (!std::is_same_v<T, __half> && !std::is_same_v<T, __nv_bfloat16>) {
    return false;
  } else {
    if (head_dim != 64 && head_dim != 128) return false;
    if (reinterpret_cast<uintptr_t>(qkv) % 16 != 0 || reinterpret_cast<uintptr_t>(context) % 4 != 0)
      return false;
    if (batch > 65535 || num_heads > 65535 || seq > (int64_t{1} << 30)) return false;
    const dim3 grid(static_cast<unsigned>((seq + flash::kQueries - 1) / flash::kQueries),
                    static_cast<unsigned>(num_heads), static_cast<unsigned>(batch));
    const auto launch = [&](auto kernel, size_t shared) {
      GLMRT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(shared)));
      kernel<<<grid, flash::kThreads, shared>>>(qkv, spans, static_cast<int>(seq),
                                                static_cast<int>(num_heads), q_divisor, score_coeff,
                                                dropout, total_heads, context, lse);
      GLMRT_CUDA_CHECK_LAUNCH(flash_attention_forward);
    };
    const bool drop = dropout.enabled();
    constexpr size_t s64 = flash::forward_shared_bytes<64>(), s128 = flash::forward_shared_bytes<128>();
    if (head_dim == 64)
      drop ? launch(flash::forward_kernel<T, 64, true>, s64) : launch(flash::forward_kernel<T, 64, false>, s64);
    else
      drop ? launch(flash::forward_kernel<T, 128, true>, s128)
           : launch(flash::forward_kernel<T, 128, false>, s128);
    return true;
  }
}

}  // namespace glmrt::cuda
