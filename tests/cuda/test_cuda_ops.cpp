// Every CUDA forward op (and the runtime) against the CPU op on fresh random inputs; the
// method (tolerances, poisoning, seeds) is described in tests/cuda/test_cuda_util.h.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "model/rope_tables.h"
#include "tests/cuda/test_cuda_util.h"

namespace glmrt::cuda_testing {
namespace {

// ---- Runtime --------------------------------------------------------------------------------

using CudaRuntime = CudaTest;

TEST_F(CudaRuntime, CopiesRoundTripThroughTheDevice) {
  const Tensor host = random({1000}, DType::F32);
  void* a = cuda::device_malloc(host.nbytes(), 0);
  void* b = cuda::device_malloc(host.nbytes(), 0);
  std::vector<float> back(1000, NAN);
  cuda::copy_bytes(a, kGpu, host.data(), Device::cpu(), host.nbytes());
  cuda::copy_bytes(b, kGpu, a, kGpu, host.nbytes());
  cuda::copy_bytes(back.data(), Device::cpu(), b, kGpu, host.nbytes());
  EXPECT_EQ(std::memcmp(back.data(), host.data(), host.nbytes()), 0);
  cuda::device_free(a);
  cuda::device_free(b);
}

TEST_F(CudaRuntime, ZeroBytesClearsDeviceMemory) {
  Tensor t = gpu(random({513}, DType::BF16));
  t.zero_();
  const Tensor back = host_f32(t);
  for (int64_t i = 0; i < back.numel(); ++i) ASSERT_EQ(back.data_as<float>()[i], 0.0f) << i;
}

TEST_F(CudaRuntime, OversizedAllocationThrowsAndLeavesTheDeviceUsable) {
  EXPECT_THROW(cuda::device_malloc(size_t{1} << 52, 0), Error);  // 4 PiB
  const Tensor host = random({64}, DType::F32);
  EXPECT_TRUE(close(gpu(host), host, 0.0));
  cuda::synchronize();
}

// ---- GEMM and linear ------------------------------------------------------------------------

TEST_P(CudaOps, GemmAllTransposesWithAlphaBeta) {
  const int64_t m = 37, n = 53, k = 61;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "trans_a=" << ta << " trans_b=" << tb);
      const Tensor a = random_dt(ta ? Shape{k, m} : Shape{m, k});
      const Tensor b = random_dt(tb ? Shape{n, k} : Shape{k, n});
      const Tensor c = random_dt({m, n});
      Tensor ref = c.to(DType::F32);
      cpu::gemm(a.to(DType::F32), ta, b.to(DType::F32), tb, ref, 0.7f, 0.3f);
      Tensor out = gpu(c);
      cuda::gemm(gpu(a), ta, gpu(b), tb, out, 0.7f, 0.3f);
      EXPECT_TRUE(close(out, ref, tolerance(dt())));
    }
}

TEST_P(CudaOps, GemmBetaZeroIgnoresNanInOutput) {
  const Tensor a = random_dt({3, 17, 40}), b = random_dt({40, 29});  // a viewed as [51, 40]
  Tensor ref = Tensor::empty({51, 29}, DType::F32);
  cpu::gemm(a.to(DType::F32), false, b.to(DType::F32), false, ref, 1.5f, 0.0f);
  Tensor out = poisoned({51, 29}, dt());
  cuda::gemm(gpu(a), false, gpu(b), false, out, 1.5f, 0.0f);
  EXPECT_TRUE(close(out, ref, tolerance(dt())));
}

TEST_P(CudaOps, GemmEmptyInnerDimensionScalesOutput) {
  const Tensor a = random_dt({6, 0}), b = random_dt({0, 5}), c = random_dt({6, 5});
  Tensor ref = c.to(DType::F32);
  cpu::gemm(a.to(DType::F32), false, b.to(DType::F32), false, ref, 1.0f, 0.5f);
  Tensor out = gpu(c);
  cuda::gemm(gpu(a), false, gpu(b), false, out, 1.0f, 0.5f);
  EXPECT_TRUE(close(out, ref, tolerance(dt())));
  Tensor zeroed = poisoned({6, 5}, dt());  // beta = 0 writes zeros over NaN
  cuda::gemm(gpu(a), false, gpu(b), false, zeroed, 1.0f, 0.0f);
  EXPECT_TRUE(close(zeroed, Tensor::zeros({6, 5}, DType::F32), 0.0));
}

