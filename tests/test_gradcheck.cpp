// Finite-difference gradient checks in double precision: every backward op, one whole layer (with
// dropout on) and the whole model's training loss (with EGS).
#include <functional>

#include "kernels/ops.h"
#include "model/glm_layer.h"
#include "model/glm_model.h"
#include "model/init.h"
#include "model/rope_tables.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::random_tensor;

// Σ r ⊙ y: the scalar whose gradient w.r.t. y is r.
double dot(const Tensor& y, const Tensor& r) {
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += y.item(i) * r.item(i);
  return s;
}

// Compares `analytic` (gradient of loss() w.r.t. x) with central differences on up to `samples`
// elements of x (all when fewer). x must be an F64 CPU tensor that loss() reads.
void expect_gradient(const std::function<double()>& loss, Tensor& x, const Tensor& analytic,
                     const char* what, int64_t samples = 64, double tol = 1e-6) {
  ASSERT_EQ(x.numel(), analytic.numel()) << what;
  const int64_t n = x.numel(), stride = std::max<int64_t>(1, n / samples);
  double max_err = 0, max_ref = 0;
  for (int64_t i = (n > samples ? 7 % stride : 0); i < n; i += stride) {
    double* p = x.data_as<double>() + i;
    const double orig = *p, h = 1e-6 * std::max(1.0, std::abs(orig));
    *p = orig + h;
    const double up = loss();
    *p = orig - h;
    const double down = loss();
    *p = orig;
    const double numeric = (up - down) / (2 * h);
    max_err = std::max(max_err, std::abs(numeric - analytic.item(i)));
    max_ref = std::max(max_ref, std::abs(numeric));
  }
  EXPECT_GT(max_ref, 0.0) << what << ": the checked gradient is identically zero";
  EXPECT_LE(max_err, tol * std::max(1.0, max_ref)) << what << ": max |numeric - analytic| "
                                                    << max_err << " (max |grad| " << max_ref << ")";
}

const DType F64 = DType::F64;

TEST(GradCheck, Linear) {
  Tensor x = random_tensor({5, 7}, 1, F64), w = random_tensor({4, 7}, 2, F64);
  Tensor b = random_tensor({4}, 3, F64), r = random_tensor({5, 4}, 4, F64);
  auto loss = [&] {
    Tensor y = Tensor::empty({5, 4}, F64);
    linear_forward(x, w, &b, y);
    return dot(y, r);
  };
  Tensor dx = Tensor::empty({5, 7}, F64), dw = Tensor::zeros({4, 7}, F64), db = Tensor::zeros({4}, F64);
  linear_backward(x, w, r, &dx, &dw, &db);
  expect_gradient(loss, x, dx, "dx");
  expect_gradient(loss, w, dw, "dw");
  expect_gradient(loss, b, db, "dbias");
}

TEST(GradCheck, LinearAccumulatesParameterGradients) {
  Tensor x = random_tensor({3, 2}, 5, F64), w = random_tensor({2, 2}, 6, F64), r = random_tensor({3, 2}, 7, F64);
  Tensor dw1 = Tensor::zeros({2, 2}, F64), dw2 = Tensor::zeros({2, 2}, F64);
  linear_backward(x, w, r, nullptr, &dw1, nullptr);
  linear_backward(x, w, r, nullptr, &dw2, nullptr);
  linear_backward(x, w, r, nullptr, &dw2, nullptr);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(dw2.item(i), 2 * dw1.item(i), 1e-12);
}

