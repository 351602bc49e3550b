#include "model/glm_layer.h"

#include "kernels/ops.h"

namespace glmrt {

DropoutSpec StepContext::hidden(int64_t layer, DropoutSite site, int64_t seq, int64_t width) const {
  DropoutSpec d;
  if (!training || hidden_dropout <= 0.0f) return d;
  d.p = hidden_dropout;
  d.key = seed;
  d.stream = dropout_stream(step, layer, site);
  d.offset = static_cast<uint64_t>(row_offset * seq * width);
  return d;
}

DropoutSpec StepContext::attention(int64_t layer, int64_t total_heads, int64_t head_offset) const {
  DropoutSpec d;
  if (!training || attention_dropout <= 0.0f) return d;
  d.p = attention_dropout;
  d.key = seed;
  d.stream = dropout_stream(step, layer, DropoutSite::Attention);
  d.row_offset = row_offset;
  d.total_heads = total_heads;
  d.head_offset = head_offset;
  return d;
}

void LayerActivations::allocate(const GlmConfig& c, int tp_size, int64_t n, DType dtype,
                                Device device) {
  const int64_t h = c.hidden_size, f = c.ffn_hidden_size / tp_size;
  const int64_t heads = c.num_attention_heads / tp_size, hl = heads * c.head_dim();
  if (ln1_out.defined() && ln1_out.rows() == n && ln1_out.dtype() == dtype &&
      ln1_out.device() == device && context.cols() == hl)
    return;
  const DType stat = dtype == DType::F64 ? DType::F64 : DType::F32;
  input = Tensor::empty({n, h}, dtype, device);
  ln1_out = Tensor::empty({n, h}, dtype, device);
  ln1_mean = Tensor::empty({n}, stat, device);
  ln1_rstd = Tensor::empty({n}, stat, device);
  qkv = Tensor::empty({n, 3 * hl}, dtype, device);
  context = Tensor::empty({n, hl}, dtype, device);
  attn_lse = Tensor::empty({n * heads}, stat, device);
  attn_residual = Tensor::empty({n, h}, dtype, device);
  ln2_out = Tensor::empty({n, h}, dtype, device);
  ln2_mean = Tensor::empty({n}, stat, device);
  ln2_rstd = Tensor::empty({n}, stat, device);
  h4h = Tensor::empty({n, 2 * f}, dtype, device);
  geglu = Tensor::empty({n, f}, dtype, device);
}

namespace {
// A linear layer on the parameters' weight: full precision, or quantized (LayerParams::weight_bits).
void layer_linear(const Tensor& x, const LayerParams& p, const Tensor& w, const Tensor& scale,
                  const Tensor* bias, Tensor& y) {
  if (p.weight_bits) quantized_linear_forward(x, w, scale, p.weight_bits, bias, y);
  else linear_forward(x, w, bias, y);
}
}  // namespace

void glm_layer_forward(const GlmConfig& c, const LayerParams& p, const RopeTables& rope,
                       const TensorParallel& tp, const Batch& batch, int64_t layer_id,
                       const StepContext& ctx, LayerActivations& a, Tensor& x,
                       const CachedAttention* cached) {
  const float alpha = static_cast<float>(c.alpha());
  const float eps = static_cast<float>(c.layernorm_epsilon);
  const int64_t heads = c.num_attention_heads / tp.size, d = c.head_dim(), h = c.hidden_size;
  // Row-parallel outputs are partial sums: the bias is added by one rank only, before the sum.
  const bool add_bias = tp.rank == 0;
  if (ctx.training) a.input.copy_from(x);

  layernorm_forward(x, p.input_layernorm_weight, p.input_layernorm_bias, eps, a.ln1_out,
                    &a.ln1_mean, &a.ln1_rstd);
  layer_linear(a.ln1_out, p, p.qkv_weight, p.qkv_weight_scale, &p.qkv_bias, a.qkv);
  rope_forward(a.qkv, batch.position_ids, rope.cos, rope.sin, heads, d);
  if (cached)
    attention_cached_forward(a.qkv, *cached->token_index, *cached->table, heads, d,
                             static_cast<float>(layer_id + 1), *cached->k_cache,
                             *cached->v_cache, a.context);
  else
    attention_forward(a.qkv, batch.mask_spans, batch.batch, heads, d,
                      static_cast<float>(layer_id + 1),
                      ctx.attention(layer_id, c.num_attention_heads, tp.rank * heads), a.context,
                      &a.attn_lse);
  layer_linear(a.context, p, p.dense_weight, p.dense_weight_scale, add_bias ? &p.dense_bias : nullptr,
               a.attn_residual);
  tp.all_reduce(a.attn_residual);  // row-parallel attention.dense
  dropout_apply(a.attn_residual, ctx.hidden(layer_id, DropoutSite::AttentionOutput, batch.seq, h));
  scale_add(alpha, a.ln1_out, a.attn_residual, a.attn_residual);  // x' = α·a + Attn(a)

  layernorm_forward(a.attn_residual, p.post_attention_layernorm_weight,
                    p.post_attention_layernorm_bias, eps, a.ln2_out, &a.ln2_mean, &a.ln2_rstd);
  layer_linear(a.ln2_out, p, p.h_to_4h_weight, p.h_to_4h_weight_scale, &p.h_to_4h_bias, a.h4h);
  geglu_forward(a.h4h, a.geglu);
  layer_linear(a.geglu, p, p.fourh_to_h_weight, p.fourh_to_h_weight_scale,
               add_bias ? &p.fourh_to_h_bias : nullptr, x);
  tp.all_reduce(x);  // row-parallel dense_4h_to_h
  dropout_apply(x, ctx.hidden(layer_id, DropoutSite::MlpOutput, batch.seq, h));
  scale_add(alpha, a.ln2_out, x, x);  // out = α·m + FFN(m)
}

void glm_layer_backward(const GlmConfig& c, const LayerParams& p, const RopeTables& rope,
                        const TensorParallel& tp, const Batch& batch, int64_t layer_id,
                        const StepContext& ctx, const LayerActivations& a, LayerActivations& s,
                        const Tensor& dout, Tensor& dx, LayerParams& g) {
  GLMRT_CHECK(p.weight_bits == 0, "glm_layer_backward: quantized weights (",
              p.weight_bits, " bits) are for inference only");
  const float alpha = static_cast<float>(c.alpha());
  const int64_t heads = c.num_attention_heads / tp.size, d = c.head_dim(), h = c.hidden_size;
  // Work buffers (same shapes as the activations they are gradients of).
  Tensor& d_ffn_out = s.input;   // [n, h]
  Tensor& dm = s.ln2_out;        // [n, h]
  Tensor& dg = s.geglu;          // [n, F]
  Tensor& du = s.h4h;            // [n, 2F]
  Tensor& dxp = s.attn_residual; // [n, h]: gradient of x'
  Tensor& da = s.ln1_out;        // [n, h]
  Tensor& dctx = s.context;      // [n, h]
  Tensor& dqkv = s.qkv;          // [n, 3h]

  // out = α·m + drop(g·W2ᵀ + b2)
  d_ffn_out.copy_from(dout);
  dropout_apply(d_ffn_out, ctx.hidden(layer_id, DropoutSite::MlpOutput, batch.seq, h));
  linear_backward(a.geglu, p.fourh_to_h_weight, d_ffn_out, &dg, &g.fourh_to_h_weight,
                  &g.fourh_to_h_bias);
  geglu_backward(a.h4h, dg, du);
  linear_backward(a.ln2_out, p.h_to_4h_weight, du, &dm, &g.h_to_4h_weight, &g.h_to_4h_bias);
  tp.all_reduce(dm);  // column-parallel dense_h_to_4h: sum the input gradient
  scale_add(alpha, dout, dm, dm);  // + α·dout through the residual
  // m = LN2(x')
  layernorm_backward(a.attn_residual, p.post_attention_layernorm_weight, a.ln2_mean, a.ln2_rstd,
                     dm, dxp, &g.post_attention_layernorm_weight, &g.post_attention_layernorm_bias);
  // x' = α·a + drop(ctx·Woᵀ + bo)
  Tensor& d_attn_out = d_ffn_out;  // reuse: [n, h]
  d_attn_out.copy_from(dxp);
  dropout_apply(d_attn_out, ctx.hidden(layer_id, DropoutSite::AttentionOutput, batch.seq, h));
  linear_backward(a.context, p.dense_weight, d_attn_out, &dctx, &g.dense_weight, &g.dense_bias);
  attention_backward(a.qkv, batch.mask_spans, batch.batch, heads, d,
                     static_cast<float>(layer_id + 1),
                     ctx.attention(layer_id, c.num_attention_heads, tp.rank * heads), a.context,
                     a.attn_lse, dctx, dqkv);
  rope_backward(dqkv, batch.position_ids, rope.cos, rope.sin, heads, d);
  linear_backward(a.ln1_out, p.qkv_weight, dqkv, &da, &g.qkv_weight, &g.qkv_bias);
  tp.all_reduce(da);  // column-parallel query_key_value: sum the input gradient
  scale_add(alpha, dxp, da, da);  // + α·dx' through the residual
  // a = LN1(x)
  layernorm_backward(a.input, p.input_layernorm_weight, a.ln1_mean, a.ln1_rstd, da, dx,
                     &g.input_layernorm_weight, &g.input_layernorm_bias);
}

}  // namespace glmrt
