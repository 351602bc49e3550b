// Every CPU op against a straightforward loop implementation, in F32 and F64.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "kernels/ops.h"
#include "kernels/cpu/vec_math.h"
#include "model/rope_tables.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::max_rel_diff;
using testing::random_tensor;

class CpuOps : public ::testing::TestWithParam<DType> {
 protected:
  DType dt() const { return GetParam(); }
  double tol() const { return dt() == DType::F64 ? 1e-12 : 2e-6; }
};

TEST_P(CpuOps, GemmAllTransposesWithAlphaBeta) {
  const int64_t m = 7, n = 5, k = 9;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Tensor a = random_tensor(ta ? Shape{k, m} : Shape{m, k}, 1, dt());
      Tensor b = random_tensor(tb ? Shape{n, k} : Shape{k, n}, 2, dt());
      Tensor c = random_tensor({m, n}, 3, dt());
      Tensor ref = Tensor::empty({m, n}, DType::F64);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (int64_t l = 0; l < k; ++l)
            s += a.item(ta ? l * m + i : i * k + l) * b.item(tb ? j * k + l : l * n + j);
          ref.data_as<double>()[i * n + j] = 0.5 * s + 2.0 * c.item(i * n + j);
        }
      gemm(a, ta, b, tb, c, 0.5f, 2.0f);
      EXPECT_LT(max_rel_diff(c, ref), tol()) << "trans_a=" << ta << " trans_b=" << tb;
    }
}

TEST_P(CpuOps, GemmBetaZeroIgnoresNanInOutput) {
  Tensor a = random_tensor({4, 3}, 4, dt()), b = random_tensor({3, 2}, 5, dt());
  Tensor c = Tensor::from_floats(std::vector<float>(8, NAN), {4, 2}, dt());
  gemm(a, false, b, false, c, 1.0f, 0.0f);
  for (int64_t i = 0; i < c.numel(); ++i) EXPECT_FALSE(std::isnan(c.item(i)));
}

// An empty inner dimension (K = 0): c = beta · c, and a [6, 0] tensor still has 6 rows.
TEST_P(CpuOps, GemmEmptyInnerDimensionScalesOutput) {
  Tensor a = Tensor::empty({6, 0}, dt()), b = Tensor::empty({0, 5}, dt());
  EXPECT_EQ(a.rows(), 6);
  EXPECT_EQ(Tensor::empty({2, 3, 0}, dt()).rows(), 6);
  Tensor c = random_tensor({6, 5}, 9, dt());
  Tensor ref = Tensor::empty({6, 5}, DType::F64);
  for (int64_t i = 0; i < 30; ++i) ref.data_as<double>()[i] = 0.5 * c.item(i);
  gemm(a, false, b, false, c, 1.0f, 0.5f);
  EXPECT_LT(max_rel_diff(c, ref), tol());
  gemm(a, false, b, false, c, 1.0f, 0.0f);
  for (int64_t i = 0; i < c.numel(); ++i) EXPECT_EQ(c.item(i), 0.0);
}

TEST_P(CpuOps, LinearWithBias) {
  const int64_t n = 6, k = 8, m = 5;
  Tensor x = random_tensor({2, 3, k}, 6, dt()), w = random_tensor({m, k}, 7, dt());
  Tensor bias = random_tensor({m}, 8, dt()), y = Tensor::empty({2, 3, m}, dt());
  linear_forward(x, w, &bias, y);
  Tensor ref = Tensor::empty({n, m}, DType::F64);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double s = bias.item(j);
      for (int64_t l = 0; l < k; ++l) s += x.item(i * k + l) * w.item(j * k + l);
      ref.data_as<double>()[i * m + j] = s;
    }
  EXPECT_LT(max_rel_diff(y, ref), tol());
}

