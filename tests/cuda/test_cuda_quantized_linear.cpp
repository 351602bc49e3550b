// The CUDA weight-only quantized linear (kernels/cuda/quantized_linear.cu) against the CPU op on
// the same inputs: 8 and 4 bits, both CUDA paths (n <= 8: the weight-streaming kernel; more:
// dequantize + cuBLAS), rows whose bytes allow 16-byte loads (k = 64, 4096) or not (72, 2050),
// partial last chunks, and no / F32 / same-dtype bias. The method (poisoning, seeds, tolerances)
// is tests/cuda/test_cuda_util.h's; the error is measured against max(‖ref‖, typical_norm): the
// typical size of x·wᵀ, as single outputs of random signs can cancel to near zero.
//
// Tolerances: those of test_cuda_util.h. The prefill path of F16 / BF16 rounds each dequantized
// weight to 16 bits before cuBLAS (as GLM-130B's own kernels do), which adds about as much error
// as rounding y: a simulation of these shapes gave up to 6e-4 relative for F16 and 3e-3 for
// BF16, inside 2e-3 and 1e-2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/cuda/test_cuda_util.h"

namespace glmrt::cuda_testing {
namespace {

// Quantized weights: their integer values [m, k] and the op's packed I8 tensor (CPU).
struct Quantized {
  int bits = 8;
  int64_t m = 0, k = 0;
  std::vector<int> values;
  Tensor q;
};

// values [m, k] in the op's layout: 8 bits, one byte each; 4 bits, [m, k / 2] with column 2c in
// the high nibble of byte c and column 2c + 1 in its low nibble (two's complement).
std::vector<int8_t> pack_bytes(int bits, int64_t m, int64_t k, const std::vector<int>& values) {
  const int64_t row_bytes = k * bits / 8;
  std::vector<int8_t> bytes(static_cast<size_t>(m * row_bytes));
  for (int64_t j = 0; j < m; ++j)
    for (int64_t b = 0; b < row_bytes; ++b) {
      uint8_t byte;
      if (bits == 8) {
        byte = static_cast<uint8_t>(values[j * k + b]);
      } else {
        const int hi = values[j * k + 2 * b], lo = values[j * k + 2 * b + 1];
        byte = static_cast<uint8_t>(((hi & 0xF) << 4) | (lo & 0xF));
      }
      bytes[j * row_bytes + b] = static_cast<int8_t>(byte);
    }
  return bytes;
}

Tensor i8_tensor(const std::vector<int8_t>& bytes, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::I8);
  std::copy(bytes.begin(), bytes.end(), t.data_as<int8_t>());
  return t;
}

class CudaQuantizedLinear : public CudaOps {
 protected:
  // Uniform values over the whole range [-qmax, qmax], both ends included.
  Quantized random_quantized(int bits, int64_t m, int64_t k) {
    const int qmax = bits == 8 ? 127 : 7;
    Quantized w;
    w.bits = bits;
    w.m = m;
    w.k = k;
    w.values.resize(static_cast<size_t>(m * k));
    for (int& v : w.values) v = uniform_int(-qmax, qmax);
    if (m * k >= 2) {
      w.values.front() = qmax;
      w.values.back() = -qmax;
    }
    w.q = i8_tensor(pack_bytes(bits, m, k, w.values), {m, k * bits / 8});
    return w;
  }

  // Random F16 scales in [0.001, 0.05] (so that q · scale is a normal F16 number too).
  Tensor random_scale(int64_t m) {
    std::uniform_real_distribution<float> dist(0.001f, 0.05f);
    std::vector<float> s(static_cast<size_t>(m));
    for (float& v : s) v = dist(rng_);
    return Tensor::from_floats(s, {m}, DType::F16);
  }

