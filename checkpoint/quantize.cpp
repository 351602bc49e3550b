#include "checkpoint/quantize.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/error.h"
#include "kernels/half.h"

namespace glmrt {

namespace {
float element(const Tensor& w, int64_t i) {
  switch (w.dtype()) {
    case DType::F32:
      return w.data_as<float>()[i];
    case DType::F16:
      return f16_to_float(static_cast<const f16*>(w.data())[i]);
    case DType::BF16:
      return bf16_to_float(static_cast<const bf16*>(w.data())[i]);
    default:
      return 0.0f;  // refused before
  }
}
}  // namespace

QuantizedTensor quantize_weight(const Tensor& w, int bits, const std::string& name) {
  if (bits != 4 && bits != 8)
    throw InputError("quantization of " + name + ": bit width must be 4 or 8, got " + std::to_string(bits));
  if (!w.defined() || w.ndim() != 2 ||
      (w.dtype() != DType::F32 && w.dtype() != DType::F16 && w.dtype() != DType::BF16))
    throw InputError("quantization of " + name + ": expected a 2-D F32, F16 or BF16 weight, got " +
                     (w.defined() ? w.str() : std::string("nothing")));
  GLMRT_CHECK(w.device().is_cpu(), "quantize_weight: ", name, " must be a host tensor");
  const int64_t rows = w.dim(0), cols = w.dim(1);
  if (bits == 4 && cols % 2 != 0)
    throw InputError("quantization of " + name + " to 4 bits: " + std::to_string(cols) +
                     " columns (this rank's shard " + w.str() +
                     ") cannot be packed two per byte; use 8 bits or a tensor-parallel degree that "
                     "leaves an even column count");
  const float qmax = bits == 8 ? 127.0f : 7.0f;
  const bool f16_quotient = w.dtype() == DType::F16;
  QuantizedTensor q;
  q.bits = bits;
  q.values = Tensor::empty({rows, bits == 8 ? cols : cols / 2}, DType::I8);
  q.scale = Tensor::empty({rows}, DType::F16);
  int8_t* out = q.values.data_as<int8_t>();
  f16* scales = static_cast<f16*>(q.scale.data());
  // Rows are independent: quantizing a 130B model's shards runs on every core (the result does
  // not depend on the thread count). First each row's absmax; a non-finite value is reported
  // for the first row holding one, after the loop (no exception crosses an OpenMP region).
  std::vector<float> amax(static_cast<size_t>(rows), 0.0f);
  int64_t bad_row = rows;
  const bool parallel = rows * cols >= (int64_t{1} << 16);
#pragma omp parallel for schedule(static) reduction(min : bad_row) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    float m = 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = element(w, r * cols + c);
      if (!std::isfinite(v)) {
        bad_row = std::min(bad_row, r);
        break;
      }
      m = std::max(m, std::fabs(v));
    }
    amax[static_cast<size_t>(r)] = m;
  }
  if (bad_row < rows) {
    for (int64_t c = 0; c < cols; ++c) {
      const float v = element(w, bad_row * cols + c);
      if (!std::isfinite(v))
        throw InputError("quantization of " + name + ": row " + std::to_string(bad_row) + ", column " +
                         std::to_string(c) + " holds " + std::to_string(v) + " (not finite)");
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float a = amax[static_cast<size_t>(r)];
    scales[r] = float_to_f16(a / qmax);
    if (!std::isfinite(f16_to_float(scales[r])))
      throw InputError("quantization of " + name + ": row " + std::to_string(r) + "'s scale " +
                       std::to_string(a / qmax) + " overflows fp16");
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const float sf = f16_to_float(scales[r]);
    auto value = [&](int64_t c) -> int8_t {
      if (sf == 0.0f) return 0;
      float v = element(w, r * cols + c) / sf;
      if (f16_quotient) v = round_to_f16(v);
      v = std::nearbyint(v);  // the default rounding mode: to nearest, ties to even
      return static_cast<int8_t>(std::min(qmax, std::max(-qmax, v)));
    };
    if (bits == 8) {
      for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = value(c);
    } else {
      int8_t* o = out + r * (cols / 2);
      for (int64_t c = 0; c < cols; c += 2) {
        const auto hi = static_cast<uint8_t>(value(c));
        const auto lo = static_cast<uint8_t>(value(c + 1));
        o[c / 2] = static_cast<int8_t>(static_cast<uint8_t>((hi << 4) | (lo & 0x0F)));
      }
    }
  }
  return q;
}

Tensor dequantize_weight(const QuantizedTensor& q) {
  GLMRT_CHECK(q.bits == 4 || q.bits == 8, "dequantize_weight: bits ", q.bits);
  const Tensor values = q.values.device().is_cpu() ? q.values : q.values.to(Device::cpu());
  const Tensor scale = q.scale.device().is_cpu() ? q.scale : q.scale.to(Device::cpu());
  const int64_t rows = values.dim(0), cols = q.bits == 8 ? values.dim(1) : 2 * values.dim(1);
  Tensor w = Tensor::empty({rows, cols}, DType::F32);
  const int8_t* v = values.data_as<int8_t>();
  const f16* s = static_cast<const f16*>(scale.data());
  float* o = w.data_as<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float sf = f16_to_float(s[r]);
    for (int64_t c = 0; c < cols; ++c) {
      int value;
      if (q.bits == 8) {
        value = v[r * cols + c];
      } else {
        const int8_t b = v[r * (cols / 2) + c / 2];
        value = c % 2 == 0 ? (b >> 4) : static_cast<int8_t>(static_cast<uint8_t>(b << 4)) >> 4;
      }
      o[r * cols + c] = static_cast<float>(value) * sf;
    }
  }
  return w;
}