TEST_P(CpuOps, LayerNormAndStatistics) {
  const int64_t rows = 5, h = 33;
  Tensor x = random_tensor({rows, h}, 9, dt(), 3.0), w = random_tensor({h}, 10, dt());
  Tensor b = random_tensor({h}, 11, dt()), y = Tensor::empty({rows, h}, dt());
  Tensor mean = Tensor::empty({rows}, dt()), rstd = Tensor::empty({rows}, dt());
  const float eps = 1e-5f;
  layernorm_forward(x, w, b, eps, y, &mean, &rstd);
  Tensor ref = Tensor::empty({rows, h}, DType::F64);
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0, var = 0;
    for (int64_t i = 0; i < h; ++i) mu += x.item(r * h + i) / h;
    for (int64_t i = 0; i < h; ++i) var += std::pow(x.item(r * h + i) - mu, 2) / h;
    const double rs = 1 / std::sqrt(var + static_cast<double>(eps));
    EXPECT_NEAR(mean.item(r), mu, 1e-5);
    EXPECT_NEAR(rstd.item(r), rs, 1e-5 * rs);
    for (int64_t i = 0; i < h; ++i)
      ref.data_as<double>()[r * h + i] = (x.item(r * h + i) - mu) * rs * w.item(i) + b.item(i);
  }
  EXPECT_LT(max_rel_diff(y, ref), tol());
}

TEST_P(CpuOps, GegluUsesExactErfGeluOnTheSecondHalf) {
  const int64_t n = 4, f = 6;
  Tensor u = random_tensor({n, 2 * f}, 12, dt(), 2.0), out = Tensor::empty({n, f}, dt());
  geglu_forward(u, out);
  Tensor ref = Tensor::empty({n, f}, DType::F64);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < f; ++i) {
      const double x1 = u.item(r * 2 * f + i), x2 = u.item(r * 2 * f + f + i);
      ref.data_as<double>()[r * f + i] = x1 * 0.5 * x2 * (1 + std::erf(x2 / std::sqrt(2.0)));
    }
  EXPECT_LT(max_rel_diff(out, ref), tol());
}

// The F32 path (8 lanes with a rational erf and a polynomial exp where AVX2 is there, the row's
// tail through the same functions) against the F64 one (std::erf / std::exp), forward and
// backward, over values past erf's clamp at |z/√2| = 4 and a row width of 4 vectors + 5.
TEST(CpuGeglu, Float32MatchesFloat64ForwardAndBackward) {
  const int64_t n = 3, f = 37;
  Tensor u64 = Tensor::empty({n, 2 * f}, DType::F64), g64 = random_tensor({n, f}, 31, DType::F64);
  for (int64_t i = 0; i < u64.numel(); ++i)
    u64.data_as<double>()[i] = -7.0 + 14.0 * static_cast<double>((i * 37) % 101) / 100.0;
  Tensor u32 = u64.to(DType::F32), g32 = g64.to(DType::F32);
  Tensor u = u32.to(DType::F64), g = g32.to(DType::F64);  // the F32 inputs, exactly
  Tensor out32 = Tensor::empty({n, f}, DType::F32), out64 = Tensor::empty({n, f}, DType::F64);
  geglu_forward(u32, out32);
  geglu_forward(u, out64);
  Tensor du32 = Tensor::empty({n, 2 * f}, DType::F32), du64 = Tensor::empty({n, 2 * f}, DType::F64);
  geglu_backward(u32, g32, du32);
  geglu_backward(u, g, du64);
  for (const auto& [a, b, what] : {std::tuple{&out32, &out64, "forward"}, std::tuple{&du32, &du64, "backward"}}) {
    double worst = 0;
    for (int64_t i = 0; i < a->numel(); ++i) {
      const double x = a->item(i), y = b->item(i);
      worst = std::max(worst, std::abs(x - y) / std::max(1.0, std::abs(y)));
    }
    EXPECT_LT(worst, 2e-6) << what;
  }
}

// The softmax pieces of the F32 attention kernels (vec_math.h) against double, lengths around
// the 8-lane width, scores from -90 (exp underflows to 0) to +20 past the shift.
TEST(CpuVecMath, MaxAndShiftedExpSumMatchDouble) {
  for (int64_t n : {1, 7, 8, 9, 37, 300}) {
    std::vector<float> s(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) s[j] = -90.0f + 110.0f * static_cast<float>((j * 53) % 97) / 96.0f;
    const std::vector<float> in = s;
    const float mx = cpu::max_of(s.data(), n);
    EXPECT_EQ(mx, *std::max_element(in.begin(), in.end())) << n;
    const float shift = mx - 3.0f;
    const float sum = cpu::exp_shifted_sum(s.data(), n, shift);
    double ref_sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double e = std::exp(static_cast<double>(in[j] - shift));  // the fp32 difference
      ref_sum += e;
      EXPECT_NEAR(s[j], e, 3e-7 * e + 1e-37) << "n " << n << " j " << j;
    }
    EXPECT_NEAR(sum, ref_sum, 1e-6 * ref_sum) << n;
  }
}