  // ‖x · wᵀ‖ expected for data of random signs: sqrt(Σ_c (Σ_r x[r,c]²) · (Σ_j w[j,c]²)), with
  // w = q · scale. An fp32 dot product's rounding error scales with this, not with |y|: a single
  // output that happens to cancel to near 0 would otherwise fail 1e-5 now and then (measured:
  // ~4% of single k = 4096 outputs against a sequential fp32 sum).
  static double typical_norm(const Tensor& x32, const Quantized& w, const Tensor& scale) {
    const Tensor s32 = scale.to(DType::F32);
    const float* x = x32.data_as<float>();
    const float* s = s32.data_as<float>();
    const int64_t n = x32.rows(), k = w.k;
    std::vector<double> xx(static_cast<size_t>(k), 0.0), ww(static_cast<size_t>(k), 0.0);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c) xx[c] += double{x[r * k + c]} * x[r * k + c];
    for (int64_t j = 0; j < w.m; ++j)
      for (int64_t c = 0; c < k; ++c) {
        const double v = w.values[j * k + c] * double{s[j]};
        ww[c] += v * v;
      }
    double total = 0;
    for (int64_t c = 0; c < k; ++c) total += xx[c] * ww[c];
    return std::sqrt(total);
  }

  // One shape: no bias, F32 bias and (16-bit data) a bias of the data's dtype, against the CPU op
  // on the same (rounded) values. q_gpu: the weights on the GPU (default: a copy of w.q).
  void check(const Quantized& w, const Tensor& scale, int64_t n, const Tensor& q_gpu = Tensor()) {
    const int64_t m = w.m, k = w.k;
    SCOPED_TRACE(::testing::Message() << "bits=" << w.bits << " n=" << n << " m=" << m
                                      << " k=" << k);
    const Tensor x = random_dt({n, k});
    const Tensor x32 = x.to(DType::F32);
    const Tensor bias = random_dt({m});  // rounded to the dtype, so its F32 copy is the same
    const Tensor bias32 = bias.to(DType::F32);
    const double floor = typical_norm(x32, w, scale);

    const Tensor x_gpu = gpu(x), q = q_gpu.defined() ? q_gpu : gpu(w.q), s_gpu = gpu(scale);
    for (int variant = 0; variant < 3; ++variant) {
      if (variant == 2 && dt() == DType::F32) break;  // the same-dtype bias is the F32 one
      SCOPED_TRACE(variant == 0 ? "no bias" : variant == 1 ? "F32 bias" : "same-dtype bias");
      Tensor ref = Tensor::empty({n, m}, DType::F32);
      cpu::quantized_linear_forward(x32, w.q, scale, w.bits, variant == 0 ? nullptr : &bias32,
                                    ref);
      const Tensor bias_gpu = gpu(variant == 2 ? bias : bias32);
      Tensor out = poisoned({n, m}, dt());
      cuda::quantized_linear_forward(x_gpu, q, s_gpu, w.bits, variant == 0 ? nullptr : &bias_gpu,
                                     out);
      EXPECT_TRUE(close(out, ref, tolerance(dt()), floor));
    }
  }
};

TEST_P(CudaQuantizedLinear, MatchesCpuOverShapesAndBias) {
  for (int bits : {8, 4})
    for (int64_t m : {1, 37, 512})
      for (int64_t k : {64, 72, 2050, 4096}) {
        const Quantized w = random_quantized(bits, m, k);
        const Tensor scale = random_scale(m);
        for (int64_t n : {1, 3, 8, 9, 64}) check(w, scale, n);
      }
}

// Every decoding kernel (n rounded up to 1, 2, 4 or 8 rows) and several chunks of 1024 columns
// with a partial last one, on a row count that leaves the last block's warps partly idle.
TEST_P(CudaQuantizedLinear, MatchesCpuForEveryDecodingRowCount) {
  for (int bits : {8, 4}) {
    const Quantized w = random_quantized(bits, 29, 3104);  // 3104 = 3 · 1024 + 32
    const Tensor scale = random_scale(29);
    for (int64_t n = 1; n <= 8; ++n) check(w, scale, n);
  }
}