TEST(GradCheck, LayerNorm) {
  Tensor x = random_tensor({4, 9}, 8, F64, 2.0), w = random_tensor({9}, 9, F64);
  Tensor b = random_tensor({9}, 10, F64), r = random_tensor({4, 9}, 11, F64);
  auto loss = [&] {
    Tensor y = Tensor::empty({4, 9}, F64);
    layernorm_forward(x, w, b, 1e-5f, y, nullptr, nullptr);
    return dot(y, r);
  };
  Tensor y = Tensor::empty({4, 9}, F64), mean = Tensor::empty({4}, F64), rstd = Tensor::empty({4}, F64);
  layernorm_forward(x, w, b, 1e-5f, y, &mean, &rstd);
  Tensor dx = Tensor::empty({4, 9}, F64), dw = Tensor::zeros({9}, F64), db = Tensor::zeros({9}, F64);
  layernorm_backward(x, w, mean, rstd, r, dx, &dw, &db);
  expect_gradient(loss, x, dx, "dx");
  expect_gradient(loss, w, dw, "dweight");
  expect_gradient(loss, b, db, "dbias");
}

TEST(GradCheck, Geglu) {
  Tensor u = random_tensor({3, 10}, 12, F64, 1.5), r = random_tensor({3, 5}, 13, F64);
  auto loss = [&] {
    Tensor o = Tensor::empty({3, 5}, F64);
    geglu_forward(u, o);
    return dot(o, r);
  };
  Tensor du = Tensor::empty({3, 10}, F64);
  geglu_backward(u, r, du);
  expect_gradient(loss, u, du, "du");
}

TEST(GradCheck, Rope) {
  const int64_t n = 4, heads = 2, d = 8;
  RopeTables t = build_rope_tables(d, 32, 10000, true);
  Tensor qkv = random_tensor({n, heads * 3 * d}, 14, F64), r = random_tensor({n, heads * 3 * d}, 15, F64);
  Tensor pos = Tensor::from_ints({3, 0, 31, 3}, {n});
  auto loss = [&] {
    Tensor y = qkv.clone();
    rope_forward(y, pos, t.cos, t.sin, heads, d);
    return dot(y, r);
  };
  Tensor g = r.clone();
  rope_backward(g, pos, t.cos, t.sin, heads, d);
  expect_gradient(loss, qkv, g, "dqkv", 200);
}

struct AttnCase {
  float dropout;
};
class AttentionGrad : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionGrad, SegmentsSepsAndDropout) {
  const int64_t batch = 2, seq = 8, heads = 2, d = 4;
  // row 0: prefix 3 then causal; row 1: segments [3 (sep 3), 5 (sep 1)]
  std::vector<int32_t> sp;
  for (int t = 0; t < 8; ++t) sp.insert(sp.end(), {0, 3, 8});
  for (int t = 0; t < 3; ++t) sp.insert(sp.end(), {0, 3, 3});
  for (int t = 0; t < 5; ++t) sp.insert(sp.end(), {3, 4, 8});
  Tensor spans = Tensor::from_ints(sp, {batch * seq, 3});
  DropoutSpec drop;
  drop.p = GetParam().dropout;
  drop.key = 99;
  drop.stream = dropout_stream(3, 1, DropoutSite::Attention);
  drop.row_offset = 5;
  Tensor qkv = random_tensor({batch * seq, heads * 3 * d}, 16, F64);
  Tensor r = random_tensor({batch * seq, heads * d}, 17, F64);
  auto loss = [&] {
    Tensor ctx = Tensor::empty({batch * seq, heads * d}, F64);
    attention_forward(qkv, spans, batch, heads, d, 1.0f, drop, ctx, nullptr);
    return dot(ctx, r);
  };
  Tensor ctx = Tensor::empty({batch * seq, heads * d}, F64), lse = Tensor::empty({batch * heads * seq}, F64);
  attention_forward(qkv, spans, batch, heads, d, 1.0f, drop, ctx, &lse);
  Tensor dqkv = Tensor::empty(qkv.shape(), F64);
  attention_backward(qkv, spans, batch, heads, d, 1.0f, drop, ctx, lse, r, dqkv);
  expect_gradient(loss, qkv, dqkv, "dqkv", 400);
}

INSTANTIATE_TEST_SUITE_P(Dropout, AttentionGrad, ::testing::Values(AttnCase{0.0f}, AttnCase{0.3f}),
                         [](const auto& info) { return info.param.dropout > 0 ? "on" : "off"; });