// With K = 4096, TF32 (10-bit mantissa) would give ~1e-3 relative error; fp32 gives ~1e-6.
TEST_F(CudaTest, GemmF32DoesNotUseTf32) {
  const Tensor a = random({64, 4096}, DType::F32), b = random({4096, 48}, DType::F32);
  Tensor ref = Tensor::empty({64, 48}, DType::F32);
  cpu::gemm(a, false, b, false, ref, 1.0f, 0.0f);
  Tensor out = poisoned({64, 48}, DType::F32);
  cuda::gemm(gpu(a), false, gpu(b), false, out, 1.0f, 0.0f);
  EXPECT_TRUE(close(out, ref, 1e-5));
}

TEST_P(CudaOps, LinearWithAndWithoutBias) {
  const Tensor x = random_dt({2, 9, 96}), w = random_dt({70, 96}), bias = random_dt({70}, 1.0);
  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "with bias" : "without bias");
    const Tensor bias32 = bias.to(DType::F32);
    Tensor ref = Tensor::empty({2, 9, 70}, DType::F32);
    cpu::linear_forward(x.to(DType::F32), w.to(DType::F32), with_bias ? &bias32 : nullptr, ref);
    const Tensor bias_gpu = gpu(bias);
    Tensor out = poisoned({2, 9, 70}, dt());
    cuda::linear_forward(gpu(x), gpu(w), with_bias ? &bias_gpu : nullptr, out);
    EXPECT_TRUE(close(out, ref, tolerance(dt())));
  }
}

// ---- LayerNorm, GeGLU, scale_add, embedding, convert ----------------------------------------

TEST_P(CudaOps, LayerNormMatchesCpuWithStatistics) {
  for (int64_t cols : {40, 300, 1536}) {  // one, several and many elements per thread
    SCOPED_TRACE(::testing::Message() << "cols=" << cols);
    const int64_t rows = 13;
    // A large mean relative to the spread: naive E[x²] - E[x]² statistics would fail.
    const Tensor x = random_dt({rows, cols}, 3.0, 0.5);
    const Tensor w = random_dt({cols}, 1.0, 0.3), b = random_dt({cols});
    Tensor ref = Tensor::empty({rows, cols}, DType::F32);
    Tensor ref_mean = Tensor::empty({rows}, DType::F32),
           ref_rstd = Tensor::empty({rows}, DType::F32);
    cpu::layernorm_forward(x.to(DType::F32), w.to(DType::F32), b.to(DType::F32), 1e-5f, ref,
                           &ref_mean, &ref_rstd);
    Tensor out = poisoned({rows, cols}, dt());
    Tensor mean = poisoned({rows}, DType::F32), rstd = poisoned({rows}, DType::F32);
    cuda::layernorm_forward(gpu(x), gpu(w), gpu(b), 1e-5f, out, &mean, &rstd);
    EXPECT_TRUE(close(out, ref, tolerance(dt())));
    EXPECT_TRUE(close(mean, ref_mean, 1e-5));  // statistics are fp32 whatever the storage
    EXPECT_TRUE(close(rstd, ref_rstd, 1e-5));
    Tensor out2 = poisoned({rows, cols}, dt());  // statistics are optional
    cuda::layernorm_forward(gpu(x), gpu(w), gpu(b), 1e-5f, out2, nullptr, nullptr);
    EXPECT_TRUE(close(out2, ref, tolerance(dt())));
  }
}

TEST_P(CudaOps, GegluMatchesCpu) {
  const Tensor u = random_dt({19, 2 * 200}, 0.0, 2.0);
  Tensor ref = Tensor::empty({19, 200}, DType::F32);
  cpu::geglu_forward(u.to(DType::F32), ref);
  Tensor out = poisoned({19, 200}, dt());
  cuda::geglu_forward(gpu(u), out);
  EXPECT_TRUE(close(out, ref, tolerance(dt())));
}

