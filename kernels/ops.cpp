// Dispatch of every op to the backend that holds its tensors.
#include "kernels/ops.h"

#include "kernels/cpu/low_precision.h"

#ifdef GLMRT_WITH_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace glmrt {

bool cuda_built() {
#ifdef GLMRT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef GLMRT_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

void cuda_set_device(int index) {
#ifdef GLMRT_WITH_CUDA
  cuda::set_device(index);
#else
  (void)index;
#endif
}

void cuda_profiler_range(bool start) {
#ifdef GLMRT_WITH_CUDA
  cuda::profiler_range(start);
#else
  (void)start;
#endif
}

namespace {
// The device every tensor of a call lives on; throws when they disagree.
Device common_device(std::initializer_list<const Tensor*> tensors, const char* op) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t || !t->defined()) continue;
    if (!first) first = t;
    else GLMRT_CHECK(t->device() == first->device(), op, ": tensors on ", first->device().str(),
                     " and ", t->device().str());
  }
  GLMRT_CHECK(first != nullptr, op, ": no tensor given");
  return first->device();
}
}  // namespace

// CPU tensors in F16/BF16 go through cpu_low_precision (fp32 kernels, 16-bit rounding).
#define GLMRT_CPU_CALL(op, tensors, ...)                                                 \
  if (common_device(tensors, #op).is_cpu())                                              \
    return any_low_precision(tensors) ? cpu_low_precision::op(__VA_ARGS__) : cpu::op(__VA_ARGS__)
#ifdef GLMRT_WITH_CUDA
#define GLMRT_DISPATCH(op, tensors, ...)      \
  do {                                        \
    GLMRT_CPU_CALL(op, tensors, __VA_ARGS__); \
    return cuda::op(__VA_ARGS__);             \
  } while (0)
#else
#define GLMRT_DISPATCH(op, tensors, ...)                                                  \
  do {                                                                                    \
    GLMRT_CPU_CALL(op, tensors, __VA_ARGS__);                                             \
    throw Error(#op ": a CUDA tensor was given to a glmrt built without the CUDA backend"); \
  } while (0)
#endif
#define GLMRT_TENSORS(...) (std::initializer_list<const Tensor*>{__VA_ARGS__})

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
          float beta) {
  GLMRT_DISPATCH(gemm, GLMRT_TENSORS(&a, &b, &c), a, trans_a, b, trans_b, c, alpha, beta);
}

void linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  GLMRT_DISPATCH(linear_forward, GLMRT_TENSORS(&x, &w, bias, &y), x, w, bias, y);
}

// The CPU kernel reads 16-bit x, y and bias itself (no fp32 copies through cpu_low_precision).
void quantized_linear_forward(const Tensor& x, const Tensor& q, const Tensor& scale, int bits,
                              const Tensor* bias, Tensor& y) {
  if (common_device(GLMRT_TENSORS(&x, &q, &scale, bias, &y), "quantized_linear_forward").is_cpu())
    return cpu::quantized_linear_forward(x, q, scale, bits, bias, y);
#ifdef GLMRT_WITH_CUDA
  return cuda::quantized_linear_forward(x, q, scale, bits, bias, y);
#else
  throw Error("quantized_linear_forward: a CUDA tensor was given to a glmrt built without the CUDA backend");
#endif
}

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                       Tensor& y, Tensor* mean, Tensor* rstd) {
  GLMRT_DISPATCH(layernorm_forward, GLMRT_TENSORS(&x, &weight, &bias, &y, mean, rstd), x, weight,
                 bias, eps, y, mean, rstd);
}

void geglu_forward(const Tensor& u, Tensor& out) {
  GLMRT_DISPATCH(geglu_forward, GLMRT_TENSORS(&u, &out), u, out);
}

void rope_forward(Tensor& qkv, const Tensor& position_ids, const Tensor& cos, const Tensor& sin,
                  int64_t num_heads, int64_t head_dim) {
  GLMRT_DISPATCH(rope_forward, GLMRT_TENSORS(&qkv, &position_ids, &cos, &sin), qkv, position_ids,
                 cos, sin, num_heads, head_dim);
}

void attention_forward(const Tensor& qkv, const Tensor& mask_spans, int64_t batch,
                       int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                       const DropoutSpec& dropout, Tensor& context, Tensor* lse) {
  GLMRT_DISPATCH(attention_forward, GLMRT_TENSORS(&qkv, &mask_spans, &context, lse), qkv,
                 mask_spans, batch, num_heads, head_dim, query_scale_coeff, dropout, context, lse);
}

