// Internal to src/kernels: ref::matmul_q8's blocks of IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M,
// straight from the block layouts (quant/blocks.h), for the contract of matmul_q8.h.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "kernels/matmul_q8.h"

namespace mixtral::ref {

// 32-column block b of a row of type t: I = i0 · (its values 0..15 · x) + i1 · (values 16..31 ·
// x), with the values integers (IQ2: signed grid magnitudes; IQ1: 8 g +- 1) and i0 / i1 the half
// scales 2 s + 1, and dw = d / 8, so that the block is dw · dx · I. False (nothing set) for any
// other t.
bool iq2_iq1_block(DType t, const uint8_t* row, int64_t b, const XBlock& xq, int32_t& I, float& dw);

}  // namespace mixtral::ref