TEST_P(CudaOps, ScaleAddMatchesCpuAndMayAliasItsInput) {
  const float alpha = 11.8322f;  // DeepNorm's sqrt(2 * 70)
  const Tensor a = random_dt({7, 333}), b = random_dt({7, 333}, 0.0, 5.0);
  Tensor ref = Tensor::empty({7, 333}, DType::F32);
  cpu::scale_add(alpha, a.to(DType::F32), b.to(DType::F32), ref);
  Tensor out = poisoned({7, 333}, dt());
  cuda::scale_add(alpha, gpu(a), gpu(b), out);
  EXPECT_TRUE(close(out, ref, tolerance(dt())));
  Tensor in_place = gpu(a);
  cuda::scale_add(alpha, in_place, gpu(b), in_place);
  EXPECT_TRUE(close(in_place, ref, tolerance(dt())));
}

TEST_P(CudaOps, EmbeddingGathersShardRowsAndZerosOthers) {
  const int64_t vocab_start = 100, rows = 50, width = 33;
  const Tensor table = random_dt({rows, width});
  std::vector<int32_t> ids = {99, 100, 149, 150, -1, 0, 1 << 30};  // both edges, and far outside
  for (int i = 0; i < 20; ++i) ids.push_back(uniform_int(90, 160));
  const int64_t n = static_cast<int64_t>(ids.size());
  const Tensor id_tensor = Tensor::from_ints(ids, {n});
  Tensor ref = Tensor::empty({n, width}, DType::F32);
  cpu::embedding_forward(id_tensor, table.to(DType::F32), vocab_start, ref);
  Tensor out = poisoned({n, width}, dt());
  cuda::embedding_forward(gpu(id_tensor), gpu(table), vocab_start, out);
  EXPECT_TRUE(close(out, ref, 0.0));  // a copy: exact
}

// Conversions must be bit-identical to the host's round-to-nearest-even, specials included.
TEST_F(CudaTest, ConvertIsBitExactWithHostConversion) {
  std::vector<float> values = {
      0.0f,  -0.0f, 1.0f,  -2.5f,  65504.0f, 65519.0f,  65520.0f,       7e4f,          -1e6f,
      1e-5f, 6e-8f, 1e-8f, 3e-39f, INFINITY, -INFINITY, 1.00048828125f, 1.0009765625f, 3.4e38f};
  std::normal_distribution<float> dist(0.0f, 100.0f);
  for (int i = 0; i < 4000; ++i) values.push_back(dist(rng_));
  const Shape shape = {static_cast<int64_t>(values.size())};
  const Tensor f32 = Tensor::from_floats(values, shape, DType::F32);
  for (DType from : {DType::F32, DType::F16, DType::BF16})
    for (DType to : {DType::F32, DType::F16, DType::BF16}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(from) << " -> " << dtype_name(to));
      const Tensor src = f32.to(from);
      const Tensor expected = src.to(to);
      Tensor dst = poisoned(shape, to);
      cuda::convert(gpu(src), dst);
      const Tensor got = dst.to(Device::cpu());
      EXPECT_EQ(std::memcmp(got.data(), expected.data(), expected.nbytes()), 0);
    }
}

// ---- RoPE -----------------------------------------------------------------------------------

TEST_P(CudaOps, RopeMatchesCpuAtNonContiguousPositions) {
  const int64_t tokens = 24, heads = 3, max_positions = 64;
  for (int64_t d : {16, 64, 128}) {
    SCOPED_TRACE(::testing::Message() << "head_dim=" << d);
    const RopeTables tables = build_rope_tables(d, max_positions, 10000.0, false);
    std::vector<int32_t> positions;  // shuffled, repeated, gapped
    for (int64_t t = 0; t < tokens; ++t) positions.push_back(uniform_int(0, max_positions - 1));
    positions[0] = 0;
    positions[1] = max_positions - 1;
    const Tensor pos = Tensor::from_ints(positions, {tokens});
    const Tensor qkv = random_dt({tokens, heads * 3 * d});
    Tensor ref = qkv.to(DType::F32);
    cpu::rope_forward(ref, pos, tables.cos, tables.sin, heads, d);
    Tensor out = gpu(qkv);
    cuda::rope_forward(out, gpu(pos), gpu(tables.cos), gpu(tables.sin), heads, d);
    EXPECT_TRUE(close(out, ref, tolerance(dt())));
  }
}

