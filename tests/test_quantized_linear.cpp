// Weight-only quantized linear (kernels/cpu/quantized_linear): y = x · (q · scale)ᵀ + bias with
// INT8 and packed INT4 weights, against a double-precision reference of the dequantized product,
// for the few-rows kernel (n ≤ 32) and the prefill path (n > 32), F32 / BF16 / F16 activations,
// odd sizes and tails, with and without bias (F32 or 16-bit). 16-bit results are exactly the RNE
// of the kernel's fp32 result; results do not depend on the thread count, on n, or on whether the
// AVX2 kernel or the portable loop runs; malformed operands are refused with a clear message.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/quantized_linear.h"
#include "kernels/cpu/small_gemm.h"
#include "kernels/ops.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::random_tensor;

// Quantized weights: the logical values (row-major [m, k]) and the stored I8 tensor.
struct QWeights {
  std::vector<int> values;
  Tensor q;
};

// Random values over the whole range ([-127, 127] or [-7, 7], both ends included), stored as
// bits 8: one byte per value; bits 4: byte c of a row = (value 2c) << 4 | (value 2c + 1) & 15.
QWeights random_weights(int64_t m, int64_t k, int bits, uint32_t seed) {
  const int top = bits == 8 ? 127 : 7;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-top, top);
  QWeights w;
  w.values.resize(static_cast<size_t>(m * k));
  for (int& v : w.values) v = dist(rng);
  if (m * k >= 2) {
    w.values[0] = -top;
    w.values[static_cast<size_t>(m * k - 1)] = top;
  }
  const int64_t kb = bits == 8 ? k : k / 2;
  w.q = Tensor::empty({m, kb}, DType::I8);
  int8_t* p = w.q.data_as<int8_t>();
  for (int64_t j = 0; j < m; ++j)
    for (int64_t c = 0; c < kb; ++c) {
      if (bits == 8) {
        p[j * kb + c] = static_cast<int8_t>(w.values[j * k + c]);
      } else {
        const unsigned hi = static_cast<unsigned>(w.values[j * k + 2 * c]) & 15u;
        const unsigned lo = static_cast<unsigned>(w.values[j * k + 2 * c + 1]) & 15u;
        p[j * kb + c] = static_cast<int8_t>(static_cast<uint8_t>(hi << 4 | lo));
      }
    }
  return w;
}

// F16 row scales of either sign, magnitudes 1e-3 .. 1e-1, row `zero_row` exactly 0.
Tensor random_scales(int64_t m, uint32_t seed, int64_t zero_row) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> mag(-3.0, -1.0);
  Tensor s = Tensor::empty({m}, DType::F16);
  for (int64_t j = 0; j < m; ++j) {
    const double v = std::pow(10.0, mag(rng)) * (rng() & 1 ? -1.0 : 1.0);
    s.data_as<f16>()[j] = float_to_f16(static_cast<float>(v));
  }
  if (zero_row >= 0 && zero_row < m) s.data_as<f16>()[zero_row] = f16{};
  return s;
}

