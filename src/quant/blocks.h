// Quantized block formats, byte for byte as ggml writes them into GGUF files (ggml-common.h).
// Field names follow ggml's so the two can be read side by side. All multi-byte fields are
// little-endian IEEE half (fp16) values; the structs contain only 1- and 2-byte members, so they
// have no padding and 2-byte alignment. A row of n values is n / block_size blocks back to back.
//
// Value of element i (the formulas the reference dequantizers implement):
//   Q8_0  x = d * qs[i]
//   Q4_0  q = (i < 16 ? qs[i] & 0xF : qs[i - 16] >> 4);  x = d * (q - 8)
//   Q4_K  sub-block s = i / 32 (8 of them), each with a 6-bit scale sc[s] and 6-bit min m[s]
//         packed into scales[12] (see q4k_scale_min); q = 4-bit quant (see below);
//         x = (d * sc[s]) * q - (dmin * m[s])
//   Q6_K  16 sub-blocks of 16 with int8 scales; q = 6-bit quant - 32; x = (d * scales[i / 16]) * q
#pragma once
#include <cstdint>

namespace mixtral {

constexpr int QK8_0 = 32;  // values per Q8_0 block
constexpr int QK4_0 = 32;  // values per Q4_0 block
constexpr int QK_K = 256;  // values per K-quant super-block

struct BlockQ8_0 {
  uint16_t d;         // fp16 scale
  int8_t qs[QK8_0];   // quants
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");

struct BlockQ4_0 {
  uint16_t d;            // fp16 scale
  uint8_t qs[QK4_0 / 2]; // byte j: low nibble = q[j], high nibble = q[j + 16]
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 18 bytes");

// Q4_K: 8 sub-blocks of 32 values. Quants: the 256 values form 4 groups of 64; group g uses
// bytes qs[32g .. 32g+31]: value 64g + l is the low nibble of qs[32g + l], value 64g + 32 + l
// its high nibble (l < 32). So sub-block 2g is the low nibbles, 2g+1 the high nibbles.
struct BlockQ4_K {
  uint16_t d;             // fp16 super-block scale for the 6-bit sub-block scales
  uint16_t dmin;          // fp16 super-block scale for the 6-bit sub-block mins
  uint8_t scales[12];     // 8 scales + 8 mins, 6 bits each (q4k_scale_min)
  uint8_t qs[QK_K / 2];   // 4-bit quants
};
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block is 144 bytes");

// Q6_K: the 256 values form 2 halves of 128; half h uses ql[64h ..], qh[32h ..], scales[8h ..].
// Within a half, for l < 32 the four values l, l+32, l+64, l+96 are
//   low 4 bits:  ql[l] & 0xF,  ql[l+32] & 0xF,  ql[l] >> 4,  ql[l+32] >> 4
//   high 2 bits: (qh[l] >> 0) & 3, (qh[l] >> 2) & 3, (qh[l] >> 4) & 3, (qh[l] >> 6) & 3
// and value j of the half (j < 128) has scale scales[8h + j / 16].
struct BlockQ6_K {
  uint8_t ql[QK_K / 2];     // quants, low 4 bits
  uint8_t qh[QK_K / 4];     // quants, high 2 bits
  int8_t scales[QK_K / 16]; // 8-bit sub-block scales
  uint16_t d;               // fp16 super-block scale
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block is 210 bytes");

// The 6-bit scale and min of Q4_K sub-block j (0..7) from the 12 packed bytes (ggml's
// get_scale_min_k4). Bytes 0-3: scale j (low 6 bits) for j < 4, plus the top 2 bits of
// scale j+4 in bits 6-7. Bytes 4-7: min j for j < 4, plus the top 2 bits of min j+4.
// Bytes 8-11: low 4 bits of scale j+4 (low nibble) and of min j+4 (high nibble).
inline void q4k_scale_min(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// ================================ the rest of the llama.cpp family ==============================
// Layouts as ggml-common.h defines them (names follow ggml). The value formulas are in each
// reference dequantizer (kernels/dequant_*.cpp), which the tests check bit for bit against
// ggml's own dequantization (../shared/fixtures/blocks).

struct BlockQ4_1 {  // x = d * q + m, q 4-bit (nibbles as Q4_0)
  uint16_t d, m;
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block is 20 bytes");

struct BlockQ5_0 {  // x = d * (q - 16), q = nibble | (bit j of qh) << 4
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block is 22 bytes");

struct BlockQ5_1 {  // x = d * q + m
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block is 24 bytes");

struct BlockQ2_K {  // 16 sub-blocks of 16: x = d * (sc & 15) * q - dmin * (sc >> 4), q 2-bit
  uint8_t scales[QK_K / 16];
  uint8_t qs[QK_K / 4];
  uint16_t d, dmin;
};
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block is 84 bytes");

struct BlockQ3_K {  // 16 sub-blocks of 16: x = d * (sc - 32) * (q - 4 if the hmask bit is clear)
  uint8_t hmask[QK_K / 8];
  uint8_t qs[QK_K / 4];
  uint8_t scales[12];  // 16 6-bit scales
  uint16_t d;
};
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block is 110 bytes");

struct BlockQ5_K {  // as Q4_K with a fifth bit per value in qh
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[QK_K / 8];
  uint8_t qs[QK_K / 2];
};
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block is 176 bytes");

constexpr int QK4_NL = 32;
struct BlockIQ4_NL {  // x = d * kvalues_iq4nl[nibble]
  uint16_t d;
  uint8_t qs[QK4_NL / 2];
};
static_assert(sizeof(BlockIQ4_NL) == 18, "IQ4_NL block is 18 bytes");

struct BlockIQ4_XS {  // 8 sub-blocks of 32 with 6-bit scales (ls - 32)
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[QK_K / 64];
  uint8_t qs[QK_K / 2];
};
static_assert(sizeof(BlockIQ4_XS) == 136, "IQ4_XS block is 136 bytes");

struct BlockIQ3_XXS {  // qs: 64 grid indices, then 8 u32 of 4x7 sign bits + a 4-bit scale
  uint16_t d;
  uint8_t qs[3 * QK_K / 8];
};
static_assert(sizeof(BlockIQ3_XXS) == 98, "IQ3_XXS block is 98 bytes");

struct BlockIQ3_S {
  uint16_t d;
  uint8_t qs[QK_K / 4];
  uint8_t qh[QK_K / 32];
  uint8_t signs[QK_K / 8];
  uint8_t scales[QK_K / 64];
};
static_assert(sizeof(BlockIQ3_S) == 110, "IQ3_S block is 110 bytes");

struct BlockIQ2_XXS {
  uint16_t d;
  uint16_t qs[QK_K / 8];
};
static_assert(sizeof(BlockIQ2_XXS) == 66, "IQ2_XXS block is 66 bytes");

struct BlockIQ2_XS {
  uint16_t d;
  uint16_t qs[QK_K / 8];
  uint8_t scales[QK_K / 32];
};
static_assert(sizeof(BlockIQ2_XS) == 74, "IQ2_XS block is 74 bytes");

struct BlockIQ2_S {
  uint16_t d;
  uint8_t qs[QK_K / 4];
  uint8_t qh[QK_K / 32];
  uint8_t scales[QK_K / 32];
};
static_assert(sizeof(BlockIQ2_S) == 82, "IQ2_S block is 82 bytes");

struct BlockIQ1_S {
  uint16_t d;
  uint8_t qs[QK_K / 8];
  uint16_t qh[QK_K / 32];
};
static_assert(sizeof(BlockIQ1_S) == 50, "IQ1_S block is 50 bytes");

struct BlockIQ1_M {  // no d field: the fp16 scale is spread over the top nibbles of scales
  uint8_t qs[QK_K / 8];
  uint8_t qh[QK_K / 16];
  uint8_t scales[QK_K / 32];
};
static_assert(sizeof(BlockIQ1_M) == 56, "IQ1_M block is 56 bytes");

// The IQ2/IQ3 sign bytes: 7 stored sign bits, the 8th chosen so the number of minus signs is
// even (ggml's ksigns_iq2xs[i] = i | parity(i) << 7).
constexpr uint8_t iq_signs(int i) { return uint8_t(i | ((__builtin_popcount(unsigned(i)) & 1) << 7)); }

}  // namespace mixtral
