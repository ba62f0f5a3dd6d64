// Block formats, (de)quantizers and the matrix-product kernel.
//   - reference dequantizers on hand-built blocks (known values, every Q4_K scale/min slot)
//   - Q8_0 / Q4_0 quantizers bit-exact on hand-computed blocks (ties, sign of the max, zeros)
//   - quantize -> dequantize round trips within a per-type bound
//   - fast dequantize == reference, bit for bit, at every SIMD level
//   - fast matmul vs reference over awkward shapes, all dtypes; bitwise reproducibility across
//     thread counts, SIMD levels, batch vs one token at a time; misaligned pointers
//   - BF16 weights (bf16 dot products): bit-exact with the scalar emulation of vdpbf16ps at every
//     SIMD level, thread count and token count, subnormals included
//   - the int8-activation path (quantized weights): activation quantizer == reference; fast ==
//     ref::matmul_q8 bit for bit (odd row counts, 1..17 tokens, both ISAs); within the
//     activation-rounding bound of the float reference
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/dequant.h"
#include "kernels/matmul.h"
#include "kernels/matmul_bf16.h"
#include "kernels/matmul_q8.h"
#include "kernels/weight_tiles.h"
#include "quant/blocks.h"
#include "quant/quantize.h"
#include "kernel_test_util.h"
#include "test_util.h"

namespace mixtral {
namespace {

using testing::for_each_simd_level;
using testing::normal;
using testing::same_bits;

const DType kAllTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0,
                           DType::Q4_0, DType::Q4_K, DType::Q6_K};

std::vector<uint8_t> quantize(DType t, const std::vector<float>& x) {
  std::vector<uint8_t> q(quantized_bytes(t, int64_t(x.size())));
  quantize_row(t, x.data(), q.data(), int64_t(x.size()));
  return q;
}

std::vector<float> ref_dequant(DType t, const uint8_t* q, int64_t n) {
  std::vector<float> y(static_cast<size_t>(n));
  ref::dequantize_row(t, q, y.data(), n);
  return y;
}

// ---- layouts and sizes --------------------------------------------------------------------------

TEST(Blocks, SizesMatchGgml) {
  EXPECT_EQ(sizeof(BlockQ8_0), 34u);
  EXPECT_EQ(sizeof(BlockQ4_0), 18u);
  EXPECT_EQ(sizeof(BlockQ4_K), 144u);
  EXPECT_EQ(sizeof(BlockQ6_K), 210u);
  EXPECT_EQ(offsetof(BlockQ4_K, scales), 4u);
  EXPECT_EQ(offsetof(BlockQ4_K, qs), 16u);
  EXPECT_EQ(offsetof(BlockQ6_K, qh), 128u);
  EXPECT_EQ(offsetof(BlockQ6_K, scales), 192u);
  EXPECT_EQ(offsetof(BlockQ6_K, d), 208u);
  for (DType t : kAllTypes) EXPECT_EQ(dtype_info(t).block_bytes * 1, quantized_bytes(t, dtype_info(t).block_size));
  EXPECT_EQ(quantized_bytes(DType::Q4_K, 512), 288u);
  EXPECT_EQ(quantized_bytes(DType::F16, 3), 6u);
}

TEST(Blocks, RejectsPartialBlocks) {
  std::vector<float> x(300, 1.0f);
  std::vector<uint8_t> q(4096);
  EXPECT_THROW(quantized_bytes(DType::Q8_0, 33), Error);
  EXPECT_THROW(quantize_row(DType::Q4_K, x.data(), q.data(), 300), Error);
  EXPECT_THROW(dequantize_row(DType::Q4_0, q.data(), x.data(), 40), Error);
  EXPECT_THROW(ref::dequantize_row(DType::Q6_K, q.data(), x.data(), 128), Error);
  ThreadPool pool(1);
  const Matrix W{DType::Q8_0, 2, 48, q.data()};
  EXPECT_THROW(matmul(W, x.data(), 1, x.data(), pool), Error);
}

// ---- reference dequantizers on hand-built blocks ------------------------------------------------

TEST(RefDequant, FloatTypes) {
  const uint16_t f16[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x3800, 0x8000, 0x0400, 0x3555};
  const float f16_want[] = {1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24), 0.5f, -0.0f,
                            std::ldexp(1.0f, -14), 0.333251953125f};
  std::vector<float> y = ref_dequant(DType::F16, reinterpret_cast<const uint8_t*>(f16), 8);
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(same_bits(y[i], f16_want[i])) << i;

  const uint16_t bf16[] = {0x3F80, 0xC000, 0x7F7F, 0x0001, 0x3EAB};
  const float bf16_want[] = {1.0f, -2.0f, bits_to_f32(0x7F7F0000u), bits_to_f32(0x00010000u),
                             bits_to_f32(0x3EAB0000u)};
  y = ref_dequant(DType::BF16, reinterpret_cast<const uint8_t*>(bf16), 5);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(same_bits(y[i], bf16_want[i])) << i;

  const float f32[] = {1.5f, -0.0f, 3.0e38f};
  y = ref_dequant(DType::F32, reinterpret_cast<const uint8_t*>(f32), 3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(same_bits(y[i], f32[i])) << i;
}

TEST(RefDequant, Q8_0) {
  BlockQ8_0 b[2];
  b[0].d = 0x3800;  // 0.5
  b[1].d = 0xC400;  // -4
  for (int j = 0; j < 32; ++j) {
    b[0].qs[j] = int8_t(j - 16);
    b[1].qs[j] = int8_t(j == 0 ? -128 : 127 - j);
  }
  const std::vector<float> y = ref_dequant(DType::Q8_0, reinterpret_cast<const uint8_t*>(b), 64);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(y[j], 0.5f * float(j - 16)) << j;
    EXPECT_EQ(y[32 + j], -4.0f * float(j == 0 ? -128 : 127 - j)) << j;
  }
}