// The CPU op throws for a position outside the table; a kernel cannot, so it poisons q and k.
TEST_F(CudaTest, RopeOutOfTablePositionPoisonsQueryAndKey) {
  const int64_t d = 32, heads = 2;
  const RopeTables tables = build_rope_tables(d, 8, 10000.0, false);
  const Tensor pos = Tensor::from_ints({3, 8}, {2});  // 8 is one past the table
  Tensor qkv = gpu(random({2, heads * 3 * d}, DType::F32));
  cuda::rope_forward(qkv, gpu(pos), gpu(tables.cos), gpu(tables.sin), heads, d);
  const Tensor out = host_f32(qkv);
  const float* row1 = out.data_as<float>() + heads * 3 * d;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < 3 * d; ++i)
      EXPECT_EQ(std::isnan(row1[h * 3 * d + i]), i < 2 * d) << "head " << h << " column " << i;
}

// ---- Attention ------------------------------------------------------------------------------

TEST_P(CudaOps, AttentionMatchesCpuAcrossSegmentsAndSeps) {
  const int64_t batch = 2, seq = 45, heads = 3;
  for (int64_t d : {16, 64, 80, 128, 256}) {
    for (float coeff : {1.0f, 5.0f}) {  // coeff only changes the F16 path's rounding
      SCOPED_TRACE(::testing::Message() << "head_dim=" << d << " coeff=" << coeff);
      const Tensor spans = make_spans(batch, seq, rng_);
      const Tensor qkv = random_dt({batch * seq, heads * 3 * d});
      Tensor ref = Tensor::empty({batch * seq, heads * d}, DType::F32);
      Tensor ref_lse = Tensor::empty({batch, heads, seq}, DType::F32);
      cpu::attention_forward(qkv.to(DType::F32), spans, batch, heads, d, coeff, kNoDropout, ref,
                             &ref_lse);
      Tensor out = poisoned({batch * seq, heads * d}, dt());
      Tensor lse = poisoned({batch, heads, seq}, DType::F32);
      cuda::attention_forward(gpu(qkv), gpu(spans), batch, heads, d, coeff, kNoDropout, out, &lse);
      EXPECT_TRUE(close(out, ref, tolerance(dt())));
      EXPECT_TRUE(close(lse, ref_lse, tolerance(dt())));
      Tensor out2 = poisoned({batch * seq, heads * d}, dt());  // lse is optional
      cuda::attention_forward(gpu(qkv), gpu(spans), batch, heads, d, coeff, kNoDropout, out2,
                              nullptr);
      EXPECT_TRUE(close(out2, ref, tolerance(dt())));
    }
  }
}

// Dropout decisions are Philox draws of the global element index, identical on both devices;
// CPU and GPU must drop exactly the same probabilities.
TEST_P(CudaOps, AttentionDropoutMatchesCpu) {
  const int64_t batch = 2, seq = 33, heads = 3, d = 64;
  DropoutSpec dropout;
  dropout.p = 0.25f;
  dropout.key = rng_();
  dropout.stream = dropout_stream(7, 3, DropoutSite::Attention);
  dropout.row_offset = 4;   // this call's rows start at global row 4 (data parallelism)
  dropout.head_offset = 3;  // and its heads at global head 3 of 8 (tensor parallelism)
  dropout.total_heads = 8;
  const Tensor spans = make_spans(batch, seq, rng_);
  const Tensor qkv = random_dt({batch * seq, heads * 3 * d});
  Tensor ref = Tensor::empty({batch * seq, heads * d}, DType::F32);
  Tensor ref_lse = Tensor::empty({batch, heads, seq}, DType::F32);
  cpu::attention_forward(qkv.to(DType::F32), spans, batch, heads, d, 1.0f, dropout, ref, &ref_lse);
  Tensor out = poisoned({batch * seq, heads * d}, dt());
  Tensor lse = poisoned({batch, heads, seq}, DType::F32);
  cuda::attention_forward(gpu(qkv), gpu(spans), batch, heads, d, 1.0f, dropout, out, &lse);
  EXPECT_TRUE(close(out, ref, tolerance(dt())));
  EXPECT_TRUE(close(lse, ref_lse, tolerance(dt())));  // lse is taken before dropout
  Tensor undropped = Tensor::empty({batch * seq, heads * d}, DType::F32);
  cpu::attention_forward(qkv.to(DType::F32), spans, batch, heads, d, 1.0f, kNoDropout, undropped,
                         nullptr);
  EXPECT_FALSE(close(out, undropped, 0.05)) << "dropout changed nothing";
}