std::vector<double> values(const Tensor& t) {
  const Tensor d = t.to(DType::F64);
  return std::vector<double>(d.data_as<double>(), d.data_as<double>() + d.numel());
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// The 16-bit pattern of element i of a BF16 / F16 tensor as an ordered integer (adjacent
// representable values differ by 1, +0 and -0 both 0).
int ordered_16(const Tensor& t, int64_t i) {
  const uint16_t b = static_cast<const uint16_t*>(t.data())[i];
  return b & 0x8000 ? -static_cast<int>(b & 0x7fff) : static_cast<int>(b);
}

// Checks y against the exact (double) scale_j · Σ_l x[i, l]·q[j, l] + bias_j. F32 y: within
// 1e-5 of scale_j · Σ|x·q| + |bias_j|, or less where the worst-case bound of fp32 arithmetic with
// `terms` rounded additions per sum (plus the horizontal sum, the scale and the bias) is less.
// 16-bit y: within one unit in the last place of the exact value rounded to y's dtype (or within
// that fp32 bound plus one 16-bit ulp, for sums that cancel).
void expect_matches_reference(const Tensor& x, const QWeights& w, const Tensor& scale,
                              const Tensor* bias, const Tensor& y, int64_t terms) {
  const int64_t n = x.rows(), k = x.cols(), m = scale.numel();
  const std::vector<double> xv = values(x), sv = values(scale), yv = values(y);
  const std::vector<double> bv = bias ? values(*bias) : std::vector<double>(m, 0.0);
  const double u = std::ldexp(1.0, -24), steps = static_cast<double>(terms + 5);
  const double gamma = std::min(1e-5, steps * u / (1 - steps * u));
  const DType dt = y.dtype();
  Tensor exact16 = Tensor::empty({1}, dt == DType::F32 ? DType::BF16 : dt);
  int failures = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double sum = 0, magnitude = 0;
      for (int64_t l = 0; l < k; ++l) {
        const double p = xv[i * k + l] * w.values[j * k + l];
        sum += p;
        magnitude += std::abs(p);
      }
      const double exact = sv[j] * sum + bv[j];
      const double bound = gamma * (std::abs(sv[j]) * magnitude + std::abs(bv[j]));
      const double got = yv[i * m + j];
      bool ok;
      if (dt == DType::F32) {
        ok = std::abs(got - exact) <= bound;
      } else {
        const float e = static_cast<float>(exact);
        convert_host(DType::F32, &e, dt, exact16.data(), 1);
        const double ulp = std::abs(exact16.item(0)) * (dt == DType::BF16 ? 1.0 / 128 : 1.0 / 1024);
        ok = std::abs(ordered_16(y, i * m + j) - ordered_16(exact16, 0)) <= 1 ||
             std::abs(got - exact) <= bound + ulp;
      }
      if (!ok && failures++ < 5)
        ADD_FAILURE() << "y[" << i << ", " << j << "] = " << got << ", exact " << exact
                      << ", fp32 bound " << bound;
    }
}

struct Case {
  int bits;
  int64_t n, k, m;
  DType dt;
  int bias;  // 0: none, 1: F32, 2: in x's dtype
};

std::string describe(const Case& c) {
  static const char* const bias_names[] = {"", " F32 bias", " 16-bit bias"};
  return ::testing::PrintToString(c.bits) + "-bit " + std::string(dtype_name(c.dt)) +
         " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) + " m=" + std::to_string(c.m) +
         bias_names[c.bias];
}

// Rounded additions in one output's fp32 sum: the few-rows kernel's lanes take ⌈bytes / 8⌉ steps
// of one (INT8) or two (INT4) fused multiply-adds; BLAS may add all k products in one chain.
int64_t sum_terms(const Case& c) {
  if (c.n > cpu::small_gemm_max_rows) return c.k;
  const int64_t bytes = c.bits == 8 ? c.k : c.k / 2;
  return (bytes + 7) / 8 * (c.bits == 8 ? 1 : 2);
}

void check_case(const Case& c, uint32_t seed, bool allow_vectorized = true) {
  SCOPED_TRACE(describe(c));
  const QWeights w = random_weights(c.m, c.k, c.bits, seed);
  const Tensor scale = random_scales(c.m, seed + 1, c.m / 2);
  const Tensor x = random_tensor({c.n, c.k}, seed + 2, c.dt);
  const DType bias_dt = c.bias == 1 ? DType::F32 : c.dt;
  const Tensor bias = random_tensor({c.m}, seed + 3, bias_dt);
  const Tensor* pb = c.bias ? &bias : nullptr;
  Tensor y = Tensor::empty({c.n, c.m}, c.dt);
  cpu::quantized_linear_forward_impl(x, w.q, scale, c.bits, pb, y, allow_vectorized);
  expect_matches_reference(x, w, scale, pb, y, sum_terms(c));
  if (c.dt != DType::F32) {
    // The same values in F32 (bias too): the 16-bit result is exactly the RNE of the fp32 one.
    const Tensor x32 = x.to(DType::F32), b32 = bias.to(DType::F32);
    Tensor y32 = Tensor::empty({c.n, c.m}, DType::F32);
    cpu::quantized_linear_forward_impl(x32, w.q, scale, c.bits, c.bias ? &b32 : nullptr, y32,
                                       allow_vectorized);
    EXPECT_TRUE(same_bits(y, y32.to(c.dt))) << "not the RNE of the fp32 result";
  }
}

const int64_t kRows[] = {1, 2, 3, 5, 16, 32, 33, 40};
const int64_t kDepths[] = {64, 72, 2050};

