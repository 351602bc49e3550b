// KV-cached decoding equals full recomputation: at every step the logits of the token fed through
// the cache (attention_cached_forward, slot tables, beams sharing a context and reordering)
// equal those of a full forward pass over the whole sequence with the GLM mask (float64).
#include <gtest/gtest.h>
#include <omp.h>

#include "kernels/ops.h"
#include "model/glm_model.h"
#include "model/init.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::max_rel_diff;
using testing::random_tensor;

GlmConfig small_config() { return testing::small_glm_config(2); }

GlmModel make_model(DType dtype = DType::F64) {
  const GlmConfig c = small_config();
  GlmParams params = GlmParams::allocate(c, DType::F64, Device::cpu());
  init_glm_params(params, c, 7);
  for (size_t i = 0; i < params.size(); ++i) {  // LayerNorm weights != 1, biases != 0
    Tensor noise = random_tensor(params.tensor(i).shape(), 50 + static_cast<uint32_t>(i), DType::F64, 0.3);
    scale_add(1.0f, noise, params.tensor(i), params.tensor(i));
  }
  if (dtype == DType::F64) return GlmModel(c, std::move(params));
  GlmParams p2 = GlmParams::allocate(c, dtype, Device::cpu());
  for (size_t i = 0; i < params.size(); ++i) p2.tensor(i).copy_from(params.tensor(i).to(dtype));
  return GlmModel(c, std::move(p2));
}

// Logits [V] of the last token of `tokens` under a full forward pass.
Tensor full_last_logits(GlmModel& model, const std::vector<int32_t>& tokens,
                        const std::vector<int32_t>& positions, int32_t sep) {
  BatchRows rows;
  rows.tokens = {tokens};
  rows.position_ids = {positions};
  rows.sep = {{sep}};
  const Batch batch = build_batch(rows, model.config(), "test");
  const Tensor logits = model.forward(batch);
  const int64_t V = model.config().vocab_size, s = static_cast<int64_t>(tokens.size());
  return logits.view({s, V}).slice_rows(s - 1, s).clone();
}

// A cache step: `feeds` = (row, pos, token, position, visible) per token; logits wanted for the
// listed tokens.
struct Feed {
  int32_t row, pos, token, position, visible;
};
Tensor cached_step(GlmModel& model, KvCache& cache, const std::vector<int32_t>& table, int64_t rows,
                   const std::vector<Feed>& feeds, const std::vector<int32_t>& logit_tokens) {
  std::vector<int32_t> tok, pos, idx;
  for (const Feed& f : feeds) {
    tok.push_back(f.token);
    pos.push_back(f.position);
    idx.insert(idx.end(), {f.row, f.pos, f.visible});
  }
  const int64_t n = static_cast<int64_t>(feeds.size());
  CachedBatch b{Tensor::from_ints(tok, {n}), Tensor::from_ints(pos, {n}), Tensor::from_ints(idx, {n, 3}),
                Tensor::from_ints(table, {rows, cache.capacity}),
                Tensor::from_ints(logit_tokens, {static_cast<int64_t>(logit_tokens.size())})};
  return model.forward_cached(b, Tensor(), cache);
}

// F64 runs the GEMM path of attention_cached_forward; F32 decodes through its direct loops
// (groups of at most 4 tokens), the prefill through the GEMMs.
void check_decoding_equals_full_recomputation(DType dt, double tol) {
  GlmModel model = make_model(dt);
  const int64_t cap = 32, V = model.config().vocab_size;
  KvCache cache = KvCache::allocate(model.config(), model.shard(), 2, cap, dt, Device::cpu());
  // Context: 9 prompt tokens with a [MASK] at 3, then sop, which takes the mask's position.
  std::vector<int32_t> tokens = {5, 9, 11, 60, 17, 2, 33, 8, 41, 62};
  std::vector<int32_t> positions = {0, 1, 2, 3, 4, 5, 6, 7, 8, 3};
  const int32_t sep = 9, mask_pos = 3;
  std::vector<int32_t> table(2 * cap, 1);  // row 1 lives in slot 1
  std::vector<Feed> prefill;
  for (int32_t p = 0; p < 10; ++p) prefill.push_back({1, p, tokens[p], positions[p], std::max(sep, p + 1)});
  Tensor logits = cached_step(model, cache, table, 2, prefill, {9});
  EXPECT_LE(max_rel_diff(logits, full_last_logits(model, tokens, positions, sep)), tol);
  for (int32_t next : {12, 7, 50, 3, 3, 21}) {
    const int32_t pos = static_cast<int32_t>(tokens.size());
    tokens.push_back(next);
    positions.push_back(mask_pos);
    logits = cached_step(model, cache, table, 2, {{1, pos, next, mask_pos, pos + 1}}, {0});
    ASSERT_EQ(logits.numel(), V);
    EXPECT_LE(max_rel_diff(logits, full_last_logits(model, tokens, positions, sep)), tol)
        << "after " << tokens.size() << " tokens";
  }
}

