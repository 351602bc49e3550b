#include "kernels/cpu/low_precision.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/onednn_gemm.h"
#include "kernels/cpu/small_gemm.h"
#include "kernels/ops.h"

namespace glmrt {

bool any_low_precision(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t && t->defined() && (t->dtype() == DType::F16 || t->dtype() == DType::BF16)) return true;
  return false;
}

namespace cpu_low_precision {

namespace {
// An F32 view of a tensor for one call: 16-bit tensors are converted in (when read) and out
// (when written); F32/F64 tensors are used directly.
class F32 {
 public:
  F32(const Tensor* t, bool read, bool write) : orig_(const_cast<Tensor*>(t)), write_(write) {
    if (!t || !t->defined()) return;
    if (t->dtype() == DType::F16 || t->dtype() == DType::BF16) {
      work_ = read ? t->to(DType::F32) : Tensor::empty(t->shape(), DType::F32);
      converted_ = true;
    } else {
      work_ = *t;
    }
  }
  F32(const F32&) = delete;
  ~F32() = default;
  Tensor& operator*() { return work_; }
  Tensor* ptr() { return orig_ && orig_->defined() ? &work_ : nullptr; }
  // Rounds the F32 result back into the 16-bit tensor.
  void commit() {
    if (converted_ && write_) convert_host(DType::F32, work_.data(), orig_->dtype(), orig_->data(), work_.numel());
  }

 private:
  Tensor* orig_;
  Tensor work_;
  bool write_, converted_ = false;
};
// dbias += Σ_rows dy (dbias F32 or 16-bit).
void add_column_sums(const Tensor& dy, Tensor& dbias) {
  F32 DY(&dy, true, false), DB(&dbias, true, true);
  const int64_t n = dy.rows(), m = dy.cols();
  const float* p = (*DY).data_as<float>();
  float* b = (*DB).data_as<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) b[j] += p[i * m + j];
  DB.commit();
}
}  // namespace

void gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha, float beta) {
  if (cpu::onednn_bf16_gemm(a, ta, b, tb, c, alpha, beta)) return;  // AMX / AVX512-BF16
  F32 A(&a, true, false), B(&b, true, false), C(&c, beta != 0.0f, true);
  cpu::gemm(*A, ta, *B, tb, *C, alpha, beta);
  C.commit();
}

constexpr int64_t kBlockedMaxRows = 256;  // above: one F32 copy of w per call pays off
constexpr int64_t kWidenRows = 512;

// A prompt's prefill (33..256 rows) on 16-bit weights: blocks of kWidenRows weight rows are
// widened to F32 into a buffer (4 MiB at k = 2048: in the last-level cache) and multiplied by the
// BLAS sgemm with the F32 copy of x, so every weight is read from memory once and the product
// runs near the sgemm rate. Each sgemm call packs all of x again: with blocks of 128 rows that
// packing cost a 129-token prompt of the 1b benchmark model ~20% (2.66 s against 2.1 s at 512).
// (Chunks of 32 rows through the small-row kernel reached ~31% of that rate on a 129-token prompt,
// reading the weights once per chunk; widening the whole matrix per call costs a pass over twice
// its bytes and the allocation.) fp32 arithmetic, bias added in fp32, y rounded once at the end.
bool widened_block_linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  const DType dt = w.dtype();
  if ((dt != DType::BF16 && dt != DType::F16) || x.dtype() != dt || y.dtype() != dt || w.ndim() != 2)
    return false;
  const int64_t n = x.rows(), k = x.cols(), m = w.dim(0);
  if (n <= cpu::small_gemm_max_rows || n > kBlockedMaxRows || k < 1 || k != w.dim(1) ||
      y.rows() != n || y.cols() != m)
    return false;
  const bool has_bias = bias && bias->defined();
  if (has_bias && bias->numel() != m) return false;  // the general path names the problem
  const Tensor x32 = x.to(DType::F32);
  Tensor y32 = Tensor::empty({n, m}, DType::F32);
  std::vector<float> b32(has_bias ? static_cast<size_t>(m) : 0);
  if (has_bias) convert_host(bias->dtype(), bias->data(), DType::F32, b32.data(), m);
  Tensor block = Tensor::empty({std::min(kWidenRows, m), k}, DType::F32);
  const char* wp = static_cast<const char*>(w.data());
  const size_t row_bytes = static_cast<size_t>(k) * dtype_size(dt);
  for (int64_t j0 = 0; j0 < m; j0 += kWidenRows) {
    const int64_t mb = std::min(kWidenRows, m - j0);
    float* wb = block.data_as<float>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < mb; ++r)
      convert_host(dt, wp + static_cast<size_t>(j0 + r) * row_bytes, DType::F32, wb + r * k, k);
    float* yb = y32.data_as<float>() + j0;
    if (has_bias)
      for (int64_t i = 0; i < n; ++i) std::copy(b32.begin() + j0, b32.begin() + j0 + mb, yb + i * m);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(mb),
                static_cast<int>(k), 1.0f, x32.data_as<float>(), static_cast<int>(k), wb,
                static_cast<int>(k), has_bias ? 1.0f : 0.0f, yb, static_cast<int>(m));
  }
  convert_host(DType::F32, y32.data(), dt, y.data(), n * m);
  return true;
}

void linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  // A few rows (decoding): 16-bit weights streamed once and widened in registers.
  if (cpu::small_linear_forward(x, w, bias, y)) return;
  if (x.dtype() == DType::BF16 && w.dtype() == DType::BF16 && y.dtype() == DType::BF16) {
    if (bias && bias->defined()) {  // y = bias broadcast, then y += x·wᵀ
      for (int64_t i = 0; i < y.rows(); ++i) y.slice_rows(i, i + 1).copy_from(bias->view({1, y.cols()}));
      if (cpu::onednn_bf16_gemm(x, false, w, true, y, 1.0f, 1.0f)) return;
    } else if (cpu::onednn_bf16_gemm(x, false, w, true, y, 1.0f, 0.0f)) {
      return;
    }
  }
  if (widened_block_linear(x, w, bias, y)) return;
  F32 X(&x, true, false), W(&w, true, false), B(bias, true, false), Y(&y, false, true);
  cpu::linear_forward(*X, *W, B.ptr(), *Y);
  Y.commit();
}

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                       Tensor& y, Tensor* mean, Tensor* rstd) {
  F32 X(&x, true, false), W(&weight, true, false), B(&bias, true, false), Y(&y, false, true);
  cpu::layernorm_forward(*X, *W, *B, eps, *Y, mean, rstd);
  Y.commit();
}

void geglu_forward(const Tensor& u, Tensor& out) {
  F32 U(&u, true, false), O(&out, false, true);
  cpu::geglu_forward(*U, *O);
  O.commit();
}

void rope_forward(Tensor& qkv, const Tensor& position_ids, const Tensor& cos, const Tensor& sin,
                  int64_t num_heads, int64_t head_dim) {
  F32 Q(&qkv, true, true);
  cpu::rope_forward(*Q, position_ids, cos, sin, num_heads, head_dim);
  Q.commit();
}

// Reads and writes 16-bit caches natively (converting the cache per call would cost more than
// the attention itself).
void attention_cached_forward(const Tensor& qkv, const Tensor& token_index, const Tensor& table,
                              int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                              Tensor& k_cache, Tensor& v_cache, Tensor& context) {
  cpu::attention_cached_forward(qkv, token_index, table, num_heads, head_dim, query_scale_coeff,
                                k_cache, v_cache, context);
}

void attention_forward(const Tensor& qkv, const Tensor& mask_spans, int64_t batch,
                       int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                       const DropoutSpec& dropout, Tensor& context, Tensor* lse) {
  F32 Q(&qkv, true, false), C(&context, false, true);
  cpu::attention_forward(*Q, mask_spans, batch, num_heads, head_dim, query_scale_coeff, dropout,
                         *C, lse);
  C.commit();
}

void embedding_forward(const Tensor& ids, const Tensor& table, int64_t vocab_start, Tensor& out) {
  if (table.dtype() == out.dtype() && ids.dtype() == DType::I32) {
    // A lookup is a copy of rows: done on the 16-bit bits, never converting the whole table
    // (decoding looks up one row per token in a table of the vocabulary's size).
    const int64_t n = ids.numel(), h = table.cols(), rows = table.rows();
    GLMRT_CHECK(out.rows() == n && out.cols() == h, "embedding_forward: output ", out.str(),
                " for ", n, " ids and table ", table.str());
    const size_t row_bytes = static_cast<size_t>(h) * dtype_size(table.dtype());
    const int32_t* pid = ids.data_as<int32_t>();
    const char* src = static_cast<const char*>(table.data());
    char* dst = static_cast<char*>(out.data());
    for (int64_t t = 0; t < n; ++t) {
      const int64_t r = static_cast<int64_t>(pid[t]) - vocab_start;
      if (r >= 0 && r < rows) std::memcpy(dst + t * row_bytes, src + r * row_bytes, row_bytes);
      else std::memset(dst + t * row_bytes, 0, row_bytes);
    }
    return;
  }
  F32 T(&table, true, false), O(&out, false, true);
  cpu::embedding_forward(ids, *T, vocab_start, *O);
  O.commit();
}