TEST_P(CpuOps, RopeRotatesHalvesOfQueryAndKeyOnly) {
  const int64_t n = 5, heads = 2, d = 8, half = d / 2;
  RopeTables tab = build_rope_tables(d, 64, 10000, false);
  Tensor qkv = random_tensor({n, heads * 3 * d}, 13, dt());
  Tensor orig = qkv.clone();
  Tensor pos = Tensor::from_ints({0, 7, 3, 63, 7}, {n});
  rope_forward(qkv, pos, tab.cos, tab.sin, heads, d);
  Tensor ref = orig.to(DType::F64);
  double* r = ref.data_as<double>();
  for (int64_t t = 0; t < n; ++t) {
    const int32_t p = pos.data_as<int32_t>()[t];
    for (int64_t h = 0; h < heads; ++h)
      for (int which = 0; which < 2; ++which) {
        const int64_t base = t * heads * 3 * d + (3 * h + which) * d;
        for (int64_t i = 0; i < half; ++i) {
          const double theta = p * std::pow(10000.0, -2.0 * i / d);
          const double a = orig.item(base + i), b = orig.item(base + i + half);
          r[base + i] = a * std::cos(theta) - b * std::sin(theta);
          r[base + i + half] = b * std::cos(theta) + a * std::sin(theta);
        }
      }
  }
  EXPECT_LT(max_rel_diff(qkv, ref), dt() == DType::F64 ? 1e-7 : 2e-6);  // fp32 tables
}

// Dense reference: every (query, key) pair checked against the rule, softmax over visible keys.
Tensor attention_reference(const Tensor& qkv, const Tensor& spans, int64_t batch, int64_t heads,
                           int64_t d, Tensor* lse_ref) {
  const int64_t n = qkv.rows(), seq = n / batch, ld = heads * 3 * d;
  Tensor out = Tensor::zeros({n, heads * d}, DType::F64);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < seq; ++i) {
        const int32_t* sp = spans.data_as<int32_t>() + (b * seq + i) * 3;
        std::vector<double> w(seq, 0.0);
        double mx = -INFINITY;
        for (int64_t j = 0; j < seq; ++j) {
          if (!(sp[0] <= j && j < sp[2] && (j < sp[1] || j <= i))) continue;
          double s = 0;
          for (int64_t l = 0; l < d; ++l)
            s += qkv.item((b * seq + i) * ld + 3 * h * d + l) *
                 qkv.item((b * seq + j) * ld + 3 * h * d + d + l);
          w[j] = s / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, w[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < seq; ++j) {
          const bool vis = sp[0] <= j && j < sp[2] && (j < sp[1] || j <= i);
          w[j] = vis ? std::exp(w[j] - mx) : 0.0;
          z += w[j];
        }
        if (lse_ref) lse_ref->data_as<double>()[(b * heads + h) * seq + i] = mx + std::log(z);
        for (int64_t l = 0; l < d; ++l) {
          double acc = 0;
          for (int64_t j = 0; j < seq; ++j)
            acc += w[j] / z * qkv.item((b * seq + j) * ld + 3 * h * d + 2 * d + l);
          out.data_as<double>()[(b * seq + i) * heads * d + h * d + l] = acc;
        }
      }
  return out;
}

Tensor make_spans(const std::vector<std::vector<std::pair<int, int>>>& rows, int64_t seq) {
  std::vector<int32_t> v;
  for (const auto& segs : rows) {
    int start = 0;
    for (auto [len, sep] : segs) {
      for (int t = 0; t < len; ++t) v.insert(v.end(), {start, start + sep, start + len});
      start += len;
    }
    EXPECT_EQ(start, seq);
  }
  return Tensor::from_ints(v, {static_cast<int64_t>(v.size() / 3), 3});
}