TEST(RefDequant, Q4_0) {
  BlockQ4_0 b;
  b.d = 0x4000;  // 2
  for (int j = 0; j < 16; ++j) b.qs[j] = uint8_t(j | ((15 - j) << 4));
  const std::vector<float> y = ref_dequant(DType::Q4_0, reinterpret_cast<const uint8_t*>(&b), 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 2.0f * float(j - 8)) << j;             // low nibbles: values 0..15
    EXPECT_EQ(y[j + 16], 2.0f * float(15 - j - 8)) << j;   // high nibbles: values 16..31
  }
}

// Packs 8 six-bit scales and mins into Q4_K's 12 bytes, written from the layout description.
void pack_q4k_scales(const uint8_t sc[8], const uint8_t m[8], uint8_t out[12]) {
  for (int j = 0; j < 4; ++j) {
    out[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    out[j + 4] = uint8_t((m[j] & 63) | ((m[j + 4] >> 4) << 6));
    out[j + 8] = uint8_t((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
  }
}

TEST(RefDequant, Q4_K) {
  // Scales and mins with high bits set in sub-blocks 4-7, so every packed field is exercised.
  const uint8_t sc[8] = {5, 12, 19, 26, 33, 40, 47, 63};
  const uint8_t mn[8] = {63, 58, 53, 48, 43, 38, 33, 17};
  BlockQ4_K b;
  b.d = 0x3C00;     // 1
  b.dmin = 0x3800;  // 0.5
  pack_q4k_scales(sc, mn, b.scales);
  for (int j = 0; j < 8; ++j) {
    uint8_t s, m;
    q4k_scale_min(j, b.scales, &s, &m);
    EXPECT_EQ(s, sc[j]) << "scale of sub-block " << j;
    EXPECT_EQ(m, mn[j]) << "min of sub-block " << j;
  }
  // Value i has quant (7i + i/32) % 16: group g = i/64 of bytes qs[32g..], low nibbles first.
  auto quant = [](int i) { return (7 * i + i / 32) % 16; };
  std::memset(b.qs, 0, sizeof b.qs);
  for (int i = 0; i < 256; ++i) {
    const int g = i / 64, w = i % 64;
    b.qs[32 * g + w % 32] |= uint8_t(quant(i) << (w < 32 ? 0 : 4));
  }
  const std::vector<float> y = ref_dequant(DType::Q4_K, reinterpret_cast<const uint8_t*>(&b), 256);
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32;
    EXPECT_EQ(y[i], float(sc[s] * quant(i)) - 0.5f * float(mn[s])) << i;
  }
}

TEST(RefDequant, Q6_K) {
  BlockQ6_K b;
  std::memset(&b, 0, sizeof b);
  b.d = 0x3400;  // 0.25
  for (int s = 0; s < 16; ++s) b.scales[s] = int8_t(s % 2 ? -(s + 1) : s + 100);
  auto quant = [](int i) { return (11 * i + 5) % 64; };  // 6-bit, stored value (x uses q - 32)
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, j = i % 128, l = j % 32, quarter = j / 32, q = quant(i);
    uint8_t* ql = b.ql + 64 * h + (quarter % 2 ? 32 : 0);
    ql[l] |= uint8_t((q & 0xF) << (quarter < 2 ? 0 : 4));
    b.qh[32 * h + l] |= uint8_t((q >> 4) << (2 * quarter));
  }
  const std::vector<float> y = ref_dequant(DType::Q6_K, reinterpret_cast<const uint8_t*>(&b), 256);
  for (int i = 0; i < 256; ++i)
    EXPECT_EQ(y[i], 0.25f * float(b.scales[i / 16]) * float(quant(i) - 32)) << i;
}

// ---- Q8_0 / Q4_0 quantizers: bit-exact on hand-computed blocks ----------------------------------

TEST(Quantize, Q8_0ByHand) {
  // amax 127 -> d = 1 exactly, q = roundf(x): halves round away from zero.
  std::vector<float> x(32, 0.0f);
  const float v[] = {127, -127, 2.5f, -2.5f, 0.5f, -0.5f, 1.49f, -3.51f, 100.2f, 0.25f};
  const int8_t want[] = {127, -127, 3, -3, 1, -1, 1, -4, 100, 0};
  for (int j = 0; j < 10; ++j) x[j] = v[j];
  std::vector<uint8_t> q = quantize(DType::Q8_0, x);
  BlockQ8_0 b;
  std::memcpy(&b, q.data(), sizeof b);
  EXPECT_EQ(b.d, 0x3C00);
  for (int j = 0; j < 10; ++j) EXPECT_EQ(b.qs[j], want[j]) << j;
  for (int j = 10; j < 32; ++j) EXPECT_EQ(b.qs[j], 0) << j;

  // Negative maximum: amax = 63.5 -> d = 0.5, q = 2x.
  for (int j = 0; j < 32; ++j) x[j] = -63.5f + float(j);
  q = quantize(DType::Q8_0, x);
  std::memcpy(&b, q.data(), sizeof b);
  EXPECT_EQ(b.d, 0x3800);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(b.qs[j], -127 + 2 * j) << j;

  // All zero: d = 0, q = 0.
  std::fill(x.begin(), x.end(), 0.0f);
  q = quantize(DType::Q8_0, x);
  for (uint8_t byte : q) EXPECT_EQ(byte, 0);
}

BlockQ4_0 q4_0_of(const std::vector<float>& x) {
  const std::vector<uint8_t> q = quantize(DType::Q4_0, x);
  BlockQ4_0 b;
  std::memcpy(&b, q.data(), sizeof b);
  return b;
}
int q4_0_quant(const BlockQ4_0& b, int j) { return j < 16 ? b.qs[j] & 0xF : b.qs[j - 16] >> 4; }

TEST(Quantize, Q4_0ByHand) {
  // Magnitude tie -8 / +8: the first (-8) is the max, d = -8/-8 = 1, q = min(15, trunc(x + 8.5)).
  std::vector<float> x(32, 0.0f);
  x[3] = -8.0f;
  x[20] = 8.0f;
  x[0] = 0.49f;    // 8.99 -> 8
  x[1] = 0.5f;     // 9.0  -> 9
  x[2] = -0.51f;   // 7.99 -> 7
  x[4] = 7.4f;     // 15.9 -> 15
  x[17] = -7.6f;   // 0.9  -> 0
  x[30] = -0.5f;   // 8.0  -> 8
  BlockQ4_0 b = q4_0_of(x);
  EXPECT_EQ(b.d, 0x3C00);
  const int want[32] = {8, 9, 7, 0, 15, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8,
                        8, 0, 8, 8, 15, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8};
  for (int j = 0; j < 32; ++j) EXPECT_EQ(q4_0_quant(b, j), want[j]) << j;

  // Same tie the other way round: +8 first -> d = -1, so +8 -> 0 and -8 -> 16 clamped to 15.
  std::fill(x.begin(), x.end(), 0.0f);
  x[5] = 8.0f;
  x[6] = -8.0f;
  x[7] = 1.0f;  // -1 + 8.5 = 7.5 -> 7
  b = q4_0_of(x);
  EXPECT_EQ(b.d, 0xBC00);
  EXPECT_EQ(q4_0_quant(b, 5), 0);
  EXPECT_EQ(q4_0_quant(b, 6), 15);
  EXPECT_EQ(q4_0_quant(b, 7), 7);
  EXPECT_EQ(q4_0_quant(b, 8), 8);

  // Negative max -4: d = 0.5, id = 2.
  for (int j = 0; j < 32; ++j) x[j] = -4.0f + 0.25f * float(j);  // -4 .. 3.75
  b = q4_0_of(x);
  EXPECT_EQ(b.d, 0x3800);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(q4_0_quant(b, j), std::min(15, int(2 * x[j] + 8.5f))) << j;

  // All zero: max stays 0.0f, d = 0.0f / -8 = -0.0 (fp16 0x8000, as ggml writes it), id = 0,
  // every quant trunc(8.5) = 8.
  std::fill(x.begin(), x.end(), 0.0f);
  b = q4_0_of(x);
  EXPECT_EQ(b.d, 0x8000);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(b.qs[j], 0x88) << j;
}

TEST(Quantize, FloatTypesRoundToNearestEven) {
  const std::vector<float> x = {1.0f + std::ldexp(1.0f, -11), 1.0f + 3 * std::ldexp(1.0f, -11),
                                1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8)};
  std::vector<uint8_t> q = quantize(DType::F16, x);
  uint16_t h[4];
  std::memcpy(h, q.data(), 8);
  EXPECT_EQ(h[0], 0x3C00);  // tie -> even
  EXPECT_EQ(h[1], 0x3C02);
  q = quantize(DType::BF16, x);
  std::memcpy(h, q.data(), 8);
  EXPECT_EQ(h[2], 0x3F80);
  EXPECT_EQ(h[3], 0x3F82);
}