// Rows longer than one 64-key tile of the tensor-core kernel (head dims 64 and 128 in 16-bit),
// with and without dropout (test_cuda_util.h: long_spans).
TEST_P(CudaOps, AttentionLongRowsAcrossKeyTiles) {
  const int64_t batch = kLongSpansBatch, seq = kLongSpansSeq, heads = 2;
  const Tensor spans = long_spans();
  for (int64_t d : {64, 128}) {
    for (bool with_dropout : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "head_dim=" << d << " dropout=" << with_dropout);
      DropoutSpec dropout;
      if (with_dropout) {
        dropout.p = 0.1f;
        dropout.key = rng_();
        dropout.stream = dropout_stream(3, 1, DropoutSite::Attention);
        dropout.row_offset = 2;
      }
      const Tensor qkv = random_dt({batch * seq, heads * 3 * d});
      Tensor ref = Tensor::empty({batch * seq, heads * d}, DType::F32);
      Tensor ref_lse = Tensor::empty({batch, heads, seq}, DType::F32);
      cpu::attention_forward(qkv.to(DType::F32), spans, batch, heads, d, 4.0f, dropout, ref, &ref_lse);
      Tensor out = poisoned({batch * seq, heads * d}, dt());
      Tensor lse = poisoned({batch, heads, seq}, DType::F32);
      cuda::attention_forward(gpu(qkv), gpu(spans), batch, heads, d, 4.0f, dropout, out, &lse);
      EXPECT_TRUE(close(out, ref, tolerance(dt())));
      EXPECT_TRUE(close(lse, ref_lse, tolerance(dt())));
    }
  }
}

TEST_P(CudaOps, DropoutApplyMatchesCpu) {
  DropoutSpec spec;
  spec.p = 0.1f;
  spec.key = rng_();
  spec.stream = dropout_stream(2, 5, DropoutSite::MlpOutput);
  spec.offset = 12345;  // a shard starting mid-tensor
  const Tensor x = random_dt({37, 101});
  Tensor ref = x.to(DType::F32);
  cpu::dropout_apply(ref, spec);
  Tensor out = gpu(x);
  cuda::dropout_apply(out, spec);
  EXPECT_TRUE(close(out, ref, tolerance(dt())));
  const Tensor got = host_f32(out);
  int64_t dropped = 0;
  for (int64_t i = 0; i < got.numel(); ++i) dropped += got.data_as<float>()[i] == 0.0f;
  EXPECT_NEAR(static_cast<double>(dropped) / got.numel(), 0.1, 0.03);
}

