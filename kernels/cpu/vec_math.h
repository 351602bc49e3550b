// 8-lane fp32 helpers of the CPU kernels (AVX2/FMA/F16C, compiled with target attributes and
// chosen at run time through vec_math_vectorized(); callers keep a scalar loop for other CPUs and
// for F64): loads of 8 F32/BF16/F16 values as fp32 lanes, a fixed-order horizontal sum, and exp
// and erf (GeGLU, softmax); and their 16-lane AVX-512 loads and sum (vec_math_avx512()).
//
// exp8: Cephes' expf (range reduction by ln 2 in two parts, degree-5 polynomial, 2^n put in the
// exponent bits): within 2 ulp of the correctly rounded result over the normal range; inputs
// below -88.37 give 0, above 88.37 give +inf; softmax and GeGLU only pass values ≤ 0.
// erf8: odd rational approximation x·P(x²)/Q(x²) on [-4, 4] (Eigen's fast float erf; ±1 beyond,
// where erf rounds to ±1 in fp32): 6.5e-8 absolute in exact arithmetic, a few ulp in fp32.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GLMRT_VEC_MATH_X86 1
#define GLMRT_VEC_MATH_TARGET __attribute__((target("avx2,fma,f16c")))
#endif

#include "kernels/half.h"

namespace glmrt::cpu {

// One stored value as fp32 (the scalar twin of load8, for portable loops and tails).
inline float widen(float v) { return v; }
inline float widen(bf16 v) { return bf16_to_float(v); }
inline float widen(f16 v) { return f16_to_float(v); }

#ifdef GLMRT_VEC_MATH_X86

inline bool vec_math_vectorized() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported;
}

// 8 consecutive values as fp32 lanes (16-bit ones widened in registers).
GLMRT_VEC_MATH_TARGET inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
GLMRT_VEC_MATH_TARGET inline __m256 load8(const bf16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
GLMRT_VEC_MATH_TARGET inline __m256 load8(const f16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// ((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7)).
GLMRT_VEC_MATH_TARGET inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

GLMRT_VEC_MATH_TARGET inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)),
                    _mm256_set1_ps(88.3762626647949f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, z, x);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  // 2^fx through the exponent bits (fx in [-127, 128]; -127 gives +0).
  __m256i e = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  e = _mm256_max_epi32(e, _mm256_setzero_si256());
  return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}

GLMRT_VEC_MATH_TARGET inline __m256 erf8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-4.0f)), _mm256_set1_ps(4.0f));
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(-2.72614225801306e-10f);
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(2.77068142495902e-08f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-2.10102402082508e-06f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-5.69250639462346e-05f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-7.34990630326855e-04f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-2.95459980854025e-03f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-1.60960333262415e-02f));
  p = _mm256_mul_ps(x, p);
  __m256 q = _mm256_set1_ps(-1.45660718464996e-05f);
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(-2.13374055278905e-04f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(-1.68282697438203e-03f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(-7.37332916720468e-03f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(-1.42647390514189e-02f));
  return _mm256_div_ps(p, q);
}

// The first r < 8 floats at p, zeros after (reads nothing past p + r); and the store back.
GLMRT_VEC_MATH_TARGET inline __m256 load_first(const float* p, int64_t r) {
  alignas(32) float t[8] = {};
  for (int64_t i = 0; i < r; ++i) t[i] = p[i];
  return _mm256_load_ps(t);
}
GLMRT_VEC_MATH_TARGET inline void store_first(float* p, __m256 v, int64_t r) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int64_t i = 0; i < r; ++i) p[i] = t[i];
}

// ---- 16 lanes (AVX-512 F, BW, VL, DQ; callers check vec_math_avx512() first) ----
#define GLMRT_VEC_MATH_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

inline bool vec_math_avx512() {
  static const bool supported = vec_math_vectorized() && __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                                __builtin_cpu_supports("avx512dq");
  return supported;
}

// 16 consecutive values as fp32 lanes (16-bit ones widened in registers).
GLMRT_VEC_MATH_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
GLMRT_VEC_MATH_AVX512 inline __m512 widen16(__m256i bf16_bits) {
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, bf16_bits), 16));
}
GLMRT_VEC_MATH_AVX512 inline __m512 load16(const bf16* p) {
  return widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
GLMRT_VEC_MATH_AVX512 inline __m512 load16(const f16* p) {
  return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// The first r < 16 values, zeros after them.
GLMRT_VEC_MATH_AVX512 inline __m512 load16_first(const float* p, int64_t r) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << r) - 1), p);
}
GLMRT_VEC_MATH_AVX512 inline __m512 load16_first(const bf16* p, int64_t r) {
  return widen16(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << r) - 1), p));
}
GLMRT_VEC_MATH_AVX512 inline __m512 load16_first(const f16* p, int64_t r) {
  return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << r) - 1), p));
}
GLMRT_VEC_MATH_AVX512 inline float horizontal_sum16(__m512 v) {
  // (The maskz forms of these intrinsics: the plain ones trip GCC 12's -Wmaybe-uninitialized.)
  return horizontal_sum(
      _mm256_add_ps(_mm512_maskz_extractf32x8_ps(0xFF, v, 0), _mm512_maskz_extractf32x8_ps(0xFF, v, 1)));
}

#else

inline bool vec_math_vectorized() { return false; }
inline bool vec_math_avx512() { return false; }

#endif

// The largest of s[0 .. n) (n ≥ 1; -inf for n = 0).
float max_of(const float* s, int64_t n);
// s[j] = exp(s[j] - shift) for j < n, returning their sum: exp8 8 lanes at a time where AVX2 is
// (the tail too), std::exp otherwise.
float exp_shifted_sum(float* s, int64_t n, float shift);

}  // namespace glmrt::cpu
