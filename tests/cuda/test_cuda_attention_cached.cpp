// attention_cached_forward on the GPU against the CPU op: a prefill row and decoding rows whose
// keys come from several slots through the table (beams sharing a context), every dtype; the
// decoding rows see 151 keys (several rounds of the kernel's warps, a partial last one).
#include "tests/cuda/test_cuda_util.h"

namespace glmrt::cuda_testing {
namespace {

TEST_P(CudaOps, AttentionCachedMatchesCpuThroughTheSlotTable) {
  const int64_t heads = 3, slots = 4, cap = 160, rows = 4;
  for (int64_t d : {32, 64, 80, 128}) {
    SCOPED_TRACE(::testing::Message() << "head_dim=" << d);
    const int64_t hl = heads * d;
    // Caches with earlier tokens already in every slot.
    const Tensor k0 = random_dt({slots, cap, hl}), v0 = random_dt({slots, cap, hl});
    // Row 0 prefills 20 tokens (sep 12) in slot 0; rows 1-3 decode one token at position 150,
    // reading positions < 12 from slot 0 and the rest from their own slot.
    std::vector<int32_t> table(static_cast<size_t>(rows * cap));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cap; ++j) table[static_cast<size_t>(r * cap + j)] = j < 12 ? 0 : static_cast<int32_t>(r);
    std::vector<int32_t> index;
    for (int32_t p = 0; p < 20; ++p) index.insert(index.end(), {0, p, std::max(12, p + 1)});
    for (int32_t r = 1; r < 4; ++r) index.insert(index.end(), {r, 150, 151});
    const int64_t n = 23;
    const Tensor qkv = random_dt({n, 3 * hl});
    const Tensor idx = Tensor::from_ints(index, {n, 3}), tab = Tensor::from_ints(table, {rows, cap});
    Tensor kc = k0.to(DType::F32), vc = v0.to(DType::F32);
    Tensor ref = Tensor::empty({n, hl}, DType::F32);
    cpu::attention_cached_forward(qkv.to(DType::F32), idx, tab, heads, d, 1.0f, kc, vc, ref);
    Tensor gk = gpu(k0), gv = gpu(v0);
    Tensor out = poisoned({n, hl}, dt());
    cuda::attention_cached_forward(gpu(qkv), gpu(idx), gpu(tab), heads, d, 1.0f, gk, gv, out);
    EXPECT_TRUE(close(out, ref, tolerance(dt())));
    EXPECT_TRUE(close(gk, kc, tolerance(dt())));  // the stores landed where the CPU put them
    EXPECT_TRUE(close(gv, vc, tolerance(dt())));
  }
}

}  // namespace
}  // namespace glmrt::cuda_testing
