// Weight-only quantized linear (INT8 / INT4, GLM130B.md §6):
//   y[n, m] = x[n, k] · (q[m, k] · scale[m])ᵀ + bias[m]
// q is I8: [m, k] for 8 bits; [m, k / 2] for 4 bits, byte c holding column 2c in its high
// nibble and column 2c + 1 in its low nibble (two's complement). scale is F16 [m].
//
// Two paths:
//  * n <= 8 (decoding): quantized_decode_kernel streams the weights once. Each warp owns one
//    output row j; its lanes load 16 bytes of q row j at a time (one uint4: 16 int8 or 32 int4
//    columns, 512 bytes per warp), widen them to fp32 in registers and multiply them with x, which
//    the block stages in shared memory as fp32, 1024 columns at a time. The products are summed in
//    fp32 per lane, then across the warp; the sum is multiplied by scale[j], the bias added, and
//    the result rounded to y's dtype once. At batch 1 this is bound by the HBM bandwidth.
//    When the rows do not all start on 16-byte boundaries (q's address, or k · bits / 8 not a
//    multiple of 16), the lanes read the same 16-byte groups byte by byte instead (same sums).
//  * n > 8 (prefill): the weights are dequantized into a temporary [m, k] matrix of x's dtype
//    (w = q · scale, exact in fp32, then rounded to x's dtype), and linear_forward (cuBLAS, fp32
//    accumulation) does the product. For F16 / BF16 data this rounds every weight to 16 bits
//    before the product (as the released GLM-130B kernels do: they dequantize to half, then run a
//    half GEMM), where the decoding path multiplies the exact fp32 weights; the two paths
//    therefore differ by that rounding (at most 2^-8 relative per weight in BF16, 2^-11 in F16).
//    For F32 data both are exact. The temporary holds one weight matrix in x's dtype (m · k
//    elements).
// y must not overlap x, q, scale or bias (blocks write y while others still read the inputs).
#include <cstdint>

#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

namespace {

constexpr int64_t kDecodeMaxRows = 8;  // n up to this: the weight-streaming kernel
constexpr int kDecodeWarps = 8;        // warps per block = output rows per block
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kChunkCols = 1024;  // x columns staged in shared memory at a time
constexpr int kLoadBytes = 16;    // q bytes per lane per step (one uint4)
// Shared memory holds x in groups of the columns one lane reads per step (16 int8 or 32 int4
// columns), each group followed by kPad unused floats: a lane reads its group with float4 loads
// at a stride of 20 (or 36) floats from its neighbour's, which spreads 8 consecutive lanes (one
// shared-memory phase of a 16-byte load) over all 32 banks. Unpadded strides of 16 or 32 floats
// would put those lanes on the same few banks (4- to 8-way conflicts).
constexpr int kPad = 4;
constexpr int kChunkStride = kChunkCols + kChunkCols / 16 * kPad;  // floats per x row (1280)

// Columns per 16-byte lane group: 16 (int8) or 32 (int4).
constexpr int group_cols(int bits) { return kLoadBytes * 8 / bits; }

// The two's-complement value of the `bits`-bit field of `word` that starts at bit `lsb`.
__device__ __forceinline__ int32_t signed_field(uint32_t word, int lsb, int bits) {
  return static_cast<int32_t>(word << (32 - bits - lsb)) >> (32 - bits);
}

// The 16 bytes row[byte0, byte0 + 16) as a uint4 (byte i of the range is byte i % 4 of word
// i / 4, little-endian); bytes at or past row_bytes read as 0. With `vector_loads`, the caller
// guarantees that row + byte0 is 16-byte aligned and that the whole range lies in the row.
__device__ __forceinline__ uint4 load16(const uint8_t* __restrict__ row, int64_t byte0,
                                        int64_t row_bytes, bool vector_loads) {
  if (vector_loads) return __ldg(reinterpret_cast<const uint4*>(row + byte0));
  uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
  for (int b = 0; b < kLoadBytes; ++b)
    if (byte0 + b < row_bytes) w[b / 4] |= uint32_t{__ldg(row + byte0 + b)} << (8 * (b % 4));
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// acc[r] += Σ_c q[c] · xg[r * kChunkStride + c] over the lane's group of columns c, whose q
// values are packed in v. xg points to the group's first column in x row 0 of shared memory.
// 8 bits: byte b of word i is column 4i + b.
// 4 bits: byte b of word i is group byte 4i + b, i.e. columns 8i + 2b (high nibble) and
// 8i + 2b + 1 (low nibble).
template <int BITS, int N>
__device__ __forceinline__ void accumulate_group(const uint4& v, const float* xg, float (&acc)[N]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (BITS == 8) {
      float w[4];
#pragma unroll
      for (int b = 0; b < 4; ++b) w[b] = static_cast<float>(signed_field(words[i], 8 * b, 8));
#pragma unroll
      for (int r = 0; r < N; ++r) {
        const float4 a = *reinterpret_cast<const float4*>(xg + r * kChunkStride + 4 * i);
        acc[r] = fmaf(w[0], a.x, acc[r]);
        acc[r] = fmaf(w[1], a.y, acc[r]);
        acc[r] = fmaf(w[2], a.z, acc[r]);
        acc[r] = fmaf(w[3], a.w, acc[r]);
      }
    } else {
      float w[8];
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        w[2 * b] = static_cast<float>(signed_field(words[i], 8 * b + 4, 4));  // column 8i + 2b
        w[2 * b + 1] = static_cast<float>(signed_field(words[i], 8 * b, 4));  // column 8i + 2b + 1
      }
#pragma unroll
      for (int r = 0; r < N; ++r) {
        const float4 a = *reinterpret_cast<const float4*>(xg + r * kChunkStride + 8 * i);
        const float4 b = *reinterpret_cast<const float4*>(xg + r * kChunkStride + 8 * i + 4);
        acc[r] = fmaf(w[0], a.x, acc[r]);
        acc[r] = fmaf(w[1], a.y, acc[r]);
        acc[r] = fmaf(w[2], a.z, acc[r]);
        acc[r] = fmaf(w[3], a.w, acc[r]);
        acc[r] = fmaf(w[4], b.x, acc[r]);
        acc[r] = fmaf(w[5], b.y, acc[r]);
        acc[r] = fmaf(w[6], b.z, acc[r]);
        acc[r] = fmaf(w[7], b.w, acc[r]);
      }
    }
  }
}