void check_quantizable(const GlmConfig& config, int tensor, int bits, const std::string& flag) {
  if (bits != 4 && bits != 8) throw InputError(flag + " must be 4 or 8, got " + std::to_string(bits));
  if (bits != 4) return;
  for (const ParamSpec& s : glm_param_specs(config, ModelShard{0, tensor, 0, -1, true, true}))
    if (is_linear_weight(s.name) && s.local_shape[1] % 2 != 0)
      throw InputError(flag + " 4 on " + std::to_string(tensor) + " tensor-parallel ranks: " + s.name + " has " +
                       std::to_string(s.local_shape[1]) +
                       " columns per rank, which cannot be packed two per byte; use 8 bits or another "
                       "tensor-parallel degree");
}

QuantizedTensor shard_quantized(const std::function<QuantizedTensor(int)>& piece, int saved_tp,
                                int bits, const ParamSpec& spec, int tp_rank, int tp_size) {
  GLMRT_CHECK(bits == 4 || bits == 8, "shard_quantized: bits ", bits);
  GLMRT_CHECK(spec.rule == ShardRule::Rows || spec.rule == ShardRule::GluRows || spec.rule == ShardRule::Columns,
              "shard_quantized: ", spec.name, " is not a linear weight");
  const Shape saved = local_shape(spec.shape, spec.rule, saved_tp);
  const Shape saved_values = {saved[0], bits == 4 ? saved[1] / 2 : saved[1]};
  auto checked = [&](int k) {
    QuantizedTensor q = piece(k);
    if (q.values.dtype() != DType::I8 || q.values.shape() != saved_values)
      throw CheckpointError(spec.name + " (saved shard " + std::to_string(k) + " of " +
                            std::to_string(saved_tp) + "): " + std::to_string(bits) +
                            "-bit values must be I8 " + shape_str(saved_values) + ", found " + q.values.str());
    if (q.scale.dtype() != DType::F16 || q.scale.shape() != Shape{saved[0]})
      throw CheckpointError(spec.name + "_scale (saved shard " + std::to_string(k) + " of " +
                            std::to_string(saved_tp) + "): must be F16 [" + std::to_string(saved[0]) +
                            "], found " + q.scale.str());
    q.bits = bits;
    return q;
  };
  QuantizedTensor out;
  out.bits = bits;
  if (spec.rule != ShardRule::Columns) {
    std::vector<Tensor> values, scales;
    for (int k = 0; k < saved_tp; ++k) {
      QuantizedTensor q = checked(k);
      values.push_back(std::move(q.values));
      scales.push_back(std::move(q.scale));
    }
    out.values = shard_tensor(unshard_tensor(values, spec.rule), spec.rule, tp_rank, tp_size);
    out.scale = shard_tensor(unshard_tensor(scales, spec.rule), spec.rule, tp_rank, tp_size);
    return out;
  }
  if (tp_size % saved_tp != 0)
    throw CheckpointError(spec.name + " was quantized for tensor-parallel degree " + std::to_string(saved_tp) +
                          " (its scales belong to each shard's columns), so it loads only with a "
                          "tensor-parallel degree that is a multiple of " + std::to_string(saved_tp) +
                          ", not " + std::to_string(tp_size) + "; or quantize the full-precision "
                          "weights again with glmrt quantize --tensor " + std::to_string(tp_size));
  const int split = tp_size / saved_tp;
  const int64_t cols = spec.shape[1] / tp_size;
  if (bits == 4 && cols % 2 != 0)
    throw InputError(spec.name + ": " + std::to_string(cols) + " columns per rank at tensor-parallel degree " +
                     std::to_string(tp_size) + " would split the 4-bit pairs packed in one byte");
  QuantizedTensor q = checked(tp_rank / split);
  out.values = shard_tensor(q.values, ShardRule::Columns, tp_rank % split, split);
  out.scale = std::move(q.scale);
  return out;
}

GlmParams allocate_quantized_params(const GlmConfig& config, DType dtype, Device device,
                                    const ModelShard& shard, int bits) {
  return GlmParams::allocate_quantized(
      config, dtype, device, shard, bits, [bits, device](const Tensor& w, const std::string& name) {
        const Tensor host = w.device().is_cpu() ? w : w.to(Device::cpu());
        QuantizedTensor q = quantize_weight(host, bits, name);
        if (!device.is_cpu()) {
          q.values = q.values.to(device);
          q.scale = q.scale.to(device);
        }
        return std::make_pair(q.values, q.scale);
      });
}

}  // namespace glmrt