// Every n, k and bits for F32 and BF16 x, m alternating 37 / 200 (not multiples of the blocks),
// bias cycling through none, F32 and x's dtype.
void check_all_sizes(DType dt, bool allow_vectorized) {
  uint32_t seed = 100;
  int index = 0;
  for (int bits : {8, 4})
    for (int64_t n : kRows)
      for (int64_t k : kDepths) {
        const int64_t m = index % 2 ? 37 : 200;
        const int bias = dt == DType::F32 ? index / 2 % 2 : index % 3;
        ++index;
        if (!allow_vectorized && n > cpu::small_gemm_max_rows) continue;  // same path either way
        check_case({bits, n, k, m, dt, bias}, seed += 10, allow_vectorized);
      }
}

TEST(QuantizedLinear, MatchesReferenceF32) { check_all_sizes(DType::F32, true); }

TEST(QuantizedLinear, MatchesReferenceBF16) { check_all_sizes(DType::BF16, true); }

// A prompt long enough that the prefill path runs its per-block loops on several threads.
TEST(QuantizedLinear, MatchesReferenceLongPrefill) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(2);
  uint32_t seed = 700;
  for (int bits : {8, 4})
    for (DType dt : {DType::F32, DType::BF16})
      check_case({bits, 130, 64, 600, dt, dt == DType::F32 ? 1 : 2}, seed += 10);
  omp_set_num_threads(saved);
}

TEST(QuantizedLinear, MatchesReferenceF16) {
  uint32_t seed = 900;
  for (int bits : {8, 4})
    for (int64_t n : {int64_t{1}, int64_t{5}, int64_t{40}})
      check_case({bits, n, 2050, 37, DType::F16, static_cast<int>(n % 3)}, seed += 10);
}

TEST(QuantizedLinear, PortableLoopMatchesReference) {
  check_all_sizes(DType::F32, false);
  check_all_sizes(DType::BF16, false);
}

// The portable loop and the vector kernel of the same order give the same bits (8 lanes: the
// AVX2 kernel; 16: the AVX-512 kernel, where the CPU has it and `allow_avx512`).
void expect_portable_same_bits_as_vectorized(bool allow_avx512) {
  uint32_t seed = 2000;
  for (int bits : {8, 4})
    for (DType dt : {DType::F32, DType::BF16})
      for (const auto& [n, k, m] : {std::tuple<int64_t, int64_t, int64_t>{1, 2050, 200},
                                    {3, 72, 37},
                                    {5, 2050, 37},
                                    {16, 64, 200},
                                    {32, 2050, 37},
                                    {2, 30, 11}}) {
        const Case c{bits, n, k, m, dt, 2};
        SCOPED_TRACE(describe(c));
        const QWeights w = random_weights(m, k, bits, seed += 10);
        const Tensor scale = random_scales(m, seed + 1, 3);
        const Tensor x = random_tensor({n, k}, seed + 2, dt);
        const Tensor bias = random_tensor({m}, seed + 3, dt);
        Tensor fast = Tensor::empty({n, m}, dt), portable = Tensor::empty({n, m}, dt);
        cpu::quantized_linear_forward_impl(x, w.q, scale, bits, &bias, fast, true, allow_avx512);
        cpu::quantized_linear_forward_impl(x, w.q, scale, bits, &bias, portable, false, allow_avx512);
        EXPECT_TRUE(same_bits(fast, portable));
      }
}

// The portable loop (other CPUs) and this CPU's vector kernel give the same bits.
TEST(QuantizedLinear, PortableLoopSameBitsAsVectorized) {
  if (!cpu::quantized_linear_vectorized()) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  expect_portable_same_bits_as_vectorized(true);
}

// On a CPU with AVX-512 the AVX2 kernel (the 8-lane order of CPUs without it) still runs right:
// the same bits as the portable loop in its order, and the reference's values.
TEST(QuantizedLinear, Avx2KernelSameBitsAsPortableWhereAvx512Runs) {
  if (!cpu::quantized_linear_avx512()) GTEST_SKIP() << "no AVX-512 on this CPU";
  expect_portable_same_bits_as_vectorized(false);
  const QWeights w = random_weights(37, 2050, 4, 2500);
  const Tensor scale = random_scales(37, 2501, 3);
  const Tensor x = random_tensor({3, 2050}, 2502);
  Tensor y = Tensor::empty({3, 37}, DType::F32);
  cpu::quantized_linear_forward_impl(x, w.q, scale, 4, nullptr, y, true, false);
  expect_matches_reference(x, w, scale, nullptr, y, (2050 / 2 + 7) / 8 * 2);
}