TEST(Quantize, KQuantsZeroBlock) {
  const std::vector<float> x(256, 0.0f);
  for (DType t : {DType::Q4_K, DType::Q6_K}) {
    const std::vector<uint8_t> q = quantize(t, x);
    const std::vector<float> y = ref_dequant(t, q.data(), 256);
    for (float v : y) EXPECT_EQ(v, 0.0f) << dtype_name(t);
  }
}

// ---- round trips --------------------------------------------------------------------------------

TEST(Quantize, RoundTripError) {
  struct Bound {
    DType t;
    double rel_rms;  // ‖x - dq(q(x))‖ / ‖x‖ on Gaussian data
  };
  // Measured on this data: F16 2.1e-4, BF16 1.6e-3, Q8_0 5.2e-3, Q4_0 0.084, Q4_K 0.071,
  // Q6_K 0.018 (the same at scale 1 and for other seeds).
  const Bound bounds[] = {{DType::F32, 0.0},    {DType::F16, 3e-4},   {DType::BF16, 2.5e-3},
                          {DType::Q8_0, 7e-3},  {DType::Q4_0, 0.10},  {DType::Q4_K, 0.085},
                          {DType::Q6_K, 0.022}};
  const int64_t n = 4096;
  const std::vector<float> x = normal(n, 7, 0.02f);
  for (const Bound& b : bounds) {
    const std::vector<uint8_t> q = quantize(b.t, x);
    const std::vector<float> y = ref_dequant(b.t, q.data(), n);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; ++i) {
      num += double(x[i] - y[i]) * double(x[i] - y[i]);
      den += double(x[i]) * double(x[i]);
    }
    EXPECT_LE(std::sqrt(num / den), b.rel_rms) << dtype_name(b.t);
  }
  // Per element, Q8_0: half a step, plus up to 127 steps times fp16's rounding of d (2^-11).
  const std::vector<uint8_t> q8 = quantize(DType::Q8_0, x);
  const std::vector<float> y8 = ref_dequant(DType::Q8_0, q8.data(), n);
  for (int64_t b = 0; b < n / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
    for (int j = 0; j < 32; ++j)
      EXPECT_LE(std::fabs(x[32 * b + j] - y8[32 * b + j]), amax / 127 * 0.57f) << 32 * b + j;
  }
}