// q starting one byte past a 16-byte boundary: the decoding kernel must fall back to byte loads
// although its rows (4096 or 2048 bytes) are whole 16-byte groups.
TEST_P(CudaQuantizedLinear, UnalignedWeightsFallBackToByteLoads) {
  const int64_t m = 37, k = 4096;
  for (int bits : {8, 4}) {
    const Quantized w = random_quantized(bits, m, k);
    const Tensor scale = random_scale(m);
    const int64_t row_bytes = k * bits / 8;
    std::vector<int8_t> shifted = pack_bytes(bits, m, k, w.values);
    shifted.insert(shifted.begin(), int8_t{0});
    const Tensor storage = gpu(i8_tensor(shifted, {m * row_bytes + 1}));
    const Tensor q = storage.slice_rows(1, m * row_bytes + 1).view({m, row_bytes});
    for (int64_t n : {1, 5, 16}) check(w, scale, n, q);
  }
}

// A zero scale zeroes its weight row: y there is the bias, exactly.
TEST_P(CudaQuantizedLinear, ZeroScaleRowGivesTheBias) {
  const int64_t m = 37;
  for (int bits : {8, 4})
    for (int64_t k : {2050, 4096})
      for (int64_t n : {1, 16}) {
        SCOPED_TRACE(::testing::Message() << "bits=" << bits << " k=" << k << " n=" << n);
        const Quantized w = random_quantized(bits, m, k);
        std::vector<float> s(static_cast<size_t>(m));
        for (int64_t j = 0; j < m; ++j) s[j] = (j == 0 || j == 17) ? 0.0f : 0.01f + 0.001f * j;
        const Tensor scale = Tensor::from_floats(s, {m}, DType::F16);
        const Tensor x = random_dt({n, k}), bias = random_dt({m});
        Tensor ref = Tensor::empty({n, m}, DType::F32);
        const Tensor bias32 = bias.to(DType::F32);
        cpu::quantized_linear_forward(x.to(DType::F32), w.q, scale, bits, &bias32, ref);
        const Tensor bias_gpu = gpu(bias);
        Tensor out = poisoned({n, m}, dt());
        cuda::quantized_linear_forward(gpu(x), gpu(w.q), gpu(scale), bits, &bias_gpu, out);
        EXPECT_TRUE(close(out, ref, tolerance(dt()), typical_norm(x.to(DType::F32), w, scale)));
        const Tensor got = host_f32(out);
        for (int64_t r = 0; r < n; ++r)
          for (int64_t j : {0, 17})
            EXPECT_EQ(got.data_as<float>()[r * m + j], bias32.data_as<float>()[j])
                << "row " << r << ", output " << j;
      }
}

