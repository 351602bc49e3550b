#include "model/glm_layer.h"

#include "kernels/ops.h"

namespace glmrt {

void LayerActivations::allocate(const GlmConfig& c, int64_t n, DType dtype, Device device) {
  if (ln1_out.defined() && ln1_out.rows() == n && ln1_out.dtype() == dtype &&
      ln1_out.device() == device)
    return;
  const int64_t h = c.hidden_size, f = c.ffn_hidden_size, heads = c.num_attention_heads;
  const DType stat = dtype == DType::F64 ? DType::F64 : DType::F32;
  ln1_out = Tensor::empty({n, h}, dtype, device);
  ln1_mean = Tensor::empty({n}, stat, device);
  ln1_rstd = Tensor::empty({n}, stat, device);
  qkv = Tensor::empty({n, 3 * h}, dtype, device);
  context = Tensor::empty({n, h}, dtype, device);
  attn_lse = Tensor::empty({n * heads}, stat, device);
  attn_residual = Tensor::empty({n, h}, dtype, device);
  ln2_out = Tensor::empty({n, h}, dtype, device);
  ln2_mean = Tensor::empty({n}, stat, device);
  ln2_rstd = Tensor::empty({n}, stat, device);
  h4h = Tensor::empty({n, 2 * f}, dtype, device);
  geglu = Tensor::empty({n, f}, dtype, device);
}

void glm_layer_forward(const GlmConfig& c, const LayerParams& p, const RopeTables& rope,
                       const Batch& batch, int64_t layer_id, LayerActivations& a, Tensor& x) {
  const float alpha = static_cast<float>(c.alpha());
  const float eps = static_cast<float>(c.layernorm_epsilon);
  const int64_t heads = c.num_attention_heads, d = c.head_dim();

  layernorm_forward(x, p.input_layernorm_weight, p.input_layernorm_bias, eps, a.ln1_out,
                    &a.ln1_mean, &a.ln1_rstd);
  linear_forward(a.ln1_out, p.qkv_weight, &p.qkv_bias, a.qkv);
  rope_forward(a.qkv, batch.position_ids, rope.cos, rope.sin, heads, d);
  attention_forward(a.qkv, batch.mask_spans, batch.batch, heads, d,
                    static_cast<float>(layer_id + 1), DropoutSpec{}, a.context, &a.attn_lse);
  linear_forward(a.context, p.dense_weight, &p.dense_bias, a.attn_residual);
  scale_add(alpha, a.ln1_out, a.attn_residual, a.attn_residual);  // x' = α·a + Attn(a)

  layernorm_forward(a.attn_residual, p.post_attention_layernorm_weight,
                    p.post_attention_layernorm_bias, eps, a.ln2_out, &a.ln2_mean, &a.ln2_rstd);
  linear_forward(a.ln2_out, p.h_to_4h_weight, &p.h_to_4h_bias, a.h4h);
  geglu_forward(a.h4h, a.geglu);
  linear_forward(a.geglu, p.fourh_to_h_weight, &p.fourh_to_h_bias, x);
  scale_add(alpha, a.ln2_out, x, x);  // out = α·m + FFN(m)
}

}  // namespace glmrt
