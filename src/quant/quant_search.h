// Internal to src/quant: the scale searches ggml's quantizers share (ggml-quants.c), each fitting
// one group of n values x to integer levels L times a float scale (and a min for the asymmetric
// formats). They are the arithmetic that decides every quantized byte, so each keeps ggml's float
// operations in ggml's order (the file is built without fused multiply-add, as ggml's is).
#pragma once
#include <cstdint>

namespace mixtral::quant {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS: below this a group is all zero

// Round to nearest, ties to even, for |x| < 2^22 (ggml's nearest_int: adding 1.5 * 2^23 leaves the
// rounded integer in the low mantissa bits).
int nearest_int(float x);

// Symmetric levels: x ≈ scale * (L - nmax), L in [0, 2 nmax). Returns scale. The search tries
// 19 inverse scales around -nmax / (the value of largest magnitude) and keeps the one with the
// best weighted least-squares fit; weights are qw when given, else by rmse_type
// (1: x², 2: 1, 3: |x|, 4: sqrt|x|). rmse_type 0: no search, scale = the first guess; negative:
// one least-squares step only.
float make_qx_quants(int n, int nmax, const float* x, int8_t* L, int rmse_type, const float* qw);

// Q3_K's variant: symmetric levels L in [0, 2 nmax), with do_rmse a few passes that move single
// values to the level that improves the x²-weighted fit.
float make_q3_quants(int n, int nmax, const float* x, int8_t* L, bool do_rmse);

// Asymmetric levels: x ≈ scale * L - min, L in [0, nmax], min >= 0 (written to *the_min).
// Tries nstep + 1 inverse scales (rmin + rdelta * is + nmax) / (max - min) and keeps the best
// weighted fit (absolute error when use_mad); weights null means x². Laux: n bytes of scratch.
// (ggml has two copies of this search, make_qkx2_quants and make_qkx3_quants, which compute the
// same thing whenever both apply.)
float make_qkx_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                      float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                      bool use_mad);

// Positive levels for positive x (the sub-block scales and mins of the K formats under an
// importance matrix): x ≈ scale * L, L in [0, nmax], weighted by quant_weights.
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* quant_weights);

}  // namespace mixtral::quant