// The q groups of one lane for the chunk starting at column c0: v[s] holds the 16 bytes at
// lane * 16 + s * 512 of the chunk's bytes (columns c0 + s * kStepCols + lane * kGroup onwards),
// zeros past the row's end (or for an inactive warp, whose row is past m).
template <int BITS, int kSteps>
__device__ __forceinline__ void load_chunk(uint4 (&v)[kSteps], const uint8_t* __restrict__ q_row,
                                           int64_t c0, int64_t row_bytes, bool active,
                                           bool vector_loads) {
  constexpr int kGroup = group_cols(BITS), kStepCols = 32 * kGroup;
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int64_t byte0 = (c0 + s * kStepCols + lane * kGroup) * BITS / 8;
    v[s] = active && byte0 < row_bytes ? load16(q_row, byte0, row_bytes, vector_loads)
                                       : make_uint4(0u, 0u, 0u, 0u);
  }
}

// The decoding path. Block: kDecodeWarps warps, warp w owning output row
// j = blockIdx.x * kDecodeWarps + w for all n (<= N) rows of x. N (1, 2, 4 or 8) is n rounded
// up; rows r >= n of the shared x are zeros and their sums are not stored.
// Per chunk of kChunkCols columns: the block stages x[:, chunk] as fp32 (zeros past column k),
// then each lane multiplies its groups of q row j (see load_chunk) with it. The q loads of the
// next chunk are issued before the current one is staged and multiplied, so that the HBM latency
// overlaps that work (two chunks of q in flight per warp: 2 KiB for int8, 1 KiB for int4).
// bias: null, F32 (bias_f32) or T.
template <int BITS, int N, class T>
__global__ void __launch_bounds__(kDecodeThreads)
    quantized_decode_kernel(const T* __restrict__ x, const uint8_t* __restrict__ q,
                            const __half* __restrict__ scale, const void* __restrict__ bias,
                            bool bias_f32, T* __restrict__ y, int n, int64_t m, int64_t k,
                            bool vector_loads) {
  constexpr int kGroup = group_cols(BITS);
  constexpr int kStepCols = 32 * kGroup;  // columns a warp covers per step: 512 or 1024
  constexpr int kSteps = kChunkCols / kStepCols;
  static_assert(kChunkCols % kStepCols == 0, "a chunk is a whole number of warp steps");
  static_assert(kChunkCols / kGroup * (kGroup + kPad) <= kChunkStride, "padded chunk fits");
  __shared__ __align__(16) float xs[N][kChunkStride];

  const int lane = threadIdx.x & 31;
  const int64_t j = blockIdx.x * int64_t{kDecodeWarps} + (threadIdx.x >> 5);
  const bool active = j < m;               // the whole warp agrees
  const int64_t row_bytes = k * BITS / 8;  // k is even for 4 bits
  const uint8_t* q_row = q + (active ? j : 0) * row_bytes;

  float acc[N];
#pragma unroll
  for (int r = 0; r < N; ++r) acc[r] = 0.0f;

  uint4 v[kSteps];
  load_chunk<BITS>(v, q_row, 0, row_bytes, active, vector_loads);
  for (int64_t c0 = 0; c0 < k; c0 += kChunkCols) {
    uint4 next[kSteps];  // zeros after the last chunk
    load_chunk<BITS>(next, q_row, c0 + kChunkCols, row_bytes, active, vector_loads);
    __syncthreads();  // every warp is done with the previous chunk
    for (int i = threadIdx.x; i < N * kChunkCols; i += kDecodeThreads) {
      const int r = i / kChunkCols, c = i % kChunkCols;
      const int64_t col = c0 + c;
      xs[r][c + c / kGroup * kPad] = (r < n && col < k) ? to_float(x[r * k + col]) : 0.0f;
    }
    __syncthreads();
    if (active) {
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        const int c = s * kStepCols + lane * kGroup;  // the group's first column in the chunk
        accumulate_group<BITS, N>(v[s], &xs[0][c + c / kGroup * kPad], acc);
      }
    }
#pragma unroll
    for (int s = 0; s < kSteps; ++s) v[s] = next[s];
  }
  if (!active) return;  // after the last barrier

  const float s = __half2float(scale[j]);
  const float b = bias == nullptr ? 0.0f
                  : bias_f32      ? static_cast<const float*>(bias)[j]
                                  : to_float(static_cast<const T*>(bias)[j]);
