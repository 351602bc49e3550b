#include "kernels/cpu/onednn_gemm.h"

#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

namespace glmrt::cpu {

namespace {
using dnnl::memory;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// Row-major [rows, cols] operand, or its transpose through strides.
memory::desc operand(int64_t rows, int64_t cols, bool transposed, memory::data_type dt) {
  // op(x) is [rows, cols]; x is stored [cols, rows] when transposed.
  return transposed ? memory::desc({rows, cols}, dt, memory::dims{1, rows})
                    : memory::desc({rows, cols}, dt, memory::dims{cols, 1});
}

struct Key {
  int64_t m, n, k;
  bool ta, tb, c_f32;
  float alpha, beta;
  bool operator<(const Key& o) const {
    return std::tie(m, n, k, ta, tb, c_f32, alpha, beta) <
           std::tie(o.m, o.n, o.k, o.ta, o.tb, o.c_f32, o.alpha, o.beta);
  }
};

struct Entry {
  dnnl::matmul prim;
  bool available = false, optimised = false;
};

Entry make_entry(const Key& key) {
  const auto bf16 = memory::data_type::bf16;
  const auto out = key.c_f32 ? memory::data_type::f32 : bf16;
  dnnl::primitive_attr attr;
  if (key.alpha != 1.0f) attr.set_output_scales(0, {key.alpha});
  if (key.beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(key.beta);
    attr.set_post_ops(ops);
  }
  dnnl::matmul::desc desc(operand(key.m, key.k, key.ta, bf16), operand(key.k, key.n, key.tb, bf16),
                          memory::desc({key.m, key.n}, out, memory::dims{key.n, 1}));
  try {
    dnnl::matmul::primitive_desc pd(desc, attr, engine());
    const std::string impl = pd.impl_info_str();
    return {dnnl::matmul(pd), true, impl.rfind("ref", 0) != 0};
  } catch (const dnnl::error&) {
    return {};  // no bf16 matmul for this CPU (e.g. AVX2 only)
  }
}
}  // namespace

std::string onednn_bf16_matmul_impl() {
  const auto bf16 = memory::data_type::bf16;
  dnnl::matmul::desc desc(operand(256, 256, false, bf16), operand(256, 256, false, bf16),
                          memory::desc({256, 256}, memory::data_type::f32, memory::dims{256, 1}));
  try {
    return dnnl::matmul::primitive_desc(desc, engine()).impl_info_str();
  } catch (const dnnl::error&) {
    return "unavailable";
  }
}

bool onednn_bf16_gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
                      float beta, bool allow_reference) {
  if (a.dtype() != DType::BF16 || b.dtype() != DType::BF16 ||
      (c.dtype() != DType::BF16 && c.dtype() != DType::F32))
    return false;
  const int64_t m = ta ? a.cols() : a.rows(), k = ta ? a.rows() : a.cols();
  const int64_t n = tb ? b.rows() : b.cols();
  GLMRT_CHECK((tb ? b.cols() : b.rows()) == k && c.rows() == m && c.cols() == n,
              "onednn_bf16_gemm: ", a.str(), " · ", b.str(), " -> ", c.str());
  if (m == 0 || n == 0 || k == 0) return false;
  static std::mutex mu;
  static std::map<Key, Entry> cache;  // primitives are immutable and reusable across threads
  const Key key{m, n, k, ta, tb, c.dtype() == DType::F32, alpha, beta};
  Entry* e;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it == cache.end()) it = cache.emplace(key, make_entry(key)).first;
    e = &it->second;
  }
  if (!e->available || (!e->optimised && !allow_reference)) return false;
  const auto bf16 = memory::data_type::bf16;
  memory A(operand(m, k, ta, bf16), engine(), a.data());
  memory B(operand(k, n, tb, bf16), engine(), b.data());
  memory C(memory::desc({m, n}, key.c_f32 ? memory::data_type::f32 : bf16, memory::dims{n, 1}),
           engine(), c.data());
  dnnl::stream s(engine());
  e->prim.execute(s, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}});
  s.wait();
  return true;
}

}  // namespace glmrt::cpu