TEST(GradCheck, EmbeddingScatterAdd) {
  Tensor table = random_tensor({6, 3}, 18, F64), r = random_tensor({5, 3}, 19, F64);
  Tensor ids = Tensor::from_ints({2, 9, 2, 4, 0}, {5});  // 9 is outside the shard [1, 7)
  auto loss = [&] {
    Tensor o = Tensor::empty({5, 3}, F64);
    embedding_forward(ids, table, 1, o);
    return dot(o, r);
  };
  Tensor g = Tensor::zeros({6, 3}, F64);
  embedding_backward(ids, r, 1, g);
  expect_gradient(loss, table, g, "dtable");
}

TEST(GradCheck, CrossEntropyWithShardOffset) {
  const int64_t n = 4, v = 7;
  Tensor logits = random_tensor({n, v}, 20, F64, 2.0), g = random_tensor({n}, 21, F64);
  Tensor tg = Tensor::from_ints({3, 12, 10, 5}, {n});  // vocab_start 3: ids 3..9 are local
  auto loss = [&] {
    Tensor m = Tensor::empty({n}, F64), s = Tensor::empty({n}, F64), t = Tensor::empty({n}, F64);
    cross_entropy_max(logits, m);
    cross_entropy_sums(logits, tg, 3, m, s, t);
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += g.item(i) * (std::log(s.item(i)) + m.item(i) - t.item(i));
    return acc;
  };
  Tensor m = Tensor::empty({n}, F64), s = Tensor::empty({n}, F64), t = Tensor::empty({n}, F64);
  cross_entropy_max(logits, m);
  cross_entropy_sums(logits, tg, 3, m, s, t);
  Tensor d = Tensor::empty({n, v}, F64);
  cross_entropy_backward(logits, tg, 3, m, s, g, d);
  expect_gradient(loss, logits, d, "dlogits");
}

TEST(GradCheck, DropoutIsItsOwnBackwardAndKeyed) {
  DropoutSpec spec{0.25f, 7, dropout_stream(1, 0, DropoutSite::MlpOutput), 1000};
  Tensor x = random_tensor({64, 16}, 22, F64);
  Tensor y = x.clone();
  dropout_apply(y, spec);
  int64_t dropped = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (y.item(i) == 0) ++dropped;
    else EXPECT_NEAR(y.item(i), x.item(i) / 0.75, 1e-12);
  }
  EXPECT_NEAR(static_cast<double>(dropped) / x.numel(), 0.25, 0.04);
  // The same elements at another offset (a later micro-batch) get the decisions of those indices.
  Tensor tail = x.slice_rows(32, 64).clone();
  DropoutSpec shifted = spec;
  shifted.offset += 32 * 16;
  dropout_apply(tail, shifted);
  for (int64_t i = 0; i < tail.numel(); ++i) EXPECT_EQ(tail.item(i), y.item(32 * 16 + i));
}

// testing::small_glm_config made smaller still (finite differences in double over every weight).
GlmConfig tiny_config(int64_t layers = 1) {
  GlmConfig c = testing::small_glm_config(layers);
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = 12;
  c.vocab_size = 20;
  c.tokens = TokenIds{10, 11, 12, 13, 14, 15, 16, 0};
  return c;
}

Batch tiny_batch(const GlmConfig& c) {
  BatchRows rows;
  rows.tokens = {{1, 5, 3, 11, 14, 7}, {2, 10, 14, 4, 9, 9}};
  rows.position_ids = {{0, 1, 2, 3, 4, 5}, {0, 1, 1, 0, 1, 2}};
  rows.sep = {{4}, {2, 1}};
  rows.segment_lengths = {{6}, {3, 3}};
  return build_batch(rows, c, "test");
}

// Perturbs every parameter slightly so LayerNorm weights are not exactly 1 and biases not 0.
void randomize(GlmParams& p, uint32_t seed) {
  for (size_t i = 0; i < p.size(); ++i) {
    Tensor noise = random_tensor(p.tensor(i).shape(), seed + static_cast<uint32_t>(i), F64, 0.3);
    scale_add(1.0f, noise, p.tensor(i), p.tensor(i));
  }
}