#pragma unroll
  for (int r = 0; r < N; ++r) {
    const float sum = warp_sum(acc[r]);  // every lane of the warp takes part
    if (lane == 0 && r < n) y[r * m + j] = from_float<T>(sum * s + b);
  }
}

// w[j, c] = q[j, c] · scale[j], rounded to T. One block per row (grid-stride over rows), its
// threads over the row's bytes.
template <int BITS, class T>
__global__ void dequantize_kernel(const uint8_t* __restrict__ q, const __half* __restrict__ scale,
                                  T* __restrict__ w, int64_t m, int64_t k) {
  const int64_t row_bytes = k * BITS / 8;
  for (int64_t j = blockIdx.x; j < m; j += gridDim.x) {
    const float s = __half2float(scale[j]);
    const uint8_t* q_row = q + j * row_bytes;
    T* w_row = w + j * k;
    for (int64_t i = threadIdx.x; i < row_bytes; i += blockDim.x) {
      const uint32_t byte = q_row[i];
      if constexpr (BITS == 8) {
        w_row[i] = from_float<T>(static_cast<float>(signed_field(byte, 0, 8)) * s);
      } else {
        w_row[2 * i] = from_float<T>(static_cast<float>(signed_field(byte, 4, 4)) * s);
        w_row[2 * i + 1] = from_float<T>(static_cast<float>(signed_field(byte, 0, 4)) * s);
      }
    }
  }
}

// y[r, :] = bias for every row r of y [rows, cols].
__global__ void fill_rows_kernel(const float* __restrict__ bias, float* __restrict__ y,
                                 int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = bias[i % cols];
}

template <int BITS, int N, class T>
void launch_decode(const Tensor& x, const Tensor& q, const Tensor& scale, const Tensor* bias,
                   Tensor& y, int64_t n, int64_t m, int64_t k) {
  const int64_t row_bytes = k * BITS / 8;
  const bool vector_loads =
      reinterpret_cast<uintptr_t>(q.data()) % kLoadBytes == 0 && row_bytes % kLoadBytes == 0;
  const int64_t blocks = (m + kDecodeWarps - 1) / kDecodeWarps;
  GLMRT_CHECK(blocks <= INT32_MAX, "cuda quantized_linear_forward: too many output rows: ",
              q.str());
  quantized_decode_kernel<BITS, N, T><<<static_cast<unsigned>(blocks), kDecodeThreads>>>(
      static_cast<const T*>(x.data()), static_cast<const uint8_t*>(q.data()),
      static_cast<const __half*>(scale.data()), bias ? bias->data() : nullptr,
      bias && bias->dtype() == DType::F32, static_cast<T*>(y.data()), static_cast<int>(n), m, k,
      vector_loads);
  GLMRT_CUDA_CHECK_LAUNCH(quantized_decode_kernel);
}

template <int BITS, class T>
void decode(const Tensor& x, const Tensor& q, const Tensor& scale, const Tensor* bias, Tensor& y,
            int64_t n, int64_t m, int64_t k) {
  if (n <= 1)
    launch_decode<BITS, 1, T>(x, q, scale, bias, y, n, m, k);
  else if (n <= 2)
    launch_decode<BITS, 2, T>(x, q, scale, bias, y, n, m, k);
  else if (n <= 4)
    launch_decode<BITS, 4, T>(x, q, scale, bias, y, n, m, k);
  else
    launch_decode<BITS, 8, T>(x, q, scale, bias, y, n, m, k);
}

}  // namespace