TEST(KvCache, DecodingEqualsFullRecomputationMaskBlank) {
  check_decoding_equals_full_recomputation(DType::F64, 1e-12);
}

TEST(KvCache, Float32DecodingEqualsFullRecomputation) {
  check_decoding_equals_full_recomputation(DType::F32, 2e-5);
}

void check_beams_share_the_context(DType dt, double tol) {
  GlmModel model = make_model(dt);
  const int64_t cap = 24, rows = 3;
  KvCache cache = KvCache::allocate(model.config(), model.shard(), rows, cap, dt, Device::cpu());
  // gMASK style: positions keep counting; the context (6 tokens + sop) is prefilled in row 0.
  const std::vector<int32_t> context = {4, 8, 15, 16, 23, 61, 62};
  const int32_t sep = 6, ctx = 7;
  std::vector<int32_t> table(rows * cap, 0);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < cap; ++j) table[r * cap + j] = r;
  std::vector<Feed> prefill;
  for (int32_t p = 0; p < ctx; ++p) prefill.push_back({0, p, context[p], p, std::max(sep, p + 1)});
  cached_step(model, cache, table, rows, prefill, {ctx - 1});
  // Every beam reads the context from slot 0.
  for (int r = 1; r < rows; ++r)
    for (int j = 0; j < ctx; ++j) table[r * cap + j] = 0;
  std::vector<std::vector<int32_t>> beams(rows, context);
  const std::vector<std::vector<int32_t>> steps = {{10, 20, 30}, {11, 21, 31}, {12, 22, 32}, {13, 23, 33}};
  // Before steps 2 and 3, beams are reordered: beam 2 continues beam 1, beam 1 continues beam 0.
  for (size_t s = 0; s < steps.size(); ++s) {
    const int32_t pos = ctx + static_cast<int32_t>(s);
    if (s == 2 || s == 3) {
      const std::vector<int32_t> parent = {0, 0, 1};
      std::vector<std::vector<int32_t>> old_beams = beams;
      std::vector<int32_t> old_table = table;
      for (int r = 0; r < rows; ++r) {
        beams[r] = old_beams[parent[r]];
        std::copy(old_table.begin() + parent[r] * cap, old_table.begin() + parent[r] * cap + pos,
                  table.begin() + r * cap);
      }
    }
    std::vector<Feed> feeds;
    for (int r = 0; r < rows; ++r) {
      table[r * cap + pos] = r;
      beams[r].push_back(steps[s][r]);
      feeds.push_back({r, pos, steps[s][r], pos, pos + 1});
    }
    Tensor logits = cached_step(model, cache, table, rows, feeds, {0, 1, 2});
    const int64_t V = model.config().vocab_size;
    for (int r = 0; r < rows; ++r) {
      std::vector<int32_t> positions(beams[r].size());
      for (size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<int32_t>(i);
      EXPECT_LE(max_rel_diff(logits.slice_rows(r, r + 1).view({V}),
                             full_last_logits(model, beams[r], positions, sep).view({V})),
                tol)
          << "step " << s << " beam " << r;
    }
  }
}

TEST(KvCache, BeamsShareTheContextAndReorderThroughTheTable) {
  check_beams_share_the_context(DType::F64, 1e-12);
}