// ---- fast dequantize == reference ---------------------------------------------------------------

// Random valid rows: quantized from data at several scales, plus (for the block types) random bytes
// with finite fp16 scales.
std::vector<uint8_t> random_row(DType t, int64_t n, uint32_t seed) {
  std::vector<float> x = normal(n, seed, 0.05f);
  for (int64_t i = 0; i < n; i += 97) x[size_t(i)] *= 40.0f;  // outliers
  std::vector<uint8_t> q = quantize(t, x);
  if (is_quantized(t) && seed % 2) {
    std::mt19937 rng(seed);
    for (uint8_t& byte : q) byte = uint8_t(rng());
    const DTypeInfo info = dtype_info(t);
    for (size_t b = 0; b < q.size() / info.block_bytes; ++b) {
      uint8_t* blk = q.data() + b * info.block_bytes;
      auto finite = [&](size_t off) { blk[off + 1] &= 0xBB; };  // fp16 exponent <= 14: |d| < 1
      if (t == DType::Q6_K) finite(208);
      else finite(0);
      if (t == DType::Q4_K) finite(2);
    }
  }
  return q;
}

TEST(FastDequant, BitExactWithReference) {
  for_each_simd_level([] {
    for (DType t : kAllTypes) {
      const int64_t bs = dtype_info(t).block_size;
      std::vector<int64_t> sizes = {bs, 2 * bs, 3 * bs, 4096};
      if (bs == 1) sizes.insert(sizes.end(), {5, 15, 16, 17, 31, 33, 100, 1001});
      for (int64_t n : sizes) {
        for (uint32_t seed : {1u, 2u, 3u, 4u}) {
          const std::vector<uint8_t> q = random_row(t, n, seed + uint32_t(n));
          const std::vector<float> want = ref_dequant(t, q.data(), n);
          std::vector<float> got(size_t(n) + 1, -1.0f);
          dequantize_row(t, q.data(), got.data(), n);
          for (int64_t i = 0; i < n; ++i)
            ASSERT_TRUE(same_bits(got[i], want[i]))
                << dtype_name(t) << " n=" << n << " i=" << i << ": " << got[i] << " vs " << want[i];
          EXPECT_EQ(got[size_t(n)], -1.0f) << "wrote past the end";
        }
      }
    }
  });
}

// ---- matmul -------------------------------------------------------------------------------------

// A [rows][cols] weight matrix in dtype t (made by quantizing Gaussian floats) and its storage.
struct TestMatrix {
  std::vector<uint8_t> bytes;
  Matrix m;
  TestMatrix(DType t, int64_t rows, int64_t cols, uint32_t seed, size_t misalign = 0) {
    const size_t rb = row_bytes(t, cols);
    bytes.resize(rb * size_t(rows) + misalign);
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<float> x = normal(cols, seed * 1000 + uint32_t(r), 0.05f);
      quantize_row(t, x.data(), bytes.data() + misalign + rb * size_t(r), cols);
    }
    m = Matrix{t, rows, cols, bytes.data() + misalign};
  }
};

// x as matmul uses it for W: BF16 weights take the activations rounded to bf16.
std::vector<float> effective_input(const Matrix& W, const float* x, int64_t T) {
  std::vector<float> v(x, x + T * W.cols);
  if (W.dtype == DType::BF16)
    for (float& f : v) f = bf16_to_f32(f32_to_bf16(f));
  return v;
}

// |fast - ref| per element, relative to sum_k |w_k x_k| (the size a float sum's error scales with).
void expect_close_to_ref(const Matrix& W, const float* x_in, int64_t T, const float* y,
                         const std::string& what) {
  const std::vector<float> xe = effective_input(W, x_in, T);
  const float* x = xe.data();
  std::vector<float> want(size_t(T * W.rows));
  ref::matmul(W, x, T, want.data());
  std::vector<float> w(size_t(W.cols));
  double worst = 0;
  for (int64_t r = 0; r < W.rows; ++r) {
    ref::dequantize_row(W.dtype, W.row(r), w.data(), W.cols);
    for (int64_t t = 0; t < T; ++t) {
      double mag = 0;
      for (int64_t k = 0; k < W.cols; ++k) mag += std::fabs(double(w[size_t(k)]) * x[t * W.cols + k]);
      const double err = std::fabs(double(y[t * W.rows + r]) - want[size_t(t * W.rows + r)]);
      if (mag > 0) worst = std::max(worst, err / mag);
      else ASSERT_EQ(y[t * W.rows + r], 0.0f) << what;
    }
  }
  EXPECT_LE(worst, 1e-5) << what;
}

// The float path (quantized dtypes too, with int8 activations off).
struct FloatPath {
  FloatPath() { set_int8_activations(false); }
  ~FloatPath() { set_int8_activations(true); }
};

TEST(Matmul, MatchesReferenceOverAwkwardShapes) {
  const FloatPath float_path;
  ThreadPool pool(1);
  for_each_simd_level([&] {
    for (DType t : kAllTypes) {
      const int64_t bs = dtype_info(t).block_size;
      std::vector<int64_t> cols = {bs, 2 * bs, 3 * bs, 4096};
      if (bs == 1) cols.insert(cols.end(), {37, 100, 1000});
      for (int64_t K : cols) {
        for (int64_t rows : {1, 3, 17, 64}) {
          const TestMatrix W(t, rows, K, uint32_t(rows + K));
          for (int64_t T : {1, 2, 5, 33}) {
            if (K == 4096 && rows == 64 && T == 33 && t != DType::Q4_K) continue;  // keep it quick
            const std::vector<float> x = normal(T * K, uint32_t(T * 31 + K));
            std::vector<float> y(size_t(T * rows), NAN);
            matmul(W.m, x.data(), T, y.data(), pool);
            expect_close_to_ref(W.m, x.data(), T, y.data(),
                                std::string(dtype_name(t)) + " rows=" + std::to_string(rows) +
                                    " T=" + std::to_string(T) + " K=" + std::to_string(K));
          }
        }
      }
    }
  });
}

