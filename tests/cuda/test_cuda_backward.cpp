// Every CUDA backward, loss and optimizer op against the CPU op on fresh random inputs; the
// method (tolerances, poisoning, seeds) is described in tests/cuda/test_cuda_util.h.
// Parameter gradients are accumulated (+=) from random starting values, in the data's dtype and
// in F32 (fp32 gradient accumulation for 16-bit data).
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/rope_tables.h"
#include "tests/cuda/test_cuda_util.h"

namespace glmrt::cuda_testing {
namespace {

// Backward ops, once per storage dtype.
class CudaGrads : public CudaOps {
 protected:
  // The gradient dtypes to try: the data's and, for 16-bit data, F32.
  std::vector<DType> grad_dtypes() const {
    return dt() == DType::F32 ? std::vector<DType>{DType::F32}
                              : std::vector<DType>{dt(), DType::F32};
  }
  // Tolerance for a gradient accumulated in `grad` dtype from inputs of the data dtype.
  double grad_tolerance(DType grad) const { return std::max(tolerance(dt()), tolerance(grad)); }

  // attention_backward against the CPU op; the GPU backward consumes the GPU forward's context
  // and lse, as training does.
  // Short rows of random segments for every head dim, then rows of several 64-token tiles
  // (long_spans) for the tensor-core kernels' head dims.
  void check_attention_backward(const DropoutSpec& dropout) {
    check_attention_backward(dropout, 2, 37, {16, 64, 80, 128}, Tensor());
    check_attention_backward(dropout, kLongSpansBatch, kLongSpansSeq, {64, 128}, long_spans());
  }
  void check_attention_backward(const DropoutSpec& dropout, int64_t batch, int64_t seq,
                                std::vector<int64_t> head_dims, const Tensor& fixed_spans) {
    const int64_t heads = 2;
    for (int64_t d : head_dims) {
      for (float coeff : {1.0f, 5.0f}) {
        SCOPED_TRACE(::testing::Message() << "seq=" << seq << " head_dim=" << d << " coeff=" << coeff);
        const Tensor spans = fixed_spans.defined() ? fixed_spans : make_spans(batch, seq, rng_);
        const Tensor qkv = random_dt({batch * seq, heads * 3 * d});
        const Tensor dctx = random_dt({batch * seq, heads * d});
        const Tensor qkv32 = qkv.to(DType::F32);
        Tensor ctx32 = Tensor::empty({batch * seq, heads * d}, DType::F32);
        Tensor lse32 = Tensor::empty({batch, heads, seq}, DType::F32);
        cpu::attention_forward(qkv32, spans, batch, heads, d, coeff, dropout, ctx32, &lse32);
        Tensor ref = Tensor::empty({batch * seq, heads * 3 * d}, DType::F32);
        cpu::attention_backward(qkv32, spans, batch, heads, d, coeff, dropout, ctx32, lse32,
                                dctx.to(DType::F32), ref);

        const Tensor qkv_gpu = gpu(qkv), spans_gpu = gpu(spans);
        Tensor ctx = poisoned({batch * seq, heads * d}, dt());
        Tensor lse = poisoned({batch, heads, seq}, DType::F32);
        cuda::attention_forward(qkv_gpu, spans_gpu, batch, heads, d, coeff, dropout, ctx, &lse);
        Tensor dqkv = poisoned({batch * seq, heads * 3 * d}, dt());
        cuda::attention_backward(qkv_gpu, spans_gpu, batch, heads, d, coeff, dropout, ctx, lse,
                                 gpu(dctx), dqkv);
        EXPECT_TRUE(close(dqkv, ref, tolerance(dt())));
      }
    }
  }
};

TEST_P(CudaGrads, LinearBackward) {
  const int64_t m = 70, k = 96;
  const Tensor x = random_dt({2, 9, k}), w = random_dt({m, k}), dy = random_dt({2, 9, m});
  for (DType gd : grad_dtypes()) {
    SCOPED_TRACE(::testing::Message() << "gradients in " << dtype_name(gd));
    const Tensor dw0 = random({m, k}, gd), db0 = random({m}, gd);
    Tensor ref_dx = Tensor::empty({2, 9, k}, DType::F32);
    Tensor ref_dw = dw0.to(DType::F32), ref_db = db0.to(DType::F32);
    cpu::linear_backward(x.to(DType::F32), w.to(DType::F32), dy.to(DType::F32), &ref_dx, &ref_dw,
                         &ref_db);
    Tensor dx = poisoned({2, 9, k}, dt());
    Tensor dw = gpu(dw0), db = gpu(db0);
    cuda::linear_backward(gpu(x), gpu(w), gpu(dy), &dx, &dw, &db);
    EXPECT_TRUE(close(dx, ref_dx, tolerance(dt())));
    EXPECT_TRUE(close(dw, ref_dw, grad_tolerance(gd)));
    EXPECT_TRUE(close(db, ref_db, grad_tolerance(gd)));
  }
}

TEST_P(CudaGrads, LayerNormBackward) {
  for (int64_t cols : {40, 300, 1536}) {
    for (DType gd : grad_dtypes()) {
      SCOPED_TRACE(::testing::Message() << "cols=" << cols << " gradients in " << dtype_name(gd));
      const int64_t rows = 11;
      const Tensor x = random_dt({rows, cols}, 2.0, 0.7), w = random_dt({cols}, 1.0, 0.3);
      const Tensor b = random_dt({cols}), dy = random_dt({rows, cols});
      Tensor y = Tensor::empty({rows, cols}, DType::F32);
      Tensor mean = Tensor::empty({rows}, DType::F32), rstd = Tensor::empty({rows}, DType::F32);
      cpu::layernorm_forward(x.to(DType::F32), w.to(DType::F32), b.to(DType::F32), 1e-5f, y, &mean,
                             &rstd);
      const Tensor dw0 = random({cols}, gd), db0 = random({cols}, gd);
      Tensor ref_dx = Tensor::empty({rows, cols}, DType::F32);
      Tensor ref_dw = dw0.to(DType::F32), ref_db = db0.to(DType::F32);
      cpu::layernorm_backward(x.to(DType::F32), w.to(DType::F32), mean, rstd, dy.to(DType::F32),
                              ref_dx, &ref_dw, &ref_db);
      Tensor dx = poisoned({rows, cols}, dt());
      Tensor dw = gpu(dw0), db = gpu(db0);
      cuda::layernorm_backward(gpu(x), gpu(w), gpu(mean), gpu(rstd), gpu(dy), dx, &dw, &db);
      EXPECT_TRUE(close(dx, ref_dx, tolerance(dt())));
      EXPECT_TRUE(close(dw, ref_dw, grad_tolerance(gd)));
      EXPECT_TRUE(close(db, ref_db, grad_tolerance(gd)));
      Tensor in_place = gpu(dy);  // dx may overwrite dy; parameter gradients are optional
      cuda::layernorm_backward(gpu(x), gpu(w), gpu(mean), gpu(rstd), in_place, in_place, nullptr,
                               nullptr);
      EXPECT_TRUE(close(in_place, ref_dx, tolerance(dt())));
    }
  }
}

TEST_P(CudaGrads, GegluBackward) {
  const Tensor u = random_dt({13, 2 * 150}, 0.0, 2.0), dout = random_dt({13, 150});
  Tensor ref = Tensor::empty({13, 300}, DType::F32);
  cpu::geglu_backward(u.to(DType::F32), dout.to(DType::F32), ref);
  Tensor du = poisoned({13, 300}, dt());
  cuda::geglu_backward(gpu(u), gpu(dout), du);
  EXPECT_TRUE(close(du, ref, tolerance(dt())));
}

TEST_P(CudaGrads, RopeBackwardIsTheInverseRotation) {
  const int64_t tokens = 20, heads = 2, d = 64, max_positions = 50;
  const RopeTables tables = build_rope_tables(d, max_positions, 10000.0, false);
  std::vector<int32_t> positions;
  for (int64_t t = 0; t < tokens; ++t) positions.push_back(uniform_int(0, max_positions - 1));
  const Tensor pos = Tensor::from_ints(positions, {tokens});
  const Tensor g = random_dt({tokens, heads * 3 * d});
  Tensor ref = g.to(DType::F32);
  cpu::rope_backward(ref, pos, tables.cos, tables.sin, heads, d);
  Tensor out = gpu(g);
  cuda::rope_backward(out, gpu(pos), gpu(tables.cos), gpu(tables.sin), heads, d);
  EXPECT_TRUE(close(out, ref, tolerance(dt())));
  cuda::rope_forward(out, gpu(pos), gpu(tables.cos), gpu(tables.sin), heads, d);
  EXPECT_TRUE(close(out, g.to(DType::F32), 2 * tolerance(dt())));  // forward ∘ backward = id
}

TEST_P(CudaGrads, AttentionBackward) { check_attention_backward(kNoDropout); }

TEST_P(CudaGrads, AttentionBackwardWithDropout) {
  DropoutSpec dropout;
  dropout.p = 0.2f;
  dropout.key = rng_();
  dropout.stream = dropout_stream(11, 0, DropoutSite::Attention);
  dropout.row_offset = 2;
  dropout.head_offset = 2;
  dropout.total_heads = 6;
  check_attention_backward(dropout);
}

TEST_P(CudaGrads, EmbeddingBackwardAccumulatesShardRows) {
  const int64_t vocab_start = 30, rows = 40, width = 70;
  std::vector<int32_t> ids = {30, 30, 69, 70, 29, -5, 45, 45, 45};  // repeats, both edges, outside
  for (int i = 0; i < 40; ++i) ids.push_back(uniform_int(20, 80));
  const int64_t n = static_cast<int64_t>(ids.size());
  const Tensor id_tensor = Tensor::from_ints(ids, {n});
  const Tensor dout = random_dt({n, width});
  for (DType gd : grad_dtypes()) {
    SCOPED_TRACE(::testing::Message() << "gradients in " << dtype_name(gd));
    const Tensor table0 = random({rows, width}, gd);
    Tensor ref = table0.to(DType::F32);
    cpu::embedding_backward(id_tensor, dout.to(DType::F32), vocab_start, ref);
    Tensor dtable = gpu(table0);
    cuda::embedding_backward(gpu(id_tensor), gpu(dout), vocab_start, dtable);
    EXPECT_TRUE(close(dtable, ref, grad_tolerance(gd)));
  }
}

TEST_P(CudaGrads, ScaleInplace) {
  const Tensor x = random_dt({9, 77});
  Tensor ref = x.to(DType::F32);
  cpu::scale_inplace(ref, 0.37f);
  Tensor out = gpu(x);
  cuda::scale_inplace(out, 0.37f);
  EXPECT_TRUE(close(out, ref, tolerance(dt())));
}

TEST_P(CudaGrads, CrossEntropyStepsMatchCpu) {
  const int64_t n = 7, v = 300, vocab_start = 50;
  const Tensor logits = random_dt({n, v}, 0.0, 3.0);
  const Tensor targets = Tensor::from_ints({50, 349, 350, 10, 120, 200, 51}, {n});  // 2 outside
  std::vector<float> g(n);
  for (float& x : g) x = static_cast<float>(uniform_int(1, 100)) / 50.0f;
  g[3] = 0.0f;  // a row without gradient
  const Tensor dloss = Tensor::from_floats(g, {n});
  const Tensor l32 = logits.to(DType::F32);
  Tensor ref_max = Tensor::empty({n}, DType::F32), ref_sum = Tensor::empty({n}, DType::F32);
  Tensor ref_target = Tensor::empty({n}, DType::F32), ref_grad = Tensor::empty({n, v}, DType::F32);
  cpu::cross_entropy_max(l32, ref_max);
  cpu::cross_entropy_sums(l32, targets, vocab_start, ref_max, ref_sum, ref_target);
  cpu::cross_entropy_backward(l32, targets, vocab_start, ref_max, ref_sum, dloss, ref_grad);

  const Tensor lg = gpu(logits), tg = gpu(targets);
  Tensor row_max = poisoned({n}, DType::F32), sum_exp = poisoned({n}, DType::F32);
  Tensor target_logit = poisoned({n}, DType::F32), grad = poisoned({n, v}, dt());
  cuda::cross_entropy_max(lg, row_max);
  cuda::cross_entropy_sums(lg, tg, vocab_start, row_max, sum_exp, target_logit);
  cuda::cross_entropy_backward(lg, tg, vocab_start, row_max, sum_exp, gpu(dloss), grad);
  EXPECT_TRUE(close(row_max, ref_max, 0.0));  // a maximum of the same values: exact
  EXPECT_TRUE(close(sum_exp, ref_sum, 1e-5));
  EXPECT_TRUE(close(target_logit, ref_target, 0.0));
  EXPECT_TRUE(close(grad, ref_grad, tolerance(dt())));
}

TEST_P(CudaGrads, SumSquaresInDouble) {
  const Tensor x = random_dt({300, 37}, 0.5, 2.0);
  const double ref = cpu::sum_squares(x.to(DType::F32));
  const double got = cuda::sum_squares(gpu(x));
  EXPECT_NEAR(got, ref, 1e-9 * ref);  // the same squares, both summed in double
  std::vector<float> values(100, 1.0f);
  values[37] = INFINITY;  // an overflowed gradient must show
  EXPECT_FALSE(std::isfinite(cuda::sum_squares(gpu(Tensor::from_floats(values, {100}, dt())))));
}

TEST_F(CudaTest, AdamWMatchesCpu) {
  const int64_t n = 5000;
  const Tensor param = random({n}, DType::F32), grad = random({n}, DType::F32, 0.0, 3.0);
  const Tensor m = random({n}, DType::F32, 0.0, 0.1);
  std::vector<float> v_values(n);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  for (float& x : v_values) x = std::abs(dist(rng_));  // second moments are non-negative
  const Tensor v = Tensor::from_floats(v_values, {n});
  Tensor rp = param.clone(), rm = m.clone(), rv = v.clone();
  cpu::adamw_update(rp, grad, rm, rv, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3, 0.5f);
  Tensor gp = gpu(param), gm = gpu(m), gv = gpu(v);
  cuda::adamw_update(gp, gpu(grad), gm, gv, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3, 0.5f);
  EXPECT_TRUE(close(gp, rp, 1e-6));
  EXPECT_TRUE(close(gm, rm, 1e-6));
  EXPECT_TRUE(close(gv, rv, 1e-6));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaGrads, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

}  // namespace
}  // namespace glmrt::cuda_testing