TEST(KvCache, Float32BeamsReadTheSharedContextInPlace) {
  check_beams_share_the_context(DType::F32, 2e-5);
}

TEST(KvCache, PrefillAndDecodeOfDifferentQueriesInOneCall) {
  GlmModel model = make_model();
  const int64_t cap = 20, rows = 2;
  KvCache cache = KvCache::allocate(model.config(), model.shard(), rows, cap, DType::F64, Device::cpu());
  std::vector<int32_t> table(rows * cap);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < cap; ++j) table[r * cap + j] = r;
  // Query A (row 0) is prefilled alone, then decodes one token while query B (row 1) prefills.
  std::vector<int32_t> a = {3, 1, 4, 1, 5, 62};
  std::vector<Feed> f;
  for (int32_t p = 0; p < 6; ++p) f.push_back({0, p, a[p], p, std::max(5, p + 1)});
  cached_step(model, cache, table, rows, f, {5});
  const std::vector<int32_t> b = {9, 2, 6, 5, 3, 5, 8, 62};
  f = {{0, 6, 27, 6, 7}};
  for (int32_t p = 0; p < 8; ++p) f.push_back({1, p, b[p], p, std::max(7, p + 1)});
  Tensor logits = cached_step(model, cache, table, rows, f, {0, 8});
  a.push_back(27);
  const int64_t V = model.config().vocab_size;
  std::vector<int32_t> pa(a.size()), pb(b.size());
  for (size_t i = 0; i < pa.size(); ++i) pa[i] = static_cast<int32_t>(i);
  for (size_t i = 0; i < pb.size(); ++i) pb[i] = static_cast<int32_t>(i);
  EXPECT_LE(max_rel_diff(logits.slice_rows(0, 1).view({V}), full_last_logits(model, a, pa, 5).view({V})), 1e-12);
  EXPECT_LE(max_rel_diff(logits.slice_rows(1, 2).view({V}), full_last_logits(model, b, pb, 7).view({V})), 1e-12);
}

TEST(KvCache, SixteenBitCachesMatchTheSixteenBitFullForward) {
  // BF16 and F16 models read and write their caches as 16 bits: cached decoding agrees with the
  // same model's full forward pass to 16-bit rounding, and stays near the F32 model.
  for (DType dt : {DType::BF16, DType::F16}) {
    GlmModel ref = make_model(DType::F32), low = make_model(dt);
    const int64_t cap = 16;
    KvCache cache = KvCache::allocate(low.config(), low.shard(), 1, cap, dt, Device::cpu());
    std::vector<int32_t> table(cap, 0);
    std::vector<Feed> f;
    std::vector<int32_t> t = {7, 3, 9, 30, 62}, pos = {0, 1, 2, 3, 4};
    for (int32_t p = 0; p < 5; ++p) f.push_back({0, p, t[p], p, std::max(4, p + 1)});
    Tensor b = cached_step(low, cache, table, 1, f, {4}).to(DType::F32);
    const double tol = dt == DType::BF16 ? 0.02 : 0.003;
    EXPECT_LE(max_rel_diff(b, full_last_logits(low, t, pos, 4).to(DType::F32)), tol) << dtype_name(dt);
    EXPECT_LE(max_rel_diff(b, full_last_logits(ref, t, pos, 4)), 5 * tol) << dtype_name(dt);
    b = cached_step(low, cache, table, 1, {{0, 5, 11, 5, 6}}, {0}).to(DType::F32);
    t.push_back(11);
    pos.push_back(5);
    EXPECT_LE(max_rel_diff(b, full_last_logits(low, t, pos, 4).to(DType::F32)), tol) << dtype_name(dt);
  }
}