// Every way of running the same product gives the same bits: 1, 2, 3 threads; AVX2 and AVX-512;
// all tokens at once or one token per call (decode == prefill); misaligned x, y and W.
TEST(Matmul, BitwiseReproducible) {
  ThreadPool p1(1), p2(2), p3(3);
  for (const bool int8 : {false, true})
  for (DType t : kAllTypes) {
    if (int8 && !int8_activation_dtype(t)) continue;
    set_int8_activations(int8);
    SCOPED_TRACE(int8 ? "int8 activations" : "float path");
    const int64_t K = t == DType::F32 || t == DType::F16 || t == DType::BF16 ? 1000 + 7 : 1536;
    const int64_t rows = 67, T = 70;  // several tiles and a partial one; two token groups
    const TestMatrix W(t, rows, K, 99);
    const std::vector<float> x = normal(T * K, 5);
    std::vector<float> base(size_t(T * rows));
    matmul(W.m, x.data(), T, base.data(), p1);
    if (!int8) expect_close_to_ref(W.m, x.data(), T, base.data(), std::string(dtype_name(t)) + " 67x70");

    auto expect_same = [&](const float* y, const std::string& what) {
      for (int64_t i = 0; i < T * rows; ++i)
        ASSERT_TRUE(same_bits(y[i], base[size_t(i)])) << dtype_name(t) << " " << what << " i=" << i;
    };
    for (ThreadPool* p : {&p2, &p3}) {
      std::vector<float> y(size_t(T * rows));
      matmul(W.m, x.data(), T, y.data(), *p);
      expect_same(y.data(), std::to_string(p->size()) + " threads");
    }
    for_each_simd_level([&] {
      std::vector<float> y(size_t(T * rows));
      matmul(W.m, x.data(), T, y.data(), p2);
      expect_same(y.data(), "simd level");
    });
    for_each_simd_level([&] {  // one token per call (the single-token kernels)
      std::vector<float> y(size_t(T * rows));
      for (int64_t i = 0; i < T; ++i) matmul(W.m, x.data() + i * K, 1, y.data() + i * rows, p2);
      expect_same(y.data(), "token by token");
      for (int64_t i = 0; i < 5; ++i) matmul(W.m, x.data() + i * 5 * K, 5, y.data() + i * 5 * rows, p2);
      expect_same(y.data(), "5 tokens at a time");  // (first 25 tokens; the rest from above)
    });
    {  // x and y one float off, W 4 bytes off
      const TestMatrix Wm(t, rows, K, 99, 4);
      std::vector<float> xs(x.size() + 1), ys(size_t(T * rows) + 1);
      std::memcpy(xs.data() + 1, x.data(), x.size() * 4);
      matmul(Wm.m, xs.data() + 1, T, ys.data() + 1, p3);
      expect_same(ys.data() + 1, "misaligned");
    }
  }
  set_int8_activations(true);
}

// ---- int8 activations ---------------------------------------------------------------------------

const DType kInt8Types[] = {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K};

TEST(Int8Matmul, RoutesQuantizedDtypesOnly) {
  for (DType t : kAllTypes) EXPECT_EQ(int8_activation_dtype(t), is_quantized(t)) << dtype_name(t);
}

TEST(Int8Matmul, ActivationQuantizerMatchesReference) {
  const int64_t T = 3, K = 256;
  std::vector<float> x = normal(T * K, 3);
  for (int64_t i = 0; i < 32; ++i) x[size_t(i)] = 0.0f;                          // all-zero block
  for (int64_t i = 32; i < 64; ++i) x[size_t(i)] = float(i - 48) * 0.5f;        // ties at .5
  x[100] = 1e-30f;                                                              // tiny values
  std::vector<XBlock> got(size_t(T * K / 32)), want(got.size());
  quantize_activations(x.data(), T, K, got.data());
  ref::quantize_activations(x.data(), T, K, want.data());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(std::memcmp(got[i].qs, want[i].qs, 32), 0) << i;
    EXPECT_TRUE(same_bits(got[i].d, want[i].d)) << i;
    EXPECT_EQ(got[i].sum, want[i].sum) << i;
    EXPECT_EQ(got[i].sum_lo, want[i].sum_lo) << i;
    EXPECT_TRUE(same_bits(got[i].dsum, want[i].dsum)) << i;
  }
  // Block-major layout; a block of zeros has d = 0 and quants 0; |q| <= 127, max reaches 127.
  EXPECT_EQ(got[0].d, 0.0f);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(got[0].qs[i], 0);
  const XBlock& b1 = got[size_t(1 * T + 0)];  // token 0, block 1: -8 .. 7.5 in steps of 0.5
  EXPECT_EQ(b1.qs[0], -127);
  int sum = 0;
  for (int i = 0; i < 32; ++i) {
    EXPECT_NEAR(float(b1.qs[i]) * b1.d, x[size_t(32 + i)], 0.57f * 8.0f / 127.0f) << i;
    sum += b1.qs[i];
  }
  EXPECT_EQ(b1.sum, sum);
}

