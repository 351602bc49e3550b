// Philox4x32-10 (Salmon et al., SC'11): a counter-based RNG. Every random number is a pure
// function of (key, counter), so a value can be regenerated for any element on any device and
// in any parallel layout: dropout masks and initial weights do not depend on how work is split.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GLMRT_HD __host__ __device__
#else
#define GLMRT_HD
#endif

namespace glmrt {

struct Philox {
  using Block = std::array<uint32_t, 4>;
  static GLMRT_HD inline void round(uint32_t c[4], const uint32_t k[2]) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c[1] ^ k[0], n2 = hi0 ^ c[3] ^ k[1];
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
  }
  // Four 32-bit random words for (key, counter).
  static GLMRT_HD inline void generate(uint64_t key, uint64_t counter_hi, uint64_t counter_lo,
                                       uint32_t out[4]) {
    uint32_t k[2] = {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
    uint32_t c[4] = {static_cast<uint32_t>(counter_lo), static_cast<uint32_t>(counter_lo >> 32),
                     static_cast<uint32_t>(counter_hi), static_cast<uint32_t>(counter_hi >> 32)};
    for (int r = 0; r < 10; ++r) {
      round(c, k);
      if (r < 9) {
        k[0] += 0x9E3779B9u;
        k[1] += 0xBB67AE85u;
      }
    }
    for (int i = 0; i < 4; ++i) out[i] = c[i];
  }
  // Uniform in (0, 1] from a 32-bit word (never 0, so log() is safe).
  static GLMRT_HD inline double to_unit(uint32_t x) { return (static_cast<double>(x) + 1.0) / 4294967296.0; }
  // A standard normal for element `i` of stream (key, stream): Box-Muller on two words.
  static GLMRT_HD inline double normal(uint64_t key, uint64_t stream, uint64_t i) {
    uint32_t w[4];
    generate(key, stream, i, w);
    const double u1 = to_unit(w[0]), u2 = to_unit(w[1]);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
  }
};

}  // namespace glmrt
