// Dequantization: one scalar reference per dtype, and AVX2 / AVX-512 versions that compute each
// value with the same float operations (so they agree bit for bit with the reference).
//
// No fused multiply-add in this file: Q4_K's value is (d*sc)*q - dmin*m with two roundings, as
// ggml's dequantize_row_q4_K computes it. GCC would otherwise contract both the scalar and the
// SIMD form into an FMA (it does so even for _mm*_mul_ps/_mm*_sub_ps), and only sometimes.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "kernels/dequant.h"
#include "kernels/dequant_family.h"

#include <immintrin.h>

#include <atomic>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/blocks.h"

namespace mixtral {
namespace {

inline uint16_t u16_at(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// ================================ scalar reference ==============================================

void ref_f32(const uint8_t* src, float* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }

void ref_f16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(u16_at(src + 2 * i));
}

void ref_bf16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(u16_at(src + 2 * i));
}

void ref_q8_0(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ8_0*>(src);
  for (int64_t i = 0; i < n / QK8_0; ++i, dst += QK8_0) {
    const float d = half_at(b[i].d);
    for (int j = 0; j < QK8_0; ++j) dst[j] = float(b[i].qs[j]) * d;
  }
}

void ref_q4_0(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ4_0*>(src);
  for (int64_t i = 0; i < n / QK4_0; ++i, dst += QK4_0) {
    const float d = half_at(b[i].d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      dst[j] = float((b[i].qs[j] & 0xF) - 8) * d;
      dst[j + QK4_0 / 2] = float((b[i].qs[j] >> 4) - 8) * d;
    }
  }
}

void ref_q4_K(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ4_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_at(b[i].d);
    const float dmin = half_at(b[i].dmin);
    const uint8_t* q = b[i].qs;
    for (int g = 0; g < 4; ++g, q += 32) {  // group of 64 = sub-blocks 2g (low), 2g+1 (high)
      uint8_t sc, m;
      q4k_scale_min(2 * g, b[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      q4k_scale_min(2 * g + 1, b[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *dst++ = d1 * float(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *dst++ = d2 * float(q[l] >> 4) - m2;
    }
  }
}

void ref_q6_K(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ6_K*>(src);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_at(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    for (int h = 0; h < 2; ++h, ql += 64, qh += 32, sc += 8, dst += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        dst[l + 0] = (d * sc[is + 0]) * float(q1);
        dst[l + 32] = (d * sc[is + 2]) * float(q2);
        dst[l + 64] = (d * sc[is + 4]) * float(q3);
        dst[l + 96] = (d * sc[is + 6]) * float(q4);
      }
    }
  }
}

DequantizeFn ref_fn(DType t) {
  switch (t) {
    case DType::F32: return ref_f32;
    case DType::F16: return ref_f16;
    case DType::BF16: return ref_bf16;
    case DType::Q8_0: return ref_q8_0;
    case DType::Q4_0: return ref_q4_0;
    case DType::Q4_K: return ref_q4_K;
    case DType::Q6_K: return ref_q6_K;
    default: break;
  }
  return ref::dequant_family(t);  // the rest of the llama.cpp family (dequant_family.h)
}

// ================================ AVX2 (8 lanes) ================================================

#pragma GCC push_options
#pragma GCC target("avx2,f16c,fma")

// fp16 block scale via F16C (same value as f16_to_f32 for every non-NaN input; NaN stays NaN).
inline float half_fast(const uint16_t& h) {
  uint16_t v;
  std::memcpy(&v, &h, 2);
  return _cvtsh_ss(v);
}

// 8 bytes -> 8 int32 lanes
inline __m256i u8x8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

void avx2_f16(const uint8_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))));
  for (; i < n; ++i) dst[i] = f16_to_f32(u16_at(src + 2 * i));
}

void avx2_bf16(const uint8_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i)));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
  }
  for (; i < n; ++i) dst[i] = bf16_to_f32(u16_at(src + 2 * i));
}