// Bit-identical on 1 and 2 threads; a row's result is the same alone as in a batch (the few-rows
// kernel: n = 1 uses other blocks and tiles than n > 1).
TEST(QuantizedLinear, IndependentOfThreadCountAndBatch) {
  const int saved = omp_get_max_threads();
  uint32_t seed = 3000;
  for (int bits : {8, 4})
    for (const auto& [n, k, m] : {std::tuple<int64_t, int64_t, int64_t>{1, 2050, 200},
                                  {16, 2050, 200},
                                  {7, 1000, 301},
                                  {40, 2050, 200}}) {
      SCOPED_TRACE(::testing::Message() << bits << "-bit n=" << n << " k=" << k << " m=" << m);
      const QWeights w = random_weights(m, k, bits, seed += 10);
      const Tensor scale = random_scales(m, seed + 1, 0);
      const Tensor x = random_tensor({n, k}, seed + 2, DType::BF16);
      const Tensor bias = random_tensor({m}, seed + 3, DType::F32);
      Tensor one = Tensor::empty({n, m}, DType::BF16), two = Tensor::empty({n, m}, DType::BF16);
      omp_set_num_threads(1);
      cpu::quantized_linear_forward(x, w.q, scale, bits, &bias, one);
      omp_set_num_threads(2);
      cpu::quantized_linear_forward(x, w.q, scale, bits, &bias, two);
      EXPECT_TRUE(same_bits(one, two));
      if (n <= cpu::small_gemm_max_rows) {
        Tensor last = Tensor::empty({1, m}, DType::BF16);
        cpu::quantized_linear_forward(x.slice_rows(n - 1, n), w.q, scale, bits, &bias, last);
        EXPECT_TRUE(same_bits(last, one.slice_rows(n - 1, n).clone()));
      }
    }
  omp_set_num_threads(saved);
}

// The op (kernels/ops.h) dispatches CPU tensors of every floating dtype to this kernel, 3-D x too.
TEST(QuantizedLinear, OpDispatchesToTheKernel) {
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const QWeights w = random_weights(33, 72, 4, 4000);
    const Tensor scale = random_scales(33, 4001, -1);
    const Tensor x = random_tensor({2, 3, 72}, 4002, dt), bias = random_tensor({33}, 4003, dt);
    Tensor direct = Tensor::empty({2, 3, 33}, dt), op = Tensor::empty({2, 3, 33}, dt);
    cpu::quantized_linear_forward(x, w.q, scale, 4, &bias, direct);
    quantized_linear_forward(x, w.q, scale, 4, &bias, op);
    EXPECT_TRUE(same_bits(direct, op)) << dtype_name(dt);
    expect_matches_reference(x.view({6, 72}), w, scale, &bias, op.view({6, 33}), 10);
  }
}

// Activations so small that the AVX2 INT4 kernel's scaled copy of x (odd columns · 2^-28) would
// fall below the normal range still give fp32-accurate products (the portable loop takes them).
TEST(QuantizedLinear, TinyActivationsStayExact) {
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(dt));
    const QWeights w = random_weights(37, 72, 4, 7000);
    const Tensor scale = random_scales(37, 7001, -1);
    const Tensor x = random_tensor({3, 72}, 7002, dt, 1e-32);
    Tensor fast = Tensor::empty({3, 37}, dt), portable = Tensor::empty({3, 37}, dt);
    cpu::quantized_linear_forward_impl(x, w.q, scale, 4, nullptr, fast, true);
    cpu::quantized_linear_forward_impl(x, w.q, scale, 4, nullptr, portable, false);
    expect_matches_reference(x, w, scale, nullptr, fast, 10);
    EXPECT_TRUE(same_bits(fast, portable));
  }
}

