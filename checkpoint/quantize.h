// Weight-only quantization of the linear weights (GLM130B.md §6), as the released GLM-130B code
// does it at load time (`--quantization-bit-width 4|8`): the four linear weights of every layer
// (query_key_value, attention.dense, dense_h_to_4h, dense_4h_to_h), never the embedding, the
// LayerNorms or a bias; symmetric absmax with one fp16 scale per output row of the rank's own
// tensor-parallel shard, so quantization runs after sharding (the row-parallel layers' scales
// depend on the TP degree).
#pragma once

#include <functional>
#include <string>

#include "kernels/tensor.h"
#include "model/parameters.h"

namespace glmrt {

// A quantized 2-D weight [rows, cols]: values I8 [rows, cols] (bits 8) or [rows, cols / 2]
// (bits 4: column 2c in the high nibble, 2c + 1 in the low one, two's complement), scale F16
// [rows]; the weight is values · scale (kernels/op_signatures.inc: quantized_linear_forward).
struct QuantizedTensor {
  Tensor values, scale;
  int bits = 0;
};

// Quantizes a host 2-D weight (F32, F16 or BF16) row by row:
//   scale = fp16(max|W[r, :]| / qmax)          qmax = 127 (bits 8) or 7 (bits 4)
//   q     = round_half_even(W / scale), clamped to [-qmax, qmax]; 0 where the scale is 0
// in fp32 arithmetic (max|W| and W are exact in fp32). For F16 weights the quotient is rounded
// to fp16 before it is rounded to an integer: the released code divides fp16 tensors, whose
// quotient is fp16. The clamp is ours: the released `.to(torch.int8)` would wrap ±128 to ∓128,
// which fp16 rounding of the scale cannot produce (|W / scale| ≤ qmax · (1 + 2^-11) < qmax + ½)
// except on subnormal scales. `name` is used in errors: bits not 4 or 8, a non-2-D or
// non-floating tensor, an odd column count for bits 4, a non-finite weight or a scale that
// overflows fp16 (each names the tensor and the row).
QuantizedTensor quantize_weight(const Tensor& w, int bits, const std::string& name);

// This rank's shard (tp_rank of tp_size) of the quantized linear weight `spec`, from the shards
// a pre-quantized checkpoint saved at tensor-parallel degree saved_tp (piece(k): saved shard k,
// host tensors). Row-split weights (query_key_value, dense_h_to_4h) are re-split like their
// full-precision form, each scale travelling with its row. Column-split weights (attention.dense,
// dense_4h_to_h) hold one scale per row of each saved shard, so a rank's columns must lie within
// one saved shard: tp_size must be a multiple of saved_tp (CheckpointError naming the tensor and
// both degrees otherwise); the rank takes its columns' values and that shard's scales. Either way
// the rank's weight (values · scale) is exactly the saved model's: a pre-quantized checkpoint is
// the same model on every layout it loads into. Throws CheckpointError naming the tensor when a
// saved piece has the wrong dtype or shape, InputError when a 4-bit shard would split a byte.
// The result owns its data (never a view of a piece).
QuantizedTensor shard_quantized(const std::function<QuantizedTensor(int)>& piece, int saved_tp,
                                int bits, const ParamSpec& spec, int tp_rank, int tp_size);

// Checks before anything is read or written that every linear weight of `config` can be quantized
// to `bits` on `tensor` tensor-parallel ranks: bits 4 or 8 and, for 4 bits, an even column count
// per shard. Throws InputError naming `flag` (the command's bit-width flag) and the tensor.
void check_quantizable(const GlmConfig& config, int tensor, int bits, const std::string& flag);

// values · scale as a host F32 tensor [rows, cols] (exact: at most 18 significant bits).
Tensor dequantize_weight(const QuantizedTensor& q);

// GlmParams::allocate_quantized with quantize_weight: each of this rank's four linear weights of
// every layer is quantized on the host as the loader hands it over (GlmParams::assign) and its
// values and scales are moved to `device`. bits: 4 or 8. Loading throws InputError naming the
// tensor when one cannot be quantized (an odd column count of the local shard for bits 4, say).
GlmParams allocate_quantized_params(const GlmConfig& config, DType dtype, Device device,
                                    const ModelShard& shard, int bits);

}  // namespace glmrt