void scale_add(float alpha, const Tensor& a, const Tensor& b, Tensor& out) {
  F32 A(&a, true, false), B(&b, true, false), O(&out, false, true);
  cpu::scale_add(alpha, *A, *B, *O);
  O.commit();
}

void convert(const Tensor& src, Tensor& dst) { cpu::convert(src, dst); }

void scale_inplace(Tensor& x, float s) {
  F32 X(&x, true, true);
  cpu::scale_inplace(*X, s);
  X.commit();
}

void dropout_apply(Tensor& x, const DropoutSpec& spec) {
  F32 X(&x, true, true);
  cpu::dropout_apply(*X, spec);
  X.commit();
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw,
                     Tensor* dbias) {
  if (x.dtype() == DType::BF16 && w.dtype() == DType::BF16 && dy.dtype() == DType::BF16 &&
      (!dx || cpu::onednn_bf16_gemm(dy, false, w, false, *dx, 1.0f, 0.0f)) &&
      (!dw || cpu::onednn_bf16_gemm(dy, true, x, false, *dw, 1.0f, 1.0f))) {
    if (dbias) add_column_sums(dy, *dbias);
    return;
  }
  F32 X(&x, true, false), W(&w, true, false), DY(&dy, true, false), DX(dx, false, true),
      DW(dw, true, true), DB(dbias, true, true);
  cpu::linear_backward(*X, *W, *DY, DX.ptr(), DW.ptr(), DB.ptr());
  DX.commit();
  DW.commit();
  DB.commit();
}

void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor* dweight,
                        Tensor* dbias) {
  F32 X(&x, true, false), W(&weight, true, false), DY(&dy, true, false), DX(&dx, false, true),
      DW(dweight, true, true), DB(dbias, true, true);
  cpu::layernorm_backward(*X, *W, mean, rstd, *DY, *DX, DW.ptr(), DB.ptr());
  DX.commit();
  DW.commit();
  DB.commit();
}

void geglu_backward(const Tensor& u, const Tensor& dout, Tensor& du) {
  F32 U(&u, true, false), D(&dout, true, false), DU(&du, false, true);
  cpu::geglu_backward(*U, *D, *DU);
  DU.commit();
}

void rope_backward(Tensor& dqkv, const Tensor& position_ids, const Tensor& cos, const Tensor& sin,
                   int64_t num_heads, int64_t head_dim) {
  F32 D(&dqkv, true, true);
  cpu::rope_backward(*D, position_ids, cos, sin, num_heads, head_dim);
  D.commit();
}

void attention_backward(const Tensor& qkv, const Tensor& mask_spans, int64_t batch,
                        int64_t num_heads, int64_t head_dim, float query_scale_coeff,
                        const DropoutSpec& dropout, const Tensor& context, const Tensor& lse,
                        const Tensor& dcontext, Tensor& dqkv) {
  F32 Q(&qkv, true, false), C(&context, true, false), DC(&dcontext, true, false),
      DQ(&dqkv, false, true);
  cpu::attention_backward(*Q, mask_spans, batch, num_heads, head_dim, query_scale_coeff, dropout,
                          *C, lse, *DC, *DQ);
  DQ.commit();
}

void embedding_backward(const Tensor& ids, const Tensor& dout, int64_t vocab_start,
                        Tensor& dtable) {
  F32 D(&dout, true, false), T(&dtable, true, true);
  cpu::embedding_backward(ids, *D, vocab_start, *T);
  T.commit();
}

void cross_entropy_max(const Tensor& logits, Tensor& row_max) {
  F32 L(&logits, true, false);
  cpu::cross_entropy_max(*L, row_max);
}

void cross_entropy_sums(const Tensor& logits, const Tensor& targets, int64_t vocab_start,
                        const Tensor& row_max, Tensor& sum_exp, Tensor& target_logit) {
  F32 L(&logits, true, false);
  cpu::cross_entropy_sums(*L, targets, vocab_start, row_max, sum_exp, target_logit);
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t vocab_start,
                            const Tensor& row_max, const Tensor& sum_exp, const Tensor& dloss,
                            Tensor& dlogits) {
  F32 L(&logits, true, false), D(&dlogits, false, true);
  cpu::cross_entropy_backward(*L, targets, vocab_start, row_max, sum_exp, dloss, *D);
  D.commit();
}

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step, float grad_scale) {
  cpu::adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale);
}

double sum_squares(const Tensor& x) {
  F32 X(&x, true, false);
  return cpu::sum_squares(*X);
}

}  // namespace cpu_low_precision
}  // namespace glmrt