TEST_P(CpuOps, AttentionWithSegmentsAndSeps) {
  const int64_t batch = 3, seq = 12, heads = 2, d = 8;
  // Row 0: causal; row 1: prefix of 5 then causal; row 2: three packed segments, including a
  // fully bidirectional one (sep = len).
  Tensor spans = make_spans({{{12, 0}}, {{12, 5}}, {{4, 2}, {3, 3}, {5, 1}}}, seq);
  Tensor qkv = random_tensor({batch * seq, heads * 3 * d}, 14, dt(), 1.5);
  Tensor ctx = Tensor::empty({batch * seq, heads * d}, dt());
  Tensor lse = Tensor::empty({batch * heads * seq}, dt());
  attention_forward(qkv, spans, batch, heads, d, 1.0f, DropoutSpec{}, ctx, &lse);
  Tensor lse_ref = Tensor::empty({batch * heads * seq}, DType::F64);
  Tensor ref = attention_reference(qkv, spans, batch, heads, d, &lse_ref);
  EXPECT_LT(max_rel_diff(ctx, ref), tol());
  EXPECT_LT(max_rel_diff(lse, lse_ref), tol());
}

TEST_P(CpuOps, AttentionSegmentsDoNotSeeEachOther) {
  const int64_t seq = 8, heads = 1, d = 4;
  Tensor spans = make_spans({{{3, 3}, {5, 2}}}, seq);
  Tensor qkv = random_tensor({seq, 3 * d}, 15, dt());
  Tensor ctx1 = Tensor::empty({seq, d}, dt()), ctx2 = Tensor::empty({seq, d}, dt());
  attention_forward(qkv, spans, 1, heads, d, 1.0f, DropoutSpec{}, ctx1, nullptr);
  // Changing the second segment's tokens leaves the first segment's outputs unchanged.
  Tensor qkv2 = qkv.clone();
  Tensor noise = random_tensor({5, 3 * d}, 16, dt());
  qkv2.slice_rows(3, 8).copy_from(noise);
  attention_forward(qkv2, spans, 1, heads, d, 1.0f, DropoutSpec{}, ctx2, nullptr);
  for (int64_t i = 0; i < 3 * d; ++i) EXPECT_EQ(ctx1.item(i), ctx2.item(i));
}

TEST_P(CpuOps, EmbeddingGathersRowsOfItsVocabularyShard) {
  Tensor table = random_tensor({6, 4}, 17, dt());
  Tensor ids = Tensor::from_ints({0, 5, 9, 12, 7}, {5});
  Tensor out = Tensor::empty({5, 4}, dt());
  embedding_forward(ids, table, 5, out);  // shard holds ids [5, 11)
  const int expected_row[] = {-1, 0, 4, -1, 2};
  for (int t = 0; t < 5; ++t)
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(out.item(t * 4 + i), expected_row[t] < 0 ? 0.0 : table.item(expected_row[t] * 4 + i));
}

TEST_P(CpuOps, ScaleAddInPlace) {
  Tensor a = random_tensor({3, 5}, 18, dt()), b = random_tensor({3, 5}, 19, dt());
  Tensor ref = b.to(DType::F64);
  for (int64_t i = 0; i < 15; ++i) ref.data_as<double>()[i] = 2.5 * a.item(i) + b.item(i);
  scale_add(2.5f, a, b, b);
  EXPECT_LT(max_rel_diff(b, ref), tol());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CpuOps, ::testing::Values(DType::F32, DType::F64),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(Half, RoundTripAndRoundingToNearestEven) {
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.1f})
    EXPECT_EQ(round_to_f16(round_to_f16(f)), round_to_f16(f));
  EXPECT_EQ(f16_to_float(float_to_f16(1.0f)), 1.0f);
  EXPECT_EQ(float_to_f16(1.0f + 1.0f / 2048).bits, float_to_f16(1.0f).bits);  // tie to even
  EXPECT_EQ(float_to_f16(1.0f + 3.0f / 2048).bits, float_to_f16(1.0f).bits + 2);
  EXPECT_TRUE(std::isinf(f16_to_float(float_to_f16(70000.0f))));
  EXPECT_EQ(f16_to_float(float_to_f16(5.9604645e-08f)), 5.9604645e-08f);  // smallest subnormal
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);         // tie to even
  EXPECT_EQ(bf16_to_float(float_to_bf16(3.0f)), 3.0f);
}

