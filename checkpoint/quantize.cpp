#include "checkpoint/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <vector>

#include "kernels/cpu/vec_math.h"
#include "kernels/error.h"
#include "kernels/half.h"

namespace glmrt {

namespace {

using cpu::widen;

// The scalar row loops (other CPUs and the tails of the vector ones).
// max |w[c]| over [c0, cols); *finite = false when that part holds a NaN or an infinity.
template <typename S>
float row_absmax_scalar(const S* w, int64_t c0, int64_t cols, bool* finite) {
  float m = 0.0f;
  for (int64_t c = c0; c < cols; ++c) {
    const float v = widen(w[c]);
    *finite = *finite && std::isfinite(v);
    m = std::max(m, std::fabs(v));
  }
  return m;
}
// q[c] = clamp(round_half_even(w[c] / sf), ±qmax) over [c0, cols), the quotient first rounded to
// fp16 when f16_quotient; sf > 0.
template <typename S>
void row_quantize_scalar(const S* w, int64_t c0, int64_t cols, float sf, float qmax, bool f16_quotient,
                         int8_t* q) {
  for (int64_t c = c0; c < cols; ++c) {
    float v = widen(w[c]) / sf;
    if (f16_quotient) v = round_to_f16(v);
    v = std::nearbyint(v);  // the default rounding mode: to nearest, ties to even
    q[c] = static_cast<int8_t>(std::min(qmax, std::max(-qmax, v)));
  }
}

#ifdef GLMRT_VEC_MATH_X86
// The same, 8 and 32 values at a time (AVX2/F16C, chosen at run time): the same IEEE operations
// (division, the fp16 rounding of the quotient, round to nearest even), so the same bytes.
template <typename S>
GLMRT_VEC_MATH_TARGET float row_absmax_avx2(const S* w, int64_t cols, bool* finite) {
  const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(3.40282347e38f);
  __m256 acc = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    const __m256 a = _mm256_andnot_ps(sign, cpu::load8(w + c));
    acc = _mm256_max_ps(acc, a);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, big, _CMP_NLE_UQ));  // > FLT_MAX or NaN
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float m = 0.0f;
  for (const float l : lanes) m = std::max(m, l);
  *finite = _mm256_movemask_ps(bad) == 0;
  return std::max(m, row_absmax_scalar(w, c, cols, finite));
}

template <typename S>
GLMRT_VEC_MATH_TARGET void row_quantize_avx2(const S* w, int64_t cols, float sf, float qmax, bool f16_quotient,
                                             int8_t* q) {
  const __m256 s = _mm256_set1_ps(sf), hi = _mm256_set1_ps(qmax), lo = _mm256_set1_ps(-qmax);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  auto one = [&](int64_t at) GLMRT_VEC_MATH_TARGET {
    __m256 v = _mm256_div_ps(cpu::load8(w + at), s);
    if (f16_quotient) v = _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, v)));
  };
  int64_t c = 0;
  for (; c + 32 <= cols; c += 32) {
    const __m256i a = _mm256_packs_epi32(one(c), one(c + 8)), b = _mm256_packs_epi32(one(c + 16), one(c + 24));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c),
                        _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), order));
  }
  row_quantize_scalar(w, c, cols, sf, qmax, f16_quotient, q);
}
#endif

template <typename S>
float row_absmax(const S* w, int64_t cols, bool* finite) {
  *finite = true;
#ifdef GLMRT_VEC_MATH_X86
  if (cpu::vec_math_vectorized()) return row_absmax_avx2(w, cols, finite);
#endif
  return row_absmax_scalar(w, 0, cols, finite);
}

template <typename S>
void row_quantize(const S* w, int64_t cols, float sf, float qmax, bool f16_quotient, int8_t* q) {
#ifdef GLMRT_VEC_MATH_X86
  if (cpu::vec_math_vectorized()) return row_quantize_avx2(w, cols, sf, qmax, f16_quotient, q);
#endif
  row_quantize_scalar(w, 0, cols, sf, qmax, f16_quotient, q);
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
  auto with_rows = [&](auto fn) {  // fn(const S* data) with the storage type of w
    switch (w.dtype()) {
      case DType::F16: return fn(static_cast<const f16*>(w.data()));
      case DType::BF16: return fn(static_cast<const bf16*>(w.data()));
      default: return fn(w.data_as<float>());
    }
  };
  with_rows([&](const auto* data) {
#pragma omp parallel for schedule(static) reduction(min : bad_row) if (parallel)
    for (int64_t r = 0; r < rows; ++r) {
      bool finite = true;
      amax[static_cast<size_t>(r)] = row_absmax(data + r * cols, cols, &finite);
      if (!finite) bad_row = std::min(bad_row, r);
    }
    if (bad_row < rows) {
      for (int64_t c = 0; c < cols; ++c) {
        const float v = widen(data[bad_row * cols + c]);
        if (!std::isfinite(v))
          throw InputError("quantization of " + name + ": row " + std::to_string(bad_row) + ", column " +
                           std::to_string(c) + " holds " + std::to_string(v) + " (not finite)");
      }
    }
  });
  for (int64_t r = 0; r < rows; ++r) {
    const float a = amax[static_cast<size_t>(r)];
    scales[r] = float_to_f16(a / qmax);
    if (!std::isfinite(f16_to_float(scales[r])))
      throw InputError("quantization of " + name + ": row " + std::to_string(r) + "'s scale " +
                       std::to_string(a / qmax) + " overflows fp16");
  }
  with_rows([&](const auto* data) {
#pragma omp parallel if (parallel)
    {
      std::vector<int8_t> row(bits == 4 ? static_cast<size_t>(cols) : 0);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const float sf = f16_to_float(scales[r]);
        int8_t* o = bits == 8 ? out + r * cols : row.data();
        if (sf == 0.0f) std::fill(o, o + cols, int8_t{0});
        else row_quantize(data + r * cols, cols, sf, qmax, f16_quotient, o);
        if (bits == 4) {
          int8_t* packed = out + r * (cols / 2);
          for (int64_t c = 0; c < cols; c += 2) {
            const auto h = static_cast<uint8_t>(o[c]), l = static_cast<uint8_t>(o[c + 1]);
            packed[c / 2] = static_cast<int8_t>(static_cast<uint8_t>((h << 4) | (l & 0x0F)));
          }
        }
      }
    }
  });
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
  if (spec.rule != ShardRule::Columns) {  // values and scales split alike, row by row
    std::map<int, QuantizedTensor> read;  // each saved piece asked for once
    auto part = [&](int k) -> QuantizedTensor& {
      auto it = read.find(k);
      return it != read.end() ? it->second : read.emplace(k, checked(k)).first->second;
    };
    out.values = reshard_pieces([&](int k) { return part(k).values; }, saved_tp, spec.rule, tp_rank, tp_size);
    out.scale = reshard_pieces([&](int k) { return part(k).scale; }, saved_tp, spec.rule, tp_rank, tp_size);
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
  out.scale = q.scale.clone();  // owned, like the values: never a view of a saved piece
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