void avx2_q8_0(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ8_0*>(src);
  for (int64_t i = 0; i < n / QK8_0; ++i, dst += QK8_0) {
    const __m256 d = _mm256_set1_ps(half_fast(b[i].d));
    for (int c = 0; c < 4; ++c) {
      const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b[i].qs + 8 * c)));
      _mm256_storeu_ps(dst + 8 * c, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
    }
  }
}

void avx2_q4_0(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ4_0*>(src);
  const __m256i mask = _mm256_set1_epi32(0xF), eight = _mm256_set1_epi32(8);
  for (int64_t i = 0; i < n / QK4_0; ++i, dst += QK4_0) {
    const __m256 d = _mm256_set1_ps(half_fast(b[i].d));
    for (int c = 0; c < 2; ++c) {
      const __m256i q = u8x8(b[i].qs + 8 * c);
      const __m256i lo = _mm256_sub_epi32(_mm256_and_si256(q, mask), eight);
      const __m256i hi = _mm256_sub_epi32(_mm256_srli_epi32(q, 4), eight);
      _mm256_storeu_ps(dst + 8 * c, _mm256_mul_ps(_mm256_cvtepi32_ps(lo), d));
      _mm256_storeu_ps(dst + 16 + 8 * c, _mm256_mul_ps(_mm256_cvtepi32_ps(hi), d));
    }
  }
}

void avx2_q4_K(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ4_K*>(src);
  const __m256i mask = _mm256_set1_epi32(0xF);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_fast(b[i].d), dmin = half_fast(b[i].dmin);
    const uint8_t* q = b[i].qs;
    for (int g = 0; g < 4; ++g, q += 32, dst += 64) {
      uint8_t sc, m;
      q4k_scale_min(2 * g, b[i].scales, &sc, &m);
      const __m256 d1 = _mm256_set1_ps(d * sc), m1 = _mm256_set1_ps(dmin * m);
      q4k_scale_min(2 * g + 1, b[i].scales, &sc, &m);
      const __m256 d2 = _mm256_set1_ps(d * sc), m2 = _mm256_set1_ps(dmin * m);
      for (int c = 0; c < 4; ++c) {
        const __m256i v = u8x8(q + 8 * c);
        const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
        const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
        _mm256_storeu_ps(dst + 8 * c, _mm256_sub_ps(_mm256_mul_ps(d1, lo), m1));
        _mm256_storeu_ps(dst + 32 + 8 * c, _mm256_sub_ps(_mm256_mul_ps(d2, hi), m2));
      }
    }
  }
}

void avx2_q6_K(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ6_K*>(src);
  const __m256i m4 = _mm256_set1_epi32(0xF), m2 = _mm256_set1_epi32(3), k32 = _mm256_set1_epi32(32);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_fast(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    for (int h = 0; h < 2; ++h, ql += 64, qh += 32, sc += 8, dst += 128) {
      for (int c = 0; c < 4; ++c) {  // l = 8c .. 8c+7
        const int is = c / 2;
        const __m256i a = u8x8(ql + 8 * c), bq = u8x8(ql + 32 + 8 * c), hb = u8x8(qh + 8 * c);
        const __m256i q1 = _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_slli_epi32(_mm256_and_si256(hb, m2), 4));
        const __m256i q2 = _mm256_or_si256(_mm256_and_si256(bq, m4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hb, 2), m2), 4));
        const __m256i q3 = _mm256_or_si256(_mm256_srli_epi32(a, 4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hb, 4), m2), 4));
        const __m256i q4 = _mm256_or_si256(_mm256_srli_epi32(bq, 4), _mm256_slli_epi32(_mm256_srli_epi32(hb, 6), 4));
        const __m256i qs[4] = {q1, q2, q3, q4};
        for (int k = 0; k < 4; ++k) {
          const __m256 ds = _mm256_set1_ps(d * sc[is + 2 * k]);
          const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(qs[k], k32));
          _mm256_storeu_ps(dst + 32 * k + 8 * c, _mm256_mul_ps(ds, v));
        }
      }
    }
  }
}