// The fast int8 path == ref::matmul_q8, bit for bit, over odd shapes at every SIMD level; and
// both within the bound that rounding x to int8 allows of the float reference.
TEST(Int8Matmul, BitExactWithReference) {
  ThreadPool pool(2);
  for_each_simd_level([&] {
    for (DType t : kInt8Types) {
      const int64_t bs = dtype_info(t).block_size;
      for (int64_t K : {bs, 2 * bs, 4 * bs + (bs == 32 ? 96 : 0), int64_t(2048)}) {
        for (int64_t rows : {1, 5, 16, 17, 40}) {
          const TestMatrix W(t, rows, K, uint32_t(rows * 7 + K));
          for (int64_t T = 1; T <= 17; T += (K == 2048 ? 4 : 1)) {
            const std::string what = std::string(dtype_name(t)) + " rows=" + std::to_string(rows) +
                                     " K=" + std::to_string(K) + " T=" + std::to_string(T);
            std::vector<float> x = normal(T * K, uint32_t(T * 131 + K), 0.5f);
            for (int64_t i = 0; i < T * K; i += 29) x[size_t(i)] *= 20.0f;  // outliers
            std::vector<float> got(size_t(T * rows), NAN), want(size_t(T * rows), NAN);
            matmul(W.m, x.data(), T, got.data(), pool);
            ref::matmul_q8(W.m, x.data(), T, want.data());
            for (int64_t i = 0; i < T * rows; ++i)
              ASSERT_TRUE(same_bits(got[size_t(i)], want[size_t(i)]))
                  << what << " i=" << i << ": " << got[size_t(i)] << " vs " << want[size_t(i)];
            if (K != 2048 || rows != 17) continue;
            // |y - y_float| <= sum_i |w_i| * |x_i - dq(q(x_i))| + float rounding, where one block's
            // activation error is at most d/2 + 127 * |fp16(d) - d| <= 0.57 d (d = amax / 127).
            std::vector<float> yf(size_t(T * rows)), w(static_cast<size_t>(K));
            ref::matmul(W.m, x.data(), T, yf.data());
            for (int64_t r = 0; r < rows; ++r) {
              ref::dequantize_row(t, W.m.row(r), w.data(), K);
              for (int64_t tt = 0; tt < T; ++tt) {
                double bound = 0, mag = 0;
                for (int64_t b = 0; b < K / 32; ++b) {
                  double amax = 0, wsum = 0;
                  for (int i = 0; i < 32; ++i) {
                    const int64_t k = 32 * b + i;
                    amax = std::max(amax, double(std::fabs(x[size_t(tt * K + k)])));
                    wsum += std::fabs(double(w[size_t(k)]));
                    mag += std::fabs(double(w[size_t(k)]) * x[size_t(tt * K + k)]);
                  }
                  bound += wsum * 0.57 * amax / 127;
                }
                EXPECT_LE(std::fabs(double(got[size_t(tt * rows + r)]) - yf[size_t(tt * rows + r)]),
                          bound + 1e-5 * mag) << what << " r=" << r;
              }
            }
          }
        }
      }
    }
  });
}

// Hand-built Q8_0 weights and activations that are exact in int8: the product is exact too.
// Weights in tiles (weight_tiles.h) give the same bits as the same weights in rows, for every
// token count (decode kernels up to 8, the packed path beyond), every SIMD level and thread
// count, with tail rows (rows % 16) and matrices smaller than one group; ref::matmul_q8 reads
// tiles through the untiler and agrees.
TEST(Int8Matmul, TilesGiveTheSameBitsAsRows) {
  ThreadPool p1(1), p2(2), p3(3);
  for (DType t : kInt8Types) {
    const int64_t K = dtype_info(t).block_size == 32 ? 32 * 7 : 768;  // odd block counts: a last unpaired block
    for (int64_t rows : {16, 48, 40, 7}) {
      const TestMatrix W(t, rows, K, uint32_t(rows * 3 + K));
      std::vector<uint8_t> tiled_bytes = W.bytes;
      Matrix T = W.m;
      T.data = tiled_bytes.data();
      ASSERT_TRUE(to_tiles(T, tiled_bytes.data())) << dtype_name(t);
      if (rows >= 16) ASSERT_NE(tiled_bytes, W.bytes) << "tiling changed nothing";
      else ASSERT_EQ(tiled_bytes, W.bytes) << "7 rows: no whole group, nothing to reorder";
      for (int64_t n : {1, 2, 3, 5, 8, 9, 17, 40}) {
        SCOPED_TRACE(std::string(dtype_name(t)) + " rows=" + std::to_string(rows) + " tokens=" + std::to_string(n));
        const std::vector<float> x = normal(n * K, uint32_t(n + rows));
        std::vector<float> want(size_t(n * rows)), got(want.size()), ref_tiles(want.size());
        matmul(W.m, x.data(), n, want.data(), p2);
        ref::matmul_q8(T, x.data(), n, ref_tiles.data());
        for (size_t i = 0; i < want.size(); ++i) ASSERT_TRUE(same_bits(ref_tiles[i], want[i])) << "ref i=" << i;
        for_each_simd_level([&] {
          for (ThreadPool* p : {&p1, &p2, &p3}) {
            std::fill(got.begin(), got.end(), -1.0f);
            matmul(T, x.data(), n, got.data(), *p);
            for (size_t i = 0; i < want.size(); ++i)
              ASSERT_TRUE(same_bits(got[i], want[i])) << p->size() << " threads, i=" << i << ": " << got[i]
                                                      << " vs " << want[i];
          }
        });
      }
    }
  }
}

