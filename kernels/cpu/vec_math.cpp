// Softmax pieces over fp32 rows: see vec_math.h.
#include "kernels/cpu/vec_math.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace glmrt::cpu {

namespace {

#ifdef GLMRT_VEC_MATH_X86
GLMRT_VEC_MATH_TARGET float max_avx2(const float* s, int64_t n) {
  const __m256 lowest = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 m = lowest;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
  alignas(32) float t[8];
  _mm256_store_ps(t, m);
  float r = *std::max_element(t, t + 8);
  for (; j < n; ++j) r = std::max(r, s[j]);
  return r;
}

GLMRT_VEC_MATH_TARGET float exp_shifted_sum_avx2(float* s, int64_t n, float shift) {
  const __m256 sh = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), sh));
    _mm256_storeu_ps(s + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  if (j < n) {
    // Lanes past n hold exp(0 - shift) after the load's zeros: masked out of the sum.
    alignas(32) float t[8];
    _mm256_store_ps(t, exp8(_mm256_sub_ps(load_first(s + j, n - j), sh)));
    for (int64_t i = 0; i < n - j; ++i) s[j + i] = t[i];
    alignas(32) float kept[8] = {};
    for (int64_t i = 0; i < n - j; ++i) kept[i] = t[i];
    acc = _mm256_add_ps(acc, _mm256_load_ps(kept));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, acc);
  return ((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]));
}
#endif

}  // namespace

float max_of(const float* s, int64_t n) {
#ifdef GLMRT_VEC_MATH_X86
  if (vec_math_vectorized()) return max_avx2(s, n);
#endif
  float r = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) r = std::max(r, s[j]);
  return r;
}

float exp_shifted_sum(float* s, int64_t n, float shift) {
#ifdef GLMRT_VEC_MATH_X86
  if (vec_math_vectorized()) return exp_shifted_sum_avx2(s, n, shift);
#endif
  float sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - shift));
  return sum;
}

}  // namespace glmrt::cpu