// A zero row scale gives exactly the bias (or +0); k = 0 gives the bias.
TEST(QuantizedLinear, ZeroScaleAndEmptyInnerDimension) {
  const QWeights w = random_weights(9, 64, 8, 5000);
  const Tensor scale = random_scales(9, 5001, 4);
  const Tensor x = random_tensor({2, 64}, 5002), bias = random_tensor({9}, 5003);
  Tensor y = Tensor::empty({2, 9}, DType::F32);
  quantized_linear_forward(x, w.q, scale, 8, &bias, y);
  EXPECT_EQ(y.item(4), bias.item(4));
  EXPECT_EQ(y.item(9 + 4), bias.item(4));

  const Tensor q0 = Tensor::empty({9, 0}, DType::I8), x0 = Tensor::empty({2, 0}, DType::F32);
  quantized_linear_forward(x0, q0, scale, 8, &bias, y);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 9; ++j) EXPECT_EQ(y.item(i * 9 + j), bias.item(j));
}

// Expects the call to throw a glmrt::Error whose message contains every one of `parts`.
void expect_refused(const Tensor& x, const Tensor& q, const Tensor& scale, int bits,
                    const Tensor* bias, Tensor& y, std::initializer_list<std::string> parts) {
  try {
    quantized_linear_forward(x, q, scale, bits, bias, y);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(what.find(p), std::string::npos) << "message lacks \"" << p << "\": " << what;
  }
}

TEST(QuantizedLinear, RefusesMalformedOperands) {
  const QWeights w8 = random_weights(6, 8, 8, 6000), w4 = random_weights(6, 8, 4, 6001);
  const Tensor scale = random_scales(6, 6002, -1);
  const Tensor x = random_tensor({2, 8}, 6003);
  Tensor y = Tensor::empty({2, 6}, DType::F32);
  expect_refused(x, w8.q, scale, 3, nullptr, y,
                 {"quantized_linear_forward", "bits must be 4 or 8, got 3"});
  // bits 4 with an odd k.
  const Tensor x_odd = random_tensor({2, 7}, 6004), q_odd = Tensor::zeros({6, 3}, DType::I8);
  expect_refused(x_odd, q_odd, scale, 4, nullptr, y, {"even k", "F32[2, 7]"});
  // bits 4 with q [m, k] instead of [m, k / 2], and bits 8 with q [m, k / 2].
  expect_refused(x, w8.q, scale, 4, nullptr, y, {"q I8[6, 8]", "[m, 4]"});
  expect_refused(x, w4.q, scale, 8, nullptr, y, {"q I8[6, 4]", "[m, 8]"});
  // q not I8.
  const Tensor q32 = w8.q.to(DType::F32);
  expect_refused(x, q32, scale, 8, nullptr, y, {"q must be a 2-D I8", "F32[6, 8]"});
  // Scale in the wrong dtype or shape.
  const Tensor scale32 = scale.to(DType::F32), scale5 = random_scales(5, 6005, -1);
  const Tensor scale2d = scale.view({6, 1});
  expect_refused(x, w8.q, scale32, 8, nullptr, y, {"scale must be F16 [6]", "F32[6]"});
  expect_refused(x, w8.q, scale5, 8, nullptr, y, {"scale must be F16 [6]", "F16[5]"});
  expect_refused(x, w8.q, scale2d, 8, nullptr, y, {"scale must be F16 [6]", "F16[6, 1]"});
  // x that does not match q; y of the wrong shape or dtype; F64 x.
  const Tensor x9 = random_tensor({2, 9}, 6006);
  expect_refused(x9, w8.q, scale, 8, nullptr, y, {"does not match x", "F32[2, 9]"});
  Tensor y_rows = Tensor::empty({3, 6}, DType::F32), y16 = Tensor::empty({2, 6}, DType::BF16);
  expect_refused(x, w8.q, scale, 8, nullptr, y_rows, {"y F32[3, 6]", "[2, 6]"});
  expect_refused(x, w8.q, scale, 8, nullptr, y16, {"y BF16[2, 6]", "x's dtype"});
  const Tensor x64 = random_tensor({2, 8}, 6007, DType::F64);
  Tensor y64 = Tensor::empty({2, 6}, DType::F64);
  expect_refused(x64, w8.q, scale, 8, nullptr, y64, {"x must be F32, F16 or BF16", "F64[2, 8]"});
  // Bias of the wrong length or dtype.
  const Tensor bias5 = random_tensor({5}, 6008), bias16 = random_tensor({6}, 6009, DType::F16);
  expect_refused(x, w8.q, scale, 8, &bias5, y, {"bias must be [6]", "F32[5]"});
  expect_refused(x, w8.q, scale, 8, &bias16, y, {"bias must be [6] in F32", "F16[6]"});
}

}  // namespace
}  // namespace glmrt