// Decoding cuts each token's keys into fixed chunks of 32, spread over the threads (with heads
// grouped when chunks are few) and combined per head. A token's result is bit-identical for any
// thread count and whatever else is in the batch, for F32 and BF16 caches, beams sharing a
// context included, with visible key counts around the chunk size; and near the float64 GEMM
// path.
TEST(KvCache, ChunkedDecodingIsBitIdenticalForAnyThreadsAndBatch) {
  const int64_t heads = 4, d = 16, hl = heads * d, slots = 7, cap = 104, rows = 7;
  const std::vector<int32_t> visible = {70, 97, 64, 1, 31, 32, 33};  // beams write past 40
  std::vector<int32_t> table(static_cast<size_t>(rows * cap));
  for (int64_t r = 0; r < rows; ++r)  // rows 0-2: beams sharing slot 0's first 40 positions
    for (int64_t j = 0; j < cap; ++j)
      table[static_cast<size_t>(r * cap + j)] = static_cast<int32_t>(r < 3 && j < 40 ? 0 : r);
  std::vector<int32_t> index;
  for (int32_t r = 0; r < rows; ++r) index.insert(index.end(), {r, visible[r] - 1, visible[r]});
  const Tensor idx = Tensor::from_ints(index, {rows, 3}), tab = Tensor::from_ints(table, {rows, cap});
  const Tensor qkv64 = random_tensor({rows, 3 * hl}, 3, DType::F64, 1.0);
  const Tensor k64 = random_tensor({slots, cap, hl}, 4, DType::F64, 1.0);
  const Tensor v64 = random_tensor({slots, cap, hl}, 5, DType::F64, 1.0);
  Tensor kr = k64.clone(), vr = v64.clone(), ref = Tensor::empty({rows, hl}, DType::F64);
  attention_cached_forward(qkv64, idx, tab, heads, d, 1.0f, kr, vr, ref);
  const int threads = omp_get_max_threads();
  for (DType dt : {DType::F32, DType::BF16}) {
    std::vector<Tensor> outs;
    for (int t : {1, 2, 3, 16}) {
      omp_set_num_threads(t);
      Tensor kc = k64.to(dt), vc = v64.to(dt), out = Tensor::empty({rows, hl}, dt);
      attention_cached_forward(qkv64.to(dt), idx, tab, heads, d, 1.0f, kc, vc, out);
      outs.push_back(out.to(DType::F64));
    }
    // Each row alone, on 2 threads.
    omp_set_num_threads(2);
    Tensor alone = Tensor::empty({rows, hl}, DType::F64);
    for (int64_t r = 0; r < rows; ++r) {
      Tensor kc = k64.to(dt), vc = v64.to(dt), out = Tensor::empty({1, hl}, dt);
      const Tensor q = qkv64.slice_rows(r, r + 1).to(dt);
      const Tensor i1 = Tensor::from_ints({0, visible[static_cast<size_t>(r)] - 1, visible[static_cast<size_t>(r)]}, {1, 3});
      const std::vector<int32_t> t1(table.begin() + r * cap, table.begin() + (r + 1) * cap);
      attention_cached_forward(q, i1, Tensor::from_ints(t1, {1, cap}), heads, d, 1.0f, kc, vc, out);
      alone.slice_rows(r, r + 1).copy_from(out.to(DType::F64));
    }
    omp_set_num_threads(threads);
    for (size_t i = 1; i < outs.size(); ++i) EXPECT_EQ(max_rel_diff(outs[i], outs[0]), 0.0) << dtype_name(dt) << " " << i;
    EXPECT_EQ(max_rel_diff(alone, outs[0]), 0.0) << dtype_name(dt);
    EXPECT_LE(max_rel_diff(outs[0], ref), dt == DType::F32 ? 1e-5 : 0.05) << dtype_name(dt);
  }
}

TEST(KvCache, BadIndicesAreRefused) {
  GlmModel model = make_model();
  KvCache cache = KvCache::allocate(model.config(), model.shard(), 1, 8, DType::F64, Device::cpu());
  std::vector<int32_t> table(8, 0);
  EXPECT_THROW(cached_step(model, cache, table, 1, {{0, 8, 1, 0, 1}}, {0}), Error);   // pos past capacity
  EXPECT_THROW(cached_step(model, cache, table, 1, {{1, 0, 1, 0, 1}}, {0}), Error);   // no such row
  table[3] = 5;
  EXPECT_THROW(cached_step(model, cache, table, 1, {{0, 3, 1, 0, 4}}, {0}), Error);   // no such slot
}

}  // namespace
}  // namespace glmrt
