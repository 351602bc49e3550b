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
  std::vector<int8_t> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = element(w, r * cols + c);
      if (!std::isfinite(v))
        throw InputError("quantization of " + name + ": row " + std::to_string(r) + ", column " +
                         std::to_string(c) + " holds " + std::to_string(v) + " (not finite)");
      amax = std::max(amax, std::fabs(v));
    }
    const f16 s = float_to_f16(amax / qmax);
    const float sf = f16_to_float(s);
    if (!std::isfinite(sf))
      throw InputError("quantization of " + name + ": row " + std::to_string(r) + "'s scale " +
                       std::to_string(amax / qmax) + " overflows fp16");
    scales[r] = s;
    for (int64_t c = 0; c < cols; ++c) {
      float v = 0.0f;
      if (sf != 0.0f) {
        v = element(w, r * cols + c) / sf;
        if (f16_quotient) v = round_to_f16(v);
        v = std::nearbyint(v);  // the default rounding mode: to nearest, ties to even
        v = std::min(qmax, std::max(-qmax, v));
      }
      row[static_cast<size_t>(c)] = static_cast<int8_t>(v);
    }
    if (bits == 8) {
      std::copy(row.begin(), row.end(), out + r * cols);
    } else {
      int8_t* o = out + r * (cols / 2);
      for (int64_t c = 0; c < cols; c += 2) {
        const auto hi = static_cast<uint8_t>(row[static_cast<size_t>(c)]);
        const auto lo = static_cast<uint8_t>(row[static_cast<size_t>(c + 1)]);
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