DequantizeFn avx2_fn(DType t) {
  switch (t) {
    case DType::F32: return ref_f32;
    case DType::F16: return avx2_f16;
    case DType::BF16: return avx2_bf16;
    case DType::Q8_0: return avx2_q8_0;
    case DType::Q4_0: return avx2_q4_0;
    case DType::Q4_K: return avx2_q4_K;
    case DType::Q6_K: return avx2_q6_K;
    default: break;
  }
  return nullptr;
}

#pragma GCC pop_options

// ================================ AVX-512 (16 lanes) ============================================

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c,fma")
// GCC 12.2's AVX-512 intrinsics trip a false -Wmaybe-uninitialized (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// 16 bytes -> 16 int32 lanes
inline __m512i u8x16(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

void avx512_f16(const uint8_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i))));
  for (; i < n; ++i) dst[i] = f16_to_f32(u16_at(src + 2 * i));
}

void avx512_bf16(const uint8_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i)));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
  }
  for (; i < n; ++i) dst[i] = bf16_to_f32(u16_at(src + 2 * i));
}

void avx512_q8_0(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ8_0*>(src);
  for (int64_t i = 0; i < n / QK8_0; ++i, dst += QK8_0) {
    const __m512 d = _mm512_set1_ps(half_fast(b[i].d));
    for (int c = 0; c < 2; ++c) {
      const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs + 16 * c)));
      _mm512_storeu_ps(dst + 16 * c, _mm512_mul_ps(_mm512_cvtepi32_ps(q), d));
    }
  }
}

// 4-bit quants index a 16-entry table of their float values with vpermps (which reads the low 4
// bits of each lane): table[i] = float(i - 8) * d is the very product the reference computes.
void avx512_q4_0(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ4_0*>(src);
  const __m512 values = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t i = 0; i < n / QK4_0; ++i, dst += QK4_0) {
    const __m512 table = _mm512_mul_ps(values, _mm512_set1_ps(half_fast(b[i].d)));
    const __m512i q = u8x16(b[i].qs);
    _mm512_storeu_ps(dst, _mm512_permutexvar_ps(q, table));                            // low nibbles
    _mm512_storeu_ps(dst + 16, _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table));  // high
  }
}

// As Q4_0: table[i] = d1 * float(i) - m1, the reference's two roundings.
void avx512_q4_K(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ4_K*>(src);
  const __m512 values = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_fast(b[i].d), dmin = half_fast(b[i].dmin);
    const uint8_t* q = b[i].qs;
    for (int g = 0; g < 4; ++g, q += 32, dst += 64) {
      uint8_t sc, m;
      q4k_scale_min(2 * g, b[i].scales, &sc, &m);
      const __m512 t1 = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d * sc), values), _mm512_set1_ps(dmin * m));
      q4k_scale_min(2 * g + 1, b[i].scales, &sc, &m);
      const __m512 t2 = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d * sc), values), _mm512_set1_ps(dmin * m));
      for (int c = 0; c < 2; ++c) {
        const __m512i v = u8x16(q + 16 * c);
        _mm512_storeu_ps(dst + 16 * c, _mm512_permutexvar_ps(v, t1));
        _mm512_storeu_ps(dst + 32 + 16 * c, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), t2));
      }
    }
  }
}

