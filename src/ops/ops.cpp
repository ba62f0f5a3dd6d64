#include "ops/ops.h"

#include <cmath>

namespace mixtral::ops {

void rmsnorm(const float* x, const float* w, float* out, int64_t n, float eps) {
  // Sum of squares in double: cheap next to the matrix products, and keeps the norm accurate
  // for wide rows (4096+) whatever the summation order.
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float scale = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * w[i];
}

void rope_inv_freq(float* inv_freq, int64_t head_dim, float theta) {
  for (int64_t i = 0; i < head_dim / 2; ++i)
    inv_freq[i] = float(std::pow(double(theta), -2.0 * double(i) / double(head_dim)));
}

void rope(float* x, int64_t n_heads, int64_t head_dim, int64_t pos, const float* inv_freq,
          RopeStyle style) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double angle = double(pos) * double(inv_freq[i]);
    const float c = float(std::cos(angle)), s = float(std::sin(angle));
    const int64_t a = style == RopeStyle::Interleaved ? 2 * i : i;
    const int64_t b = style == RopeStyle::Interleaved ? 2 * i + 1 : i + half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + h * head_dim;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  const float inv = float(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void silu_mul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace mixtral::ops