TEST(Int8Matmul, ExactOnRepresentableValues) {
  ThreadPool pool(1);
  for_each_simd_level([&] {
    std::vector<BlockQ8_0> w(2);
    std::vector<float> x(64);
    for (int b = 0; b < 2; ++b) {
      w[b].d = 0x3800;  // 0.5
      for (int i = 0; i < 32; ++i) {
        w[b].qs[i] = int8_t(i % 2 ? -128 + i : 127 - i);  // includes -127 and -128 + 31
        x[32 * b + i] = float((i * 37) % 255 - 127);       // integers in [-127, 127], max 127 present
      }
    }
    x[5] = 127.0f;
    x[32 + 5] = -127.0f;
    double want = 0;
    for (int k = 0; k < 64; ++k) want += 0.5 * w[k / 32].qs[k % 32] * double(x[k]);
    const Matrix W{DType::Q8_0, 1, 64, reinterpret_cast<const uint8_t*>(w.data())};
    float y = NAN;
    matmul(W, x.data(), 1, &y, pool);
    EXPECT_EQ(double(y), want);
  });
}

// The decode kernels (1-4 tokens, weights read in place): == ref::matmul_q8 bit for bit at every
// SIMD level and thread count, over row counts around the 16-row groups (each thread's last group
// partial), long rows (the prefetch runs past each row's end into the next group) and misaligned W.
TEST(Int8Matmul, DecodeKernelsBitExact) {
  ThreadPool p1(1), p2(2), p3(3);
  for_each_simd_level([&] {
    for (DType t : kInt8Types) {
      const int64_t bs = dtype_info(t).block_size;
      for (int64_t K : {bs, 3 * bs, int64_t(4608)}) {
        for (int64_t rows : {1, 15, 33, 50}) {
          const TestMatrix W(t, rows, K, uint32_t(rows * 3 + K), K == bs ? 4 : 0);
          for (int64_t T = 1; T <= 4; ++T) {
            const std::vector<float> x = normal(T * K, uint32_t(T * 7 + K));
            std::vector<float> want(size_t(T * rows));
            ref::matmul_q8(W.m, x.data(), T, want.data());
            for (ThreadPool* p : {&p1, &p2, &p3}) {
              std::vector<float> got(size_t(T * rows) + 1, NAN);
              matmul(W.m, x.data(), T, got.data(), *p);
              for (int64_t i = 0; i < T * rows; ++i)
                ASSERT_TRUE(same_bits(got[size_t(i)], want[size_t(i)]))
                    << dtype_name(t) << " K=" << K << " rows=" << rows << " T=" << T << " threads=" << p->size() << " i=" << i;
              EXPECT_TRUE(std::isnan(got.back()));  // nothing written past y
            }
          }
        }
      }
    }
  });
}

// Each token count 1..17 (the server's steps: a few tokens, every split into token blocks) on
// 1, 2 and 3 threads gives each token's bits from a one-token call, for every dtype.
TEST(Matmul, EveryTokenCountEqualsOneTokenAtATime) {
  ThreadPool p1(1), p2(2), p3(3);
  for (DType t : kAllTypes) {
    const int64_t K = dtype_info(t).block_size == 1 ? 300 + 7 : 512, rows = 37, kMaxT = 17;
    const TestMatrix W(t, rows, K, 3);
    const std::vector<float> x = normal(kMaxT * K, 9);
    std::vector<float> single(size_t(kMaxT * rows));
    for (int64_t i = 0; i < kMaxT; ++i) matmul(W.m, x.data() + i * K, 1, single.data() + i * rows, p1);
    if (int8_activation_dtype(t)) {  // int8 activations: the reference is ref::matmul_q8, bit for bit
      std::vector<float> want(single.size());
      ref::matmul_q8(W.m, x.data(), kMaxT, want.data());
      for (size_t i = 0; i < want.size(); ++i) ASSERT_TRUE(same_bits(single[i], want[i])) << dtype_name(t) << " i=" << i;
    } else {
      expect_close_to_ref(W.m, x.data(), kMaxT, single.data(), std::string(dtype_name(t)) + " one at a time");
    }
    for (int64_t T = 1; T <= kMaxT; ++T)
      for (ThreadPool* p : {&p1, &p2, &p3}) {
        std::vector<float> y(size_t(T * rows));
        matmul(W.m, x.data(), T, y.data(), *p);
        for (int64_t i = 0; i < T * rows; ++i)
          ASSERT_TRUE(same_bits(y[size_t(i)], single[size_t(i)]))
              << dtype_name(t) << " T=" << T << " threads=" << p->size() << " i=" << i;
      }
  }
}

TEST(Matmul, EmptyShapes) {
  ThreadPool pool(2);
  const TestMatrix W(DType::Q8_0, 5, 64, 1);
  std::vector<float> x(64, 1.0f), y(5, 7.0f);
  matmul(W.m, x.data(), 0, y.data(), pool);  // no tokens: nothing written
  for (float v : y) EXPECT_EQ(v, 7.0f);
}

// ---- BF16 weights: bf16 dot products ----------------------------------------------------------

void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_TRUE(same_bits(got[i], want[i])) << what << " i=" << i << ": " << got[i] << " vs " << want[i];
}