void attention_cached_forward(const Tensor& qkv, const Tensor& token_index, const Tensor& table,
                              int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                              Tensor& k_cache, Tensor& v_cache, Tensor& context) {
  GLMRT_DISPATCH(attention_cached_forward,
                 GLMRT_TENSORS(&qkv, &token_index, &table, &k_cache, &v_cache, &context), qkv,
                 token_index, table, num_heads, head_dim, query_scale_coeff, k_cache, v_cache,
                 context);
}

void embedding_forward(const Tensor& ids, const Tensor& table, int64_t vocab_start, Tensor& out) {
  GLMRT_DISPATCH(embedding_forward, GLMRT_TENSORS(&ids, &table, &out), ids, table, vocab_start,
                 out);
}

void scale_add(float alpha, const Tensor& a, const Tensor& b, Tensor& out) {
  GLMRT_DISPATCH(scale_add, GLMRT_TENSORS(&a, &b, &out), alpha, a, b, out);
}

void scale_inplace(Tensor& x, float s) { GLMRT_DISPATCH(scale_inplace, GLMRT_TENSORS(&x), x, s); }

void convert(const Tensor& src, Tensor& dst) {
  GLMRT_DISPATCH(convert, GLMRT_TENSORS(&src, &dst), src, dst);
}

void dropout_apply(Tensor& x, const DropoutSpec& spec) {
  GLMRT_DISPATCH(dropout_apply, GLMRT_TENSORS(&x), x, spec);
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw,
                     Tensor* dbias) {
  GLMRT_DISPATCH(linear_backward, GLMRT_TENSORS(&x, &w, &dy, dx, dw, dbias), x, w, dy, dx, dw,
                 dbias);
}

void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor* dweight,
                        Tensor* dbias) {
  GLMRT_DISPATCH(layernorm_backward, GLMRT_TENSORS(&x, &weight, &mean, &rstd, &dy, &dx, dweight, dbias),
                 x, weight, mean, rstd, dy, dx, dweight, dbias);
}

void geglu_backward(const Tensor& u, const Tensor& dout, Tensor& du) {
  GLMRT_DISPATCH(geglu_backward, GLMRT_TENSORS(&u, &dout, &du), u, dout, du);
}

void rope_backward(Tensor& dqkv, const Tensor& position_ids, const Tensor& cos, const Tensor& sin,
                   int64_t num_heads, int64_t head_dim) {
  GLMRT_DISPATCH(rope_backward, GLMRT_TENSORS(&dqkv, &position_ids, &cos, &sin), dqkv,
                 position_ids, cos, sin, num_heads, head_dim);
}

void attention_backward(const Tensor& qkv, const Tensor& mask_spans, int64_t batch,
                        int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                        const DropoutSpec& dropout, const Tensor& context, const Tensor& lse,
                        const Tensor& dcontext, Tensor& dqkv) {
  GLMRT_DISPATCH(attention_backward,
                 GLMRT_TENSORS(&qkv, &mask_spans, &context, &lse, &dcontext, &dqkv), qkv,
                 mask_spans, batch, num_heads, head_dim, query_scale_coeff, dropout, context, lse,
                 dcontext, dqkv);
}

void embedding_backward(const Tensor& ids, const Tensor& dout, int64_t vocab_start,
                        Tensor& dtable) {
  GLMRT_DISPATCH(embedding_backward, GLMRT_TENSORS(&ids, &dout, &dtable), ids, dout, vocab_start,
                 dtable);
}

void cross_entropy_max(const Tensor& logits, Tensor& row_max) {
  GLMRT_DISPATCH(cross_entropy_max, GLMRT_TENSORS(&logits, &row_max), logits, row_max);
}

void cross_entropy_sums(const Tensor& logits, const Tensor& targets, int64_t vocab_start,
                        const Tensor& row_max, Tensor& sum_exp, Tensor& target_logit) {
  GLMRT_DISPATCH(cross_entropy_sums, GLMRT_TENSORS(&logits, &targets, &row_max, &sum_exp, &target_logit),
                 logits, targets, vocab_start, row_max, sum_exp, target_logit);
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t vocab_start,
                            const Tensor& row_max, const Tensor& sum_exp, const Tensor& dloss,
                            Tensor& dlogits) {
  GLMRT_DISPATCH(cross_entropy_backward,
                 GLMRT_TENSORS(&logits, &targets, &row_max, &sum_exp, &dloss, &dlogits), logits,
                 targets, vocab_start, row_max, sum_exp, dloss, dlogits);
}

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step, float grad_scale) {
  GLMRT_DISPATCH(adamw_update, GLMRT_TENSORS(&param, &grad, &m, &v), param, grad, m, v, lr, beta1,
                 beta2, eps, weight_decay, step, grad_scale);
}

double sum_squares(const Tensor& x) { GLMRT_DISPATCH(sum_squares, GLMRT_TENSORS(&x), x); }

}  // namespace glmrt
