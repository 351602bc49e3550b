#include "kernels/cpu/low_precision.h"

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

constexpr int64_t kChunkedMaxRows = 256;

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
  // A prompt's prefill (up to a few hundred rows) on 16-bit weights: chunks of rows through the
  // same kernel beat widening the whole weight matrix to an F32 copy for BLAS on every call.
  if (x.dtype() == w.dtype() && y.dtype() == w.dtype() && x.rows() <= kChunkedMaxRows) {
    bool done = true;
    for (int64_t r = 0; done && r < x.rows(); r += cpu::small_gemm_max_rows) {
      const int64_t e = std::min(x.rows(), r + cpu::small_gemm_max_rows);
      Tensor ys = y.slice_rows(r, e);
      done = cpu::small_linear_forward(x.slice_rows(r, e), w, bias, ys);
    }
    if (done) return;
  }
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
