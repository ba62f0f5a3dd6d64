// An independent, deliberately plain float64 forward pass, written from the Hugging Face
// definitions (MixtralForCausalLM / MistralForCausalLM) rather than from the engine's code:
// whole-sequence recomputation (no KV cache), softmax over all experts then top-k then
// renormalise (HF's order), every expert evaluated densely and masked. It reads the engine's
// Weights only through ref::dequantize_row. Slow; for tiny models in tests.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <vector>

#include "core/fp16.h"
#include "kernels/dequant.h"
#include "model/activation_observer.h"
#include "model/model.h"

namespace mixtral::testing {

using Vec = std::vector<double>;

inline Vec row_of(const Matrix& m, int64_t r) {
  std::vector<float> f(static_cast<size_t>(m.cols));
  ref::dequantize_row(m.dtype, m.row(r), f.data(), m.cols);
  return Vec(f.begin(), f.end());
}

// y = W x   (W: [rows][cols]). BF16 weights multiply the activations rounded to bf16 (the
// engine's definition of that product, as llama.cpp's; see kernels/matmul_bf16.h).
inline Vec linear(const Matrix& W, const Vec& x_in) {
  Vec x = x_in;
  if (W.dtype == DType::BF16)
    for (double& v : x) v = bf16_to_f32(f32_to_bf16(float(v)));
  Vec y(static_cast<size_t>(W.rows));
  for (int64_t r = 0; r < W.rows; ++r) {
    const Vec w = row_of(W, r);
    y[r] = std::inner_product(w.begin(), w.end(), x.begin(), 0.0);
  }
  return y;
}

inline Vec rmsnorm(const Vec& x, const std::vector<float>& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double s = 1.0 / std::sqrt(ss / double(x.size()) + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * w[i];
  return y;
}

inline void rope(Vec& x, int64_t n_heads, int64_t hd, int64_t pos, double theta, RopeStyle style) {
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i) {
      const double a = double(pos) * std::pow(theta, -2.0 * double(i) / double(hd));
      const int64_t p0 = h * hd + (style == RopeStyle::Interleaved ? 2 * i : i);
      const int64_t p1 = h * hd + (style == RopeStyle::Interleaved ? 2 * i + 1 : i + hd / 2);
      const double x0 = x[p0], x1 = x[p1];
      x[p0] = x0 * std::cos(a) - x1 * std::sin(a);
      x[p1] = x0 * std::sin(a) + x1 * std::cos(a);
    }
}

// Sees the input of every matrix product, one token at a time (token t, then the input); for the
// experts only the chosen ones (the imatrix tests compare the engine's ActivationObserver to it).
using RefTap = std::function<void(int64_t layer, MatmulInput which, int32_t expert, int64_t t, const Vec& x)>;

// Logits [n][vocab] for every position of `tokens`, as float64.
inline std::vector<Vec> reference_forward(const Model& model, const std::vector<int32_t>& tokens,
                                          const RefTap& tap = {}) {
  const Config& c = model.config();
  const Weights& W = model.weights();
  const int64_t n = int64_t(tokens.size()), hd = c.head_dim;
  std::vector<Vec> x(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) x[t] = row_of(W.token_embd, tokens[t]);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = W.layers[l];
    std::vector<Vec> q(static_cast<size_t>(n)), k(static_cast<size_t>(n)), v(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      const Vec h = rmsnorm(x[t], L.attn_norm, c.norm_eps);
      if (tap) tap(l, MatmulInput::AttnQKV, -1, t, h);
      q[t] = linear(L.wq, h);
      k[t] = linear(L.wk, h);
      v[t] = linear(L.wv, h);
      rope(q[t], c.n_heads, hd, t, c.rope_theta, c.rope_style);
      rope(k[t], c.n_kv_heads, hd, t, c.rope_theta, c.rope_style);
    }
    for (int64_t t = 0; t < n; ++t) {
      Vec att(size_t(c.q_dim()), 0.0);
      for (int64_t h = 0; h < c.n_heads; ++h) {
        const int64_t kvh = h / (c.n_heads / c.n_kv_heads);
        Vec s(size_t(t + 1), -INFINITY);
        for (int64_t j = 0; j <= t; ++j) {
          if (c.sliding_window > 0 && t - j >= c.sliding_window) continue;  // masked
          double d = 0;
          for (int64_t i = 0; i < hd; ++i) d += q[t][h * hd + i] * k[j][kvh * hd + i];
          s[j] = d / std::sqrt(double(hd));
        }
        const double m = *std::max_element(s.begin(), s.end());
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - m));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t i = 0; i < hd; ++i) att[h * hd + i] += s[j] / z * v[j][kvh * hd + i];
      }
      if (tap) tap(l, MatmulInput::AttnOutput, -1, t, att);
      const Vec o = linear(L.wo, att);
      for (int64_t i = 0; i < c.dim; ++i) x[t][i] += o[i];
    }
    for (int64_t t = 0; t < n; ++t) {
      const Vec h = rmsnorm(x[t], L.ffn_norm, c.norm_eps);
      const int64_t E = int64_t(L.experts.size());
      Vec p(size_t(E), 1.0);
      std::vector<int64_t> chosen{0};
      if (c.is_moe()) {
        if (tap) tap(l, MatmulInput::Router, -1, t, h);
        p = linear(L.router, h);  // softmax over all experts
        const double m = *std::max_element(p.begin(), p.end());
        double z = 0;
        for (double& e : p) z += (e = std::exp(e - m));
        for (double& e : p) e /= z;
        std::vector<int64_t> order(static_cast<size_t>(E));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
        chosen.assign(order.begin(), order.begin() + c.n_experts_used);
        double kept = 0;
        for (int64_t e : chosen) kept += p[e];
        for (int64_t e : chosen) p[e] /= kept;  // renormalise over the top-k
      }
      for (int64_t e : chosen) {
        const ExpertWeights& X = L.experts[e];
        if (tap) tap(l, MatmulInput::ExpertGateUp, int32_t(e), t, h);
        Vec g = linear(X.w1, h), u = linear(X.w3, h);
        for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
        if (tap) tap(l, MatmulInput::ExpertDown, int32_t(e), t, g);
        const Vec d = linear(X.w2, g);
        for (int64_t i = 0; i < c.dim; ++i) x[t][i] += p[e] * d[i];
      }
    }
  }
  std::vector<Vec> logits(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) logits[t] = linear(W.output, rmsnorm(x[t], W.output_norm, c.norm_eps));
  return logits;
}

}  // namespace mixtral::testing