// Every SIMD level (vdpbf16ps, and its AVX-512 and AVX2 emulations), thread count and token
// count gives the bits of the scalar emulation, over shapes with partial 32-column steps, partial
// 1024-column chunks, partial tiles and partial row/token blocks.
TEST(MatmulBf16, BitExactWithScalarEmulation) {
  ThreadPool p1(1), p2(2), p3(3);
  for (int64_t K : {1, 2, 31, 32, 33, 100, 1000, 1056, 2085}) {
    for (int64_t rows : {1, 5, 17, 35}) {
      const TestMatrix W(DType::BF16, rows, K, uint32_t(7 * K + rows));
      const int64_t kMaxT = 17;
      const std::vector<float> x = normal(kMaxT * K, uint32_t(K + 3));
      std::vector<float> want(size_t(kMaxT * rows));
      ref::matmul_bf16(W.m, x.data(), kMaxT, want.data());
      for_each_simd_level([&] {
        for (int64_t T = 1; T <= kMaxT; ++T) {
          ThreadPool& pool = T % 3 == 0 ? p3 : T % 3 == 1 ? p1 : p2;
          std::vector<float> y(size_t(T * rows));
          matmul(W.m, x.data(), T, y.data(), pool);
          expect_same_bits(y, std::vector<float>(want.begin(), want.begin() + T * rows),
                           "K=" + std::to_string(K) + " rows=" + std::to_string(rows) + " T=" +
                               std::to_string(T) + " threads=" + std::to_string(pool.size()));
        }
      });
    }
  }
}

// Decode (1-4 tokens) takes one row per block while x is small and r_max rows past 16 KB of
// bf16 activations; long rows reach the second, with partial blocks and the next-block prefetch.
TEST(MatmulBf16, DecodeLongRowsBitExact) {
  ThreadPool p1(1), p2(2), p3(3);
  for (int64_t K : {4095, 8193, 9000}) {
    const int64_t rows = 37, kMaxT = 4;
    const TestMatrix W(DType::BF16, rows, K, uint32_t(K));
    const std::vector<float> x = normal(kMaxT * K, uint32_t(K + 1));
    std::vector<float> want(size_t(kMaxT * rows));
    ref::matmul_bf16(W.m, x.data(), kMaxT, want.data());
    for_each_simd_level([&] {
      for (int64_t T = 1; T <= kMaxT; ++T)
        for (ThreadPool* pool : {&p1, &p2, &p3}) {
          std::vector<float> y(size_t(T * rows));
          matmul(W.m, x.data(), T, y.data(), *pool);
          expect_same_bits(y, std::vector<float>(want.begin(), want.begin() + T * rows),
                           "K=" + std::to_string(K) + " T=" + std::to_string(T) +
                               " threads=" + std::to_string(pool->size()));
        }
    });
  }
}

// Subnormal weights and activations, products that underflow and sums that cancel to nearly
// zero: the emulations flush exactly where vdpbf16ps does.
TEST(MatmulBf16, SubnormalsFlushLikeTheInstruction) {
  const int64_t rows = 9, K = 96, T = 7;
  std::vector<uint8_t> bytes(size_t(rows * K) * 2);
  std::mt19937 rng(11);
  for (size_t i = 0; i < bytes.size() / 2; ++i) {
    // exponents across the subnormal boundary (bf16 exponent 0..12); rows 5.. some normal ones
    const bool tiny_row = int64_t(i) / K < 5;
    const uint32_t e = !tiny_row && rng() % 4 == 0 ? 100 + rng() % 40 : rng() % 13;
    const uint16_t h = uint16_t((rng() & 0x8000u) | (e << 7) | (rng() & 0x7Fu));
    std::memcpy(&bytes[2 * i], &h, 2);
  }
  const Matrix W{DType::BF16, rows, K, bytes.data()};
  std::vector<float> x(size_t(T * K));
  for (size_t i = 0; i < x.size(); ++i) {  // some subnormal; tokens 0-2 all tiny
    float& v = x[i];
    const uint32_t e = rng() % 3 == 0 ? 0 : 60 + rng() % (int64_t(i) / K < 3 ? 40 : 70);
    v = bits_to_f32((rng() & 0x80000000u) | (e << 23) | (rng() & 0x7FFFFFu));
  }
  std::vector<float> want(size_t(T * rows));
  ref::matmul_bf16(W, x.data(), T, want.data());
  int zeros = 0, subnormal_inputs = 0;
  for (float v : want) zeros += v == 0.0f;
  for (float v : x) subnormal_inputs += std::fpclassify(bf16_to_f32(f32_to_bf16(v))) == FP_SUBNORMAL;
  EXPECT_GT(zeros, 0);  // the cases are there
  EXPECT_GT(subnormal_inputs, 0);
  ThreadPool pool(2);
  for_each_simd_level([&] {
    std::vector<float> y(size_t(T * rows));
    matmul(W, x.data(), T, y.data(), pool);
    expect_same_bits(y, want, "subnormals");
  });
}

// ---- dot ----------------------------------------------------------------------------------------

TEST(Dot, MatchesReferenceAndMatmul) {
  for_each_simd_level([] {
    for (int64_t n : {0, 1, 7, 15, 16, 17, 31, 32, 33, 100, 128, 1000, 4096}) {
      const std::vector<float> a = normal(n + 1, uint32_t(n)), b = normal(n + 1, uint32_t(n + 1));
      const float got = dot_f32(a.data() + 1, b.data() + 1, n);  // misaligned
      const float want = ref::dot_f32(a.data() + 1, b.data() + 1, n);
      double mag = 0;
      for (int64_t i = 1; i <= n; ++i) mag += std::fabs(double(a[i]) * b[i]);
      EXPECT_LE(std::fabs(double(got) - want), 1e-6 * mag + 1e-30) << n;
      if (n == 0) continue;
      // One F32 row through matmul: the same summation order, the same bits.
      const Matrix W{DType::F32, 1, n, reinterpret_cast<const uint8_t*>(a.data() + 1)};
      ThreadPool pool(1);
      float y = NAN;
      matmul(W, b.data() + 1, 1, &y, pool);
      EXPECT_TRUE(same_bits(y, got)) << n;
    }
  });
}

}  // namespace
}  // namespace mixtral
