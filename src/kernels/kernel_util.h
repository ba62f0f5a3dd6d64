// Small pieces the matrix-product drivers share (internal to src/kernels).
#pragma once
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace mixtral::kernel_util {

constexpr int kLanes = 16;  // partial sums per output (every ISA and weight dtype)

// The 16 partial sums of one output, added as a fixed tree:
//   s8[i] = v[i] + v[i+8], s4[i] = s8[i] + s8[i+4], result (s4[0] + s4[2]) + (s4[1] + s4[3]).
// (AVX, which every supported CPU has; ref_reduce16 is the same tree written out.)
inline float reduce16(const float* v) {
  const __m256 s8 = _mm256_add_ps(_mm256_loadu_ps(v), _mm256_loadu_ps(v + 8));
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));  // s4[0] + s4[2], s4[1] + s4[3]
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}
inline float ref_reduce16(const float* v) {
  float s8[8], s4[4];
  for (int i = 0; i < 8; ++i) s8[i] = v[i] + v[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// A buffer of T aligned to 64 bytes that only grows (one per thread: no allocation per call
// once it has reached the largest size used).
template <class T>
class Scratch {
 public:
  T* get(size_t n) {
    if (n > cap_) {
      buf_.reset(static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64)));
      if (!buf_) throw std::bad_alloc();
      cap_ = n;
    }
    return buf_.get();
  }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> buf_;
  size_t cap_ = 0;
};

// One cache line into L1 (prefetcht0) or L2 (prefetcht1). asm, not __builtin_prefetch: GCC
// deletes a call to a function whose only effect is that builtin.
inline void prefetch_l1(const uint8_t* p) { asm volatile("prefetcht0 (%0)" : : "r"(p)); }
inline void prefetch_l2(const uint8_t* p) { asm volatile("prefetcht1 (%0)" : : "r"(p)); }

inline void prefetch(const uint8_t* p, size_t bytes) {
  for (size_t i = 0; i < bytes; i += 64) _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T0);
}

}  // namespace mixtral::kernel_util