TEST(GradCheck, WholeLayerWithDropout) {
  const GlmConfig c = tiny_config();
  GlmParams params = GlmParams::allocate(c, F64, Device::cpu());
  init_glm_params(params, c, 5);
  randomize(params, 100);
  const Batch batch = tiny_batch(c);
  RopeTables rope = build_rope_tables(c.head_dim(), c.max_sequence_length, c.rotary_base, false);
  StepContext ctx{true, 0.2f, 0.25f, 42, 3, 1};
  const int64_t n = 12;
  Tensor x0 = random_tensor({n, c.hidden_size}, 30, F64), r = random_tensor({n, c.hidden_size}, 31, F64);
  LayerActivations act;
  act.allocate(c, 1, n, F64, Device::cpu());
  auto loss = [&] {
    Tensor x = x0.clone();
    LayerActivations tmp;
    tmp.allocate(c, 1, n, F64, Device::cpu());
    glm_layer_forward(c, params.layers[0], rope, {}, batch, 0, ctx, tmp, x);
    return dot(x, r);
  };
  Tensor x = x0.clone();
  glm_layer_forward(c, params.layers[0], rope, {}, batch, 0, ctx, act, x);
  GlmParams grads = GlmParams::allocate(c, F64, Device::cpu());
  LayerActivations work;
  work.allocate(c, 1, n, F64, Device::cpu());
  Tensor dx = Tensor::empty({n, c.hidden_size}, F64);
  glm_layer_backward(c, params.layers[0], rope, {}, batch, 0, ctx, act, work, r, dx, grads.layers[0]);
  expect_gradient(loss, x0, dx, "dx");
  const std::string prefix = "transformer.layers.0.";
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& name = params.specs()[i].name;
    if (name.rfind(prefix, 0) != 0) continue;
    expect_gradient(loss, params.tensor(i), grads.tensor(i), name.c_str());
  }
}

class ModelGrad : public ::testing::TestWithParam<bool> {};

TEST_P(ModelGrad, TrainingLossWithEgsAndDropout) {
  const bool recompute = GetParam();
  const GlmConfig c = tiny_config(2);
  GlmParams params = GlmParams::allocate(c, F64, Device::cpu());
  init_glm_params(params, c, 6);
  randomize(params, 200);
  GlmModel model(c, std::move(params));
  const Batch batch = tiny_batch(c);
  Tensor targets = Tensor::from_ints({5, 3, 11, 14, 7, 15, 10, 14, 4, 9, 9, 15}, {12});
  Tensor mask = Tensor::from_floats({0, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1}, {12});
  GlmModel::TrainOptions opt;
  opt.ctx = StepContext{true, 0.1f, 0.2f, 9, 2, 3};
  opt.embedding_grad_shrink = 0.1f;  // value unchanged: the loss is that of α = 1 ...
  opt.grad_scale = 1.0f;
  opt.recompute = recompute;
  GlmParams grads = GlmParams::allocate(c, F64, Device::cpu());
  model.forward_backward(batch, targets, mask, opt, grads);
  GlmParams dummy = GlmParams::allocate(c, F64, Device::cpu());
  auto loss = [&] { return model.forward_backward(batch, targets, mask, opt, dummy); };
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string& name = model.params().specs()[i].name;
    if (name == "transformer.word_embeddings.weight") {
      // ... and the embedding gradient is α times the true one.
      Tensor scaled = grads.tensor(i).clone();
      scale_inplace(scaled, 1.0f / 0.1f);
      expect_gradient(loss, model.params().tensor(i), scaled, name.c_str(), 200);
    } else {
      expect_gradient(loss, model.params().tensor(i), grads.tensor(i), name.c_str());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Recompute, ModelGrad, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "recompute" : "saved"; });

}  // namespace
}  // namespace glmrt
