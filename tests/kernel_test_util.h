// What the kernel tests share: random inputs, bitwise comparison, and running a check at every
// SIMD level this CPU has.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "core/fp16.h"
#include "kernels/dequant.h"

namespace mixtral::testing {

// n values from N(0, scale²), reproducible from seed.
inline std::vector<float> normal(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

inline bool same_bits(float a, float b) { return f32_to_bits(a) == f32_to_bits(b); }

// Runs body at every SIMD level this CPU has (traced by name), restoring the best level afterwards.
template <class F>
void for_each_simd_level(F body) {
  const SimdLevel best = best_simd_level();
  for (SimdLevel l : {SimdLevel::AVX2, SimdLevel::AVX512, SimdLevel::AVX512_BF16}) {
    if (int(l) > int(best)) continue;
    set_simd_level(l);
    SCOPED_TRACE(l == SimdLevel::AVX512_BF16 ? "AVX512_BF16" : l == SimdLevel::AVX512 ? "AVX512" : "AVX2");
    body();
  }
  set_simd_level(best);
}

}  // namespace mixtral::testing
