// Reference quantizers: float32 rows -> rows of any DType, byte for byte as ggml's reference path
// writes them (quantize_row_*_ref: what llama-quantize does without an importance matrix).
// Scalar and slow on purpose; used to make test weights and by conversion tools, never per token.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace mixtral {

// Bytes that n values of type t occupy. Throws Error unless n is a multiple of the block size.
size_t quantized_bytes(DType t, int64_t n);

// Writes quantized_bytes(t, n) bytes to dst.
//   F32: copy. F16, BF16: round to nearest even.
//   block types: ggml's reference path (quantize_row_*_ref), as quantize_rows without imatrix.
// All float32 arithmetic without fused multiply-add, as ggml's reference code is built.
// Throws Error unless n is a multiple of the block size, or when t needs an importance matrix.
void quantize_row(DType t, const float* src, uint8_t* dst, int64_t n);

// ggml_quantize_chunk: nrows rows of n_per_row values, with per-column importance weights
// (imatrix: n_per_row floats, e.g. an imatrix entry) or without (null: the reference path, as
// quantize_row). Every type of the llama.cpp family, byte for byte as ggml writes it. Throws
// Error when n_per_row is not a multiple of the block size, or when imatrix is null for a type
// that needs one (quantize_requires_imatrix).
void quantize_rows(DType t, const float* src, uint8_t* dst, int64_t nrows, int64_t n_per_row,
                   const float* imatrix);

// The tensor types ggml refuses to quantize without an importance matrix (IQ2_XXS, IQ2_XS, IQ1_S;
// llama-quantize's file-level rules add more, see model/quant_mix.h).
bool quantize_requires_imatrix(DType t);

}  // namespace mixtral
