// Row-wise neural-network operations on float32 activations. They know nothing about Mixtral:
// the model composes them. Each is a plain loop the compiler vectorises; the heavy work
// (matrix products, dot products) lives in src/kernels.
#pragma once
#include <cstdint>

#include "model/config.h"

namespace mixtral::ops {

// out = x / sqrt(mean(x²) + eps) ⊙ w        x, w, out: [n]   (out may alias x)
void rmsnorm(const float* x, const float* w, float* out, int64_t n, float eps);

// Rotates each head of `x` ([n_heads][head_dim]) by the angles of position `pos`:
// pair i (i < head_dim/2) turns by pos · theta^(−2i/head_dim). `style` says which dimensions
// form pair i: (2i, 2i+1) for Interleaved, (i, i + head_dim/2) for HalfSplit.
// `inv_freq` holds theta^(−2i/head_dim) for i < head_dim/2 (see rope_inv_freq).
void rope(float* x, int64_t n_heads, int64_t head_dim, int64_t pos, const float* inv_freq,
          RopeStyle style);
void rope_inv_freq(float* inv_freq, int64_t head_dim, float theta);

// x = softmax(x) in place, computed stably (max subtracted).        x: [n]
void softmax(float* x, int64_t n);

// gate = silu(gate) ⊙ up    (SwiGLU's elementwise part; silu(g) = g·σ(g))     gate, up: [n]
void silu_mul(float* gate, const float* up, int64_t n);

// y += a · x        x, y: [n]
void axpy(float a, const float* x, float* y, int64_t n);

}  // namespace mixtral::ops