// Queries and keys so large that q·k/sqrt(d) (up to ~6e5) overflows fp16, with one key's score
// far above the others: the exact answer is that key's value row.
struct HugeScores {
  Tensor qkv, spans;
  int64_t seq = 8, d = 64;
};
HugeScores huge_scores(std::mt19937& rng) {
  HugeScores h;
  std::uniform_int_distribution<int> sign(0, 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> u(h.d), values(h.seq * 3 * h.d);
  for (float& x : u) x = sign(rng) ? 1.0f : -1.0f;
  for (int64_t t = 0; t < h.seq; ++t) {
    const float a = 1.0f + 0.125f * static_cast<float>((t * 5) % h.seq);  // key scale, max once
    for (int64_t i = 0; i < h.d; ++i) {
      values[t * 3 * h.d + i] = 200.0f * u[i];            // q
      values[t * 3 * h.d + h.d + i] = 200.0f * a * u[i];  // k
      values[t * 3 * h.d + 2 * h.d + i] = normal(rng);    // v
    }
  }
  h.qkv = Tensor::from_floats(values, {h.seq, 3 * h.d}, DType::F16);
  std::vector<int32_t> spans;
  for (int64_t t = 0; t < h.seq; ++t) spans.insert(spans.end(), {0, 8, 8});  // all visible
  h.spans = Tensor::from_ints(spans, {h.seq, 3});
  return h;
}

TEST_F(CudaTest, AttentionF16QueryScalingKeepsHugeScoresInRange) {
  const HugeScores h = huge_scores(rng_);
  Tensor ref = Tensor::empty({h.seq, h.d}, DType::F32);
  cpu::attention_forward(h.qkv.to(DType::F32), h.spans, 1, 1, h.d, 10.0f, kNoDropout, ref, nullptr);
  Tensor out = poisoned({h.seq, h.d}, DType::F16);
  cuda::attention_forward(gpu(h.qkv), gpu(h.spans), 1, 1, h.d, 10.0f, kNoDropout, out, nullptr);
  EXPECT_TRUE(close(out, ref, tolerance(DType::F16)));
}

// The same inputs with coeff 1 overflow the fp16 scores, as in the reference: this proves that
// the F16 kernel really rounds scores to fp16 (so the test above exercises the scaling).
TEST_F(CudaTest, AttentionF16ScoresOverflowWithoutQueryScaling) {
  const HugeScores h = huge_scores(rng_);
  Tensor out = poisoned({h.seq, h.d}, DType::F16);
  cuda::attention_forward(gpu(h.qkv), gpu(h.spans), 1, 1, h.d, 1.0f, kNoDropout, out, nullptr);
  const Tensor got = host_f32(out);
  int64_t non_finite = 0;
  for (int64_t i = 0; i < got.numel(); ++i) non_finite += !std::isfinite(got.data_as<float>()[i]);
  EXPECT_EQ(non_finite, got.numel());
}

// ---- Dispatch and argument checks -----------------------------------------------------------

TEST_F(CudaTest, GenericOpsDispatchCudaTensorsToTheGpu) {
  const Tensor a = random({5, 7}, DType::BF16), b = random({5, 7}, DType::BF16);
  Tensor ref = Tensor::empty({5, 7}, DType::F32);
  cpu::scale_add(2.0f, a.to(DType::F32), b.to(DType::F32), ref);
  Tensor out = poisoned({5, 7}, DType::BF16);
  glmrt::scale_add(2.0f, gpu(a), gpu(b), out);  // kernels/ops.h, dispatched on the device
  EXPECT_TRUE(close(out, ref, tolerance(DType::BF16)));
}

TEST_F(CudaTest, RejectsBadOperands) {
  const Tensor f32 = gpu(random({4, 4}, DType::F32));
  const Tensor f16 = gpu(random({4, 4}, DType::F16));
  Tensor out = poisoned({4, 4}, DType::F32);
  EXPECT_THROW(cuda::gemm(f32, false, f16, false, out, 1.0f, 0.0f), InternalError);  // dtypes
  EXPECT_THROW(cuda::scale_add(1.0f, f32, random({4, 4}, DType::F32), out), InternalError);  // cpu
  Tensor wrong = poisoned({4, 5}, DType::F32);
  EXPECT_THROW(cuda::gemm(f32, false, f32, false, wrong, 1.0f, 0.0f), InternalError);  // shape
  const Tensor f64 = gpu(random({4, 4}, DType::F64));
  Tensor out64 = gpu(random({4, 4}, DType::F64));
  EXPECT_THROW(cuda::scale_add(1.0f, f64, f64, out64), InternalError);  // no F64 on the GPU
  const Tensor qkv = gpu(random({2, 3 * 512}, DType::F32));
  const Tensor spans = gpu(Tensor::from_ints({0, 2, 2, 0, 2, 2}, {2, 3}));
  Tensor ctx = poisoned({2, 512}, DType::F32);
  EXPECT_THROW(cuda::attention_forward(qkv, spans, 1, 1, 512, 1.0f, kNoDropout, ctx, nullptr),
               InternalError);  // head dim above 256
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaOps, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

}  // namespace
}  // namespace glmrt::cuda_testing