void quantized_linear_forward(const Tensor& x, const Tensor& q, const Tensor& scale, int bits,
                              const Tensor* bias, Tensor& y) {
  check_cuda_tensor(x, "cuda quantized_linear_forward x");
  const Device device = x.device();
  const DType dtype = x.dtype();
  GLMRT_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16,
              "cuda quantized_linear_forward: x must be F32, F16 or BF16, got ", x.str());
  GLMRT_CHECK(bits == 4 || bits == 8, "cuda quantized_linear_forward: bits must be 4 or 8, got ",
              bits);
  check_operand(q, device, DType::I8, "cuda quantized_linear_forward q");
  GLMRT_CHECK(q.ndim() == 2, "cuda quantized_linear_forward: q must be 2-D [m, k",
              (bits == 4 ? " / 2" : ""), "], got ", q.str());
  const int64_t n = x.rows(), k = x.cols(), m = q.dim(0);
  GLMRT_CHECK(bits == 8 || k % 2 == 0, "cuda quantized_linear_forward: 4-bit weights need an even ",
              "input width, got x ", x.str());
  GLMRT_CHECK(q.dim(1) == k * bits / 8, "cuda quantized_linear_forward: q ", q.str(),
              " does not match x ", x.str(), " (", bits, "-bit weights need ", k * bits / 8,
              " bytes per row)");
  check_operand(scale, device, DType::F16, "cuda quantized_linear_forward scale");
  check_shape(scale, {m}, "cuda quantized_linear_forward scale");
  check_operand(y, device, dtype, "cuda quantized_linear_forward output");
  GLMRT_CHECK(y.rows() == n && y.cols() == m, "cuda quantized_linear_forward: output ", y.str(),
              " is not [", n, ", ", m, "]");
  const Tensor* b = bias && bias->defined() ? bias : nullptr;
  if (b) {
    check_cuda_tensor(*b, "cuda quantized_linear_forward bias");
    GLMRT_CHECK(b->device() == device, "cuda quantized_linear_forward bias: ", b->str(),
                " is not on ", device.str());
    GLMRT_CHECK(b->dtype() == dtype || b->dtype() == DType::F32,
                "cuda quantized_linear_forward bias: expected ", dtype_name(dtype),
                " or F32, got ", b->str());
    check_shape(*b, {m}, "cuda quantized_linear_forward bias");
  }
  if (n == 0 || m == 0) return;

  DeviceGuard guard(device);
  if (n <= kDecodeMaxRows) {
    dispatch_float(dtype, "quantized_linear_forward", [&](auto zero) {
      using T = decltype(zero);
      if (bits == 8)
        decode<8, T>(x, q, scale, b, y, n, m, k);
      else
        decode<4, T>(x, q, scale, b, y, n, m, k);
    });
    return;
  }

  // Prefill: dequantize to x's dtype (see the top of the file), then cuBLAS.
  Tensor w = Tensor::empty({m, k}, dtype, device);
  if (k > 0) {
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(m, int64_t{1} << 20));
    dispatch_float(dtype, "quantized_linear_forward", [&](auto zero) {
      using T = decltype(zero);
      const auto* qp = static_cast<const uint8_t*>(q.data());
      const auto* sp = static_cast<const __half*>(scale.data());
      if (bits == 8) {
        dequantize_kernel<8, T><<<blocks, kThreads>>>(qp, sp, static_cast<T*>(w.data()), m, k);
        GLMRT_CUDA_CHECK_LAUNCH(dequantize_kernel<8, T>);
      } else {
        dequantize_kernel<4, T><<<blocks, kThreads>>>(qp, sp, static_cast<T*>(w.data()), m, k);
        GLMRT_CUDA_CHECK_LAUNCH(dequantize_kernel<4, T>);
      }
    });
  }
  if (b && b->dtype() != dtype) {
    // F32 bias with 16-bit data: the GEMM accumulates into an F32 buffer that starts as the bias
    // (beta = 1), so y = x·wᵀ + bias is rounded to 16 bits once, by the conversion.
    Tensor sum = Tensor::empty({n, m}, DType::F32, device);
    fill_rows_kernel<<<grid_for(n * m), kThreads>>>(static_cast<const float*>(b->data()),
                                                    static_cast<float*>(sum.data()), n, m);
    GLMRT_CUDA_CHECK_LAUNCH(fill_rows_kernel);
    gemm(x, false, w, true, sum, 1.0f, 1.0f);
    convert(sum, y);
  } else {
    linear_forward(x, w, b, y);
  }
}

}  // namespace glmrt::cuda
