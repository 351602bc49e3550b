// IEEE fp16 and bfloat16 storage types for host code, with round-to-nearest-even conversion.
#pragma once

#include <cstdint>
#include <cstring>

namespace glmrt {

struct f16 {
  uint16_t bits = 0;
};
struct bf16 {
  uint16_t bits = 0;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline f16 float_to_f16(float f) {
  uint32_t x = float_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t abs = x & 0x7fffffffu;
  f16 h;
  if (abs >= 0x7f800000u) {  // inf or nan
    h.bits = static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    return h;
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    h.bits = static_cast<uint16_t>(sign | 0x7c00u);
    return h;
  }
  if (abs < 0x38800000u) {  // subnormal or zero in fp16: value = m * 2^-24
    // Add 0.5 (as float) so that the FPU rounds the mantissa to nearest even at 2^-24 spacing.
    float v = bits_float(abs) + 0.5f;
    h.bits = static_cast<uint16_t>(sign | (float_bits(v) - 0x3f000000u));
    return h;
  }
  uint32_t mant_odd = (abs >> 13) & 1u;
  abs += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  h.bits = static_cast<uint16_t>(sign | (abs >> 13));
  return h;
}

inline float f16_to_float(f16 h) {
  uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t mant = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // 2^-24
    return (sign ? -v : v);
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline bf16 float_to_bf16(float f) {
  uint32_t x = float_bits(f);
  bf16 b;
  if ((x & 0x7fffffffu) > 0x7f800000u) {  // nan: keep it a quiet nan
    b.bits = static_cast<uint16_t>((x >> 16) | 0x40u);
    return b;
  }
  x += 0x7fffu + ((x >> 16) & 1u);
  b.bits = static_cast<uint16_t>(x >> 16);
  return b;
}

inline float bf16_to_float(bf16 b) { return bits_float(static_cast<uint32_t>(b.bits) << 16); }

// Round a float through fp16 and back (the value an fp16 tensor would hold).
inline float round_to_f16(float f) { return f16_to_float(float_to_f16(f)); }

}  // namespace glmrt