TEST(RopeTables, Fp16FaithfulTablesHoldFp16ValuesAndDifferFromExact) {
  RopeTables f = build_rope_tables(16, 2048, 10000, true);
  RopeTables e = build_rope_tables(16, 2048, 10000, false);
  double max_diff = 0;
  for (int64_t i = 0; i < f.cos.numel(); ++i) {
    const float c = f.cos.data_as<float>()[i];
    EXPECT_EQ(round_to_f16(c), c);
    max_diff = std::max(max_diff, std::abs(static_cast<double>(c) - e.cos.item(i)));
  }
  EXPECT_GT(max_diff, 0.1);  // fp16 angles drift by up to ~1 rad at long positions
  EXPECT_EQ(f.cos.item(0), 1.0);
}

}  // namespace
}  // namespace glmrt

#include "kernels/cpu/onednn_gemm.h"

namespace glmrt {
namespace {

// 16-bit linear layers at prefill row counts (33..256 rows: weight blocks widened to F32 for the
// sgemm; 257: one F32 copy of the weights) against float64 on the same 16-bit operands, with and
// without bias, an output width of two full 512-row weight blocks and a partial one.
TEST(LowPrecisionLinear, PrefillRowCountsMatchFloat64) {
  const int64_t k = 300, m = 1100;
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t n : {33, 129, 256, 257})
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " rows=" << n << " bias=" << with_bias);
        const Tensor x = random_tensor({n, k}, 60, dt), w = random_tensor({m, k}, 61, dt);
        const Tensor bias = random_tensor({m}, 62, dt);
        const Tensor x64 = x.to(DType::F64), w64 = w.to(DType::F64), b64 = bias.to(DType::F64);
        const double *px = x64.data_as<double>(), *pw = w64.data_as<double>(), *pb = b64.data_as<double>();
        Tensor ref = Tensor::empty({n, m}, DType::F64);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < m; ++j) {
            double acc = with_bias ? pb[j] : 0.0;
            for (int64_t l = 0; l < k; ++l) acc += px[i * k + l] * pw[j * k + l];
            ref.data_as<double>()[i * m + j] = acc;
          }
        Tensor y = Tensor::from_floats(std::vector<float>(n * m, NAN), {n, m}, dt);
        linear_forward(x, w, with_bias ? &bias : nullptr, y);
        EXPECT_LT(max_rel_diff(y, ref), dt == DType::BF16 ? 1e-2 : 2e-3);
      }
}

// The oneDNN bf16 path (its reference kernel here when the CPU has no bf16 units) against the
// fp32 GEMM on the same bf16-rounded operands.
TEST(OneDnnBf16Gemm, MatchesFp32OnRoundedOperands) {
  const std::string impl = cpu::onednn_bf16_matmul_impl();
  if (impl == "unavailable") GTEST_SKIP() << "oneDNN has no bf16 matmul for this CPU (no AVX512/AMX)";
  std::printf("oneDNN bf16 matmul implementation here: %s\n", impl.c_str());
  const int64_t m = 33, n = 17, k = 40;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (DType out : {DType::F32, DType::BF16}) {
        Tensor a = testing::random_tensor(ta ? Shape{k, m} : Shape{m, k}, 40, DType::BF16);
        Tensor b = testing::random_tensor(tb ? Shape{n, k} : Shape{k, n}, 41, DType::BF16);
        Tensor c0 = testing::random_tensor({m, n}, 42, out);
        const float beta = out == DType::F32 ? 1.0f : 0.0f;
        Tensor ref = c0.to(DType::F32);
        cpu::gemm(a.to(DType::F32), ta, b.to(DType::F32), tb, ref, 0.5f, beta);
        Tensor c = c0.clone();
        ASSERT_TRUE(cpu::onednn_bf16_gemm(a, ta, b, tb, c, 0.5f, beta, /*allow_reference=*/true));
        EXPECT_LT(testing::max_rel_diff(c, ref), out == DType::F32 ? 1e-5 : 1e-2)
            << "ta=" << ta << " tb=" << tb << " out=" << dtype_name(out);
      }
}

}  // namespace
}  // namespace glmrt