void avx512_q6_K(const uint8_t* src, float* dst, int64_t n) {
  const auto* b = reinterpret_cast<const BlockQ6_K*>(src);
  const __m512i m4 = _mm512_set1_epi32(0xF), m2 = _mm512_set1_epi32(3), k32 = _mm512_set1_epi32(32);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = half_fast(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    for (int h = 0; h < 2; ++h, ql += 64, qh += 32, sc += 8, dst += 128) {
      for (int is = 0; is < 2; ++is) {  // l = 16*is .. 16*is+15
        const __m512i a = u8x16(ql + 16 * is), bq = u8x16(ql + 32 + 16 * is), hb = u8x16(qh + 16 * is);
        const __m512i q1 = _mm512_or_si512(_mm512_and_si512(a, m4), _mm512_slli_epi32(_mm512_and_si512(hb, m2), 4));
        const __m512i q2 = _mm512_or_si512(_mm512_and_si512(bq, m4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 2), m2), 4));
        const __m512i q3 = _mm512_or_si512(_mm512_srli_epi32(a, 4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 4), m2), 4));
        const __m512i q4 = _mm512_or_si512(_mm512_srli_epi32(bq, 4), _mm512_slli_epi32(_mm512_srli_epi32(hb, 6), 4));
        const __m512i qs[4] = {q1, q2, q3, q4};
        for (int k = 0; k < 4; ++k) {
          const __m512 ds = _mm512_set1_ps(d * sc[is + 2 * k]);
          const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(qs[k], k32));
          _mm512_storeu_ps(dst + 32 * k + 16 * is, _mm512_mul_ps(ds, v));
        }
      }
    }
  }
}

DequantizeFn avx512_fn(DType t) {
  switch (t) {
    case DType::F32: return ref_f32;
    case DType::F16: return avx512_f16;
    case DType::BF16: return avx512_bf16;
    case DType::Q8_0: return avx512_q8_0;
    case DType::Q4_0: return avx512_q4_0;
    case DType::Q4_K: return avx512_q4_K;
    case DType::Q6_K: return avx512_q6_K;
    default: break;
  }
  return nullptr;
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

// ================================ dispatch ======================================================

SimdLevel detect() {
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")))
    return SimdLevel::AVX2;
  return __builtin_cpu_supports("avx512bf16") ? SimdLevel::AVX512_BF16 : SimdLevel::AVX512;
}

std::atomic<int>& level_slot() {
  static std::atomic<int> level{int(best_simd_level())};
  return level;
}

void check_n(const char* where, DType t, int64_t n) {
  const DTypeInfo info = dtype_info(t);
  if (info.block_bytes == 0) fail(where, "unknown dtype " + std::to_string(int(t)));
  if (n < 0 || n % info.block_size != 0)
    fail(where, std::string(info.name) + " rows need a multiple of " +
                    std::to_string(info.block_size) + " values, got " + std::to_string(n));
}

}  // namespace

SimdLevel best_simd_level() {
  static const SimdLevel best = detect();
  return best;
}

SimdLevel simd_level() { return SimdLevel(level_slot().load(std::memory_order_relaxed)); }

void set_simd_level(SimdLevel l) {
  if (int(l) > int(best_simd_level())) l = best_simd_level();
  level_slot().store(int(l), std::memory_order_relaxed);
}

DequantizeFn dequantize_fn(DType t) {
  const DequantizeFn f = simd_level() >= SimdLevel::AVX512 ? avx512_fn(t) : avx2_fn(t);
  // The types without a SIMD dequantizer are read by the int8 kernels; the float path (and
  // tests) dequantize them with the scalar reference.
  return f ? f : ref_fn(t);
}

void dequantize_row(DType t, const uint8_t* src, float* dst, int64_t n) {
  check_n("dequantize_row", t, n);
  const DequantizeFn f = dequantize_fn(t);
  if (!f) fail("dequantize_row", std::string("no dequantizer for ") + dtype_name(t));
  f(src, dst, n);
}

namespace ref {
void dequantize_row(DType t, const uint8_t* src, float* dst, int64_t n) {
  check_n("ref::dequantize_row", t, n);
  const DequantizeFn f = ref_fn(t);
  if (!f) fail("ref::dequantize_row", std::string("no dequantizer for ") + dtype_name(t));
  f(src, dst, n);
}
}  // namespace ref

}  // namespace mixtral