// kernels/ops.h dispatches CUDA tensors to the CUDA op; x and y may have more than 2 dims.
TEST_P(CudaQuantizedLinear, GenericOpDispatchesToTheGpu) {
  const int64_t m = 40, k = 96;
  for (int bits : {8, 4})
    for (int64_t batch : {2, 5}) {  // 4 rows: decoding kernel; 10: prefill
      SCOPED_TRACE(::testing::Message() << "bits=" << bits << " rows=" << 2 * batch);
      const Quantized w = random_quantized(bits, m, k);
      const Tensor scale = random_scale(m);
      const Tensor x = random_dt({batch, 2, k});
      Tensor ref = Tensor::empty({batch, 2, m}, DType::F32);
      cpu::quantized_linear_forward(x.to(DType::F32), w.q, scale, bits, nullptr, ref);
      Tensor out = poisoned({batch, 2, m}, dt());
      glmrt::quantized_linear_forward(gpu(x), gpu(w.q), gpu(scale), bits, nullptr, out);
      EXPECT_TRUE(close(out, ref, tolerance(dt()),
                        typical_norm(x.to(DType::F32).view({2 * batch, k}), w, scale)));
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaQuantizedLinear,
                         ::testing::Values(DType::F32, DType::F16, DType::BF16), dtype_param_name);

TEST_F(CudaTest, QuantizedLinearRejectsBadOperands) {
  const int64_t n = 2, m = 8, k = 64;
  const Tensor x = gpu(random({n, k}, DType::F32));
  const Tensor q8 = gpu(Tensor::zeros({m, k}, DType::I8));
  const Tensor q4 = gpu(Tensor::zeros({m, k / 2}, DType::I8));
  const Tensor scale = gpu(random({m}, DType::F16));
  Tensor y = poisoned({n, m}, DType::F32);
  cuda::quantized_linear_forward(x, q8, scale, 8, nullptr, y);  // the valid call
  cuda::quantized_linear_forward(x, q4, scale, 4, nullptr, y);
  cuda::synchronize();

  EXPECT_THROW(cuda::quantized_linear_forward(x, q8, scale, 3, nullptr, y), InternalError);
  EXPECT_THROW(cuda::quantized_linear_forward(x, q8, scale, 4, nullptr, y), InternalError);  // k/2
  EXPECT_THROW(cuda::quantized_linear_forward(x, q4, scale, 8, nullptr, y), InternalError);
  const Tensor q_f32 = gpu(random({m, k}, DType::F32));
  EXPECT_THROW(cuda::quantized_linear_forward(x, q_f32, scale, 8, nullptr, y), InternalError);
  EXPECT_THROW(cuda::quantized_linear_forward(x, q8.view({m * k}), scale, 8, nullptr, y),
               InternalError);  // 1-D q
  EXPECT_THROW(cuda::quantized_linear_forward(x, Tensor::zeros({m, k}, DType::I8), scale, 8,
                                              nullptr, y),
               InternalError);  // q on the CPU
  const Tensor x_odd = gpu(random({n, k - 1}, DType::F32));
  const Tensor q4_odd = gpu(Tensor::zeros({m, (k - 1) / 2}, DType::I8));
  EXPECT_THROW(cuda::quantized_linear_forward(x_odd, q4_odd, scale, 4, nullptr, y),
               InternalError);  // odd k with 4 bits
  const Tensor scale_f32 = gpu(random({m}, DType::F32));
  EXPECT_THROW(cuda::quantized_linear_forward(x, q8, scale_f32, 8, nullptr, y), InternalError);
  const Tensor scale_long = gpu(random({m + 1}, DType::F16));
  EXPECT_THROW(cuda::quantized_linear_forward(x, q8, scale_long, 8, nullptr, y), InternalError);
  Tensor y_wide = poisoned({n, m + 1}, DType::F32);
  EXPECT_THROW(cuda::quantized_linear_forward(x, q8, scale, 8, nullptr, y_wide), InternalError);
  Tensor y_f16 = poisoned({n, m}, DType::F16);
  EXPECT_THROW(cuda::quantized_linear_forward(x, q8, scale, 8, nullptr, y_f16), InternalError);
  const Tensor bias_long = gpu(random({m + 1}, DType::F32));
  EXPECT_THROW(cuda::quantized_linear_forward(x, q8, scale, 8, &bias_long, y), InternalError);
  const Tensor bias_f16 = gpu(random({m}, DType::F16));  // neither x's dtype nor F32
  EXPECT_THROW(cuda::quantized_linear_forward(x, q8, scale, 8, &bias_f16, y), InternalError);
  const Tensor x_f64 = gpu(random({n, k}, DType::F64));
  Tensor y_f64 = gpu(random({n, m}, DType::F64));
  EXPECT_THROW(cuda::quantized_linear_forward(x_f64, q8, scale, 8, nullptr, y_f64), InternalError);
}

}  // namespace
}  // namespace glmrt::cuda_testing
