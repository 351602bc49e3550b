// GeGLU: out = x1 · GELU(x2), GELU(z) = z/2 · (1 + erf(z/√2)) (exact erf GELU, as GLM-130B).
// F32 rows run 8 lanes at a time with kernels/cpu/vec_math.h's erf/exp where AVX2 is there
// (every element, the row's tail too, through the same function); F64 and other CPUs call std::erf.
#include <cmath>
#include <type_traits>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/vec_math.h"

namespace glmrt::cpu {

namespace {

#ifdef GLMRT_VEC_MATH_X86
// a · GELU(z), lane by lane.
GLMRT_VEC_MATH_TARGET inline __m256 times_gelu8(__m256 a, __m256 z) {
  const __m256 erf = erf8(_mm256_mul_ps(z, _mm256_set1_ps(0.70710678118654752440f)));
  const __m256 cdf = _mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
  return _mm256_mul_ps(a, _mm256_mul_ps(z, cdf));
}

// The backward, lane by lane: r1 = g · GELU(z), r2 = g · a · (Φ(z) + z · φ(z)).
GLMRT_VEC_MATH_TARGET inline void geglu_grad8(__m256 a, __m256 z, __m256 g, __m256& r1, __m256& r2) {
  const __m256 erf = erf8(_mm256_mul_ps(z, _mm256_set1_ps(0.70710678118654752440f)));
  const __m256 cdf = _mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
  const __m256 pdf = _mm256_mul_ps(_mm256_set1_ps(0.39894228040143267794f),
                                   exp8(_mm256_mul_ps(_mm256_set1_ps(-0.5f), _mm256_mul_ps(z, z))));
  r1 = _mm256_mul_ps(_mm256_mul_ps(g, z), cdf);
  r2 = _mm256_mul_ps(_mm256_mul_ps(g, a), _mm256_fmadd_ps(z, pdf, cdf));
}

// One row: o[i] = x1[i] · GELU(x2[i]), i < f.
GLMRT_VEC_MATH_TARGET void geglu_row_avx2(const float* x1, const float* x2, float* o, int64_t f) {
  int64_t i = 0;
  for (; i + 8 <= f; i += 8)
    _mm256_storeu_ps(o + i, times_gelu8(_mm256_loadu_ps(x1 + i), _mm256_loadu_ps(x2 + i)));
  if (i < f) store_first(o + i, times_gelu8(load_first(x1 + i, f - i), load_first(x2 + i, f - i)), f - i);
}

// One row of the backward.
GLMRT_VEC_MATH_TARGET void geglu_backward_row_avx2(const float* x1, const float* x2, const float* g,
                                                   float* d1, float* d2, int64_t f) {
  __m256 r1, r2;
  int64_t i = 0;
  for (; i + 8 <= f; i += 8) {
    geglu_grad8(_mm256_loadu_ps(x1 + i), _mm256_loadu_ps(x2 + i), _mm256_loadu_ps(g + i), r1, r2);
    _mm256_storeu_ps(d1 + i, r1);
    _mm256_storeu_ps(d2 + i, r2);
  }
  if (i < f) {
    const int64_t r = f - i;
    geglu_grad8(load_first(x1 + i, r), load_first(x2 + i, r), load_first(g + i, r), r1, r2);
    store_first(d1 + i, r1, r);
    store_first(d2 + i, r2, r);
  }
}
#endif

}  // namespace

void geglu_forward(const Tensor& u, Tensor& out) {
  const int64_t n = u.rows(), two_f = u.cols(), f = two_f / 2;
  GLMRT_CHECK(two_f % 2 == 0, "geglu_forward: odd input width ", u.str());
  GLMRT_CHECK(out.rows() == n && out.cols() == f, "geglu_forward: output ", out.str(), " for ",
              u.str());
  check_dtype(out, u.dtype(), "geglu_forward out");
  dispatch_float(u.dtype(), "geglu_forward", [&](auto zero) {
    using T = decltype(zero);
    const T* pu = u.data_as<T>();
    T* po = out.data_as<T>();
    const T inv_sqrt2 = static_cast<T>(0.70710678118654752440);
#pragma omp parallel for schedule(static) if (parallel_rows(n, two_f))
    for (int64_t r = 0; r < n; ++r) {
      const T* x1 = pu + r * two_f;
      const T* x2 = x1 + f;
      T* o = po + r * f;
#ifdef GLMRT_VEC_MATH_X86
      if constexpr (std::is_same_v<T, float>) {
        if (vec_math_vectorized()) {
          geglu_row_avx2(x1, x2, o, f);
          continue;
        }
      }
#endif
      for (int64_t i = 0; i < f; ++i) {
        const T z = x2[i];
        o[i] = x1[i] * (T(0.5) * z * (T(1) + std::erf(z * inv_sqrt2)));
      }
    }
  });
}

}  // namespace glmrt::cpu

namespace glmrt::cpu {

void geglu_backward(const Tensor& u, const Tensor& dout, Tensor& du) {
  const int64_t n = u.rows(), two_f = u.cols(), f = two_f / 2;
  GLMRT_CHECK(dout.rows() == n && dout.cols() == f && du.shape() == u.shape(),
              "geglu_backward: u ", u.str(), ", dout ", dout.str(), ", du ", du.str());
  dispatch_float(u.dtype(), "geglu_backward", [&](auto zero) {
    using T = decltype(zero);
    const T* pu = u.data_as<T>();
    const T* pd = dout.data_as<T>();
    T* pdu = du.data_as<T>();
    const T inv_sqrt2 = static_cast<T>(0.70710678118654752440);
    const T inv_sqrt_2pi = static_cast<T>(0.39894228040143267794);
#pragma omp parallel for schedule(static) if (parallel_rows(n, two_f))
    for (int64_t r = 0; r < n; ++r) {
      const T* x1 = pu + r * two_f;
      const T* x2 = x1 + f;
      const T* g = pd + r * f;
      T* d1 = pdu + r * two_f;
      T* d2 = d1 + f;
#ifdef GLMRT_VEC_MATH_X86
      if constexpr (std::is_same_v<T, float>) {
        if (vec_math_vectorized()) {
          geglu_backward_row_avx2(x1, x2, g, d1, d2, f);
          continue;
        }
      }
#endif
      for (int64_t i = 0; i < f; ++i) {
        const T z = x2[i];
        const T cdf = T(0.5) * (T(1) + std::erf(z * inv_sqrt2));
        d1[i] = g[i] * z * cdf;
        d2[i] = g[i] * x1[i] * (cdf + z * inv_sqrt_2pi * std::exp(T(-0.5) * z * z));
      }
    }
  });
}

}  // namespace glmrt::cpu
