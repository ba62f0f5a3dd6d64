// Forward/backward pairs of the training graph (see train_ops.h for the math of each).
#include "train/train_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "core/tensor.h"
#include "kernels/matmul.h"

namespace mixtral::train {
namespace {

// a·b. Float uses the kernel's SIMD dot (fixed order); double is the plain loop of the tests.
inline float dot(const float* a, const float* b, int64_t n) { return dot_f32(a, b, n); }
inline double dot(const double* a, const double* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// dst[c][r] = src[r][c]; src: [rows][cols]. Blocked so both sides stay in cache; threads
// take disjoint ranges of dst rows.
void transpose(const float* src, int64_t rows, int64_t cols, float* dst, ThreadPool& pool) {
  constexpr int64_t kB = 32;
  pool.parallel_for((cols + kB - 1) / kB, [&](int64_t b0, int64_t b1) {
    for (int64_t cb = b0 * kB; cb < std::min(cols, b1 * kB); cb += kB)
      for (int64_t rb = 0; rb < rows; rb += kB)
        for (int64_t c = cb; c < std::min(cols, cb + kB); ++c)
          for (int64_t r = rb; r < std::min(rows, rb + kB); ++r) dst[c * rows + r] = src[r * cols + c];
  });
}

Matrix f32_matrix(const float* p, int64_t rows, int64_t cols) {
  return {DType::F32, rows, cols, reinterpret_cast<const uint8_t*>(p)};
}

void grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

void parallel_rows(ThreadPool* pool, int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (pool) pool->parallel_for(n, fn);
  else fn(0, n);
}

// ================================================================== linear ===================

void linear_forward(const float* W, int64_t out, int64_t in, const float* x, int64_t T, float* y,
                    ThreadPool& pool) {
  if (T > 0) matmul(f32_matrix(W, out, in), x, T, y, pool);
}

void linear_backward(const float* W, int64_t out, int64_t in, const float* x, const float* dy,
                     int64_t T, float* dx, float* dW, LinearScratch& s, ThreadPool& pool) {
  if (T <= 0) return;
  // dx[T][in] = dy[T][out] · W[out][in]  ==  matmul with the matrix Wᵀ [in][out].
  if (dx) {
    grow(s.a, size_t(in * out));
    transpose(W, out, in, s.a.data(), pool);
    matmul(f32_matrix(s.a.data(), in, out), dy, T, dx, pool);
  }
  // dW[out][in] += dyᵀ·x:  the "weights" are xᵀ [in][T], the "tokens" the rows of dyᵀ [out][T].
  grow(s.a, size_t(in * T));
  grow(s.b, size_t(out * T));
  grow(s.c, size_t(out * in));
  transpose(x, T, in, s.a.data(), pool);
  transpose(dy, T, out, s.b.data(), pool);
  matmul(f32_matrix(s.a.data(), in, T), s.b.data(), out, s.c.data(), pool);
  const float* c = s.c.data();
  pool.parallel_for(out * in, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dW[i] += c[i];
  }, 1024);
}

namespace ref {
template <class F>
void linear_forward(const F* W, int64_t out, int64_t in, const F* x, int64_t T, F* y) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) y[t * out + o] = dot(W + o * in, x + t * in, in);
}
template <class F>
void linear_backward(const F* W, int64_t out, int64_t in, const F* x, const F* dy, int64_t T,
                     F* dx, F* dW) {
  for (int64_t t = 0; t < T && dx; ++t)
    for (int64_t i = 0; i < in; ++i) {
      F s = 0;
      for (int64_t o = 0; o < out; ++o) s += dy[t * out + o] * W[o * in + i];
      dx[t * in + i] = s;
    }
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      F s = 0;
      for (int64_t t = 0; t < T; ++t) s += dy[t * out + o] * x[t * in + i];
      dW[o * in + i] += s;
    }
}
template void linear_forward<float>(const float*, int64_t, int64_t, const float*, int64_t, float*);
template void linear_forward<double>(const double*, int64_t, int64_t, const double*, int64_t, double*);
template void linear_backward<float>(const float*, int64_t, int64_t, const float*, const float*, int64_t, float*, float*);
template void linear_backward<double>(const double*, int64_t, int64_t, const double*, const double*, int64_t, double*, double*);
}  // namespace ref

// ================================================================== embedding ================

template <class F>
void embedding_forward(const F* E, int64_t D, const int32_t* tok, int64_t T, F* y) {
  for (int64_t t = 0; t < T; ++t) std::memcpy(y + t * D, E + int64_t(tok[t]) * D, sizeof(F) * size_t(D));
}
template <class F>
void embedding_backward(int64_t D, const int32_t* tok, int64_t T, const F* dy, F* dE) {
  for (int64_t t = 0; t < T; ++t) {  // in token order: a token seen twice sums in a fixed order
    F* row = dE + int64_t(tok[t]) * D;
    for (int64_t i = 0; i < D; ++i) row[i] += dy[t * D + i];
  }
}

// ================================================================== RMSNorm ==================

template <class F>
void rmsnorm_forward(const F* x, const F* g, int64_t T, int64_t D, F eps, F* y, F* r, ThreadPool* pool) {
  parallel_rows(pool, T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const F* xr = x + t * D;
      double ss = 0;  // in double, as ops::rmsnorm: the inference engine must agree
      for (int64_t i = 0; i < D; ++i) ss += double(xr[i]) * double(xr[i]);
      const F rt = F(1.0 / std::sqrt(ss / double(D) + double(eps)));
      r[t] = rt;
      for (int64_t i = 0; i < D; ++i) y[t * D + i] = xr[i] * rt * g[i];
    }
  });
}

template <class F>
void rmsnorm_backward(const F* x, const F* g, const F* r, const F* dy, int64_t T, int64_t D, F* dx, F* dg,
                      ThreadPool* pool) {
  parallel_rows(pool, T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const F* xr = x + t * D;
      const F* d = dy + t * D;
      double c = 0;  // Σ_i g_i dy_i x_i
      for (int64_t i = 0; i < D; ++i) c += double(g[i]) * double(d[i]) * double(xr[i]);
      const F rt = r[t];
      const F k = F(c * double(rt) * double(rt) * double(rt) / double(D));
      for (int64_t i = 0; i < D; ++i) dx[t * D + i] = rt * g[i] * d[i] - xr[i] * k;
    }
  });
  // dg: split over columns so each thread sums its columns over all tokens in token order.
  parallel_rows(pool, D, [&](int64_t c0, int64_t c1) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = c0; i < c1; ++i) dg[i] += dy[t * D + i] * (x[t * D + i] * r[t]);
  });
}

// ================================================================== RoPE =====================

RopeTable::RopeTable(int64_t hd, int64_t n, float theta) : head_dim(hd), n_pos(n) {
  const int64_t half = hd / 2;
  cos.resize(size_t(n * half));
  sin.resize(size_t(n * half));
  for (int64_t i = 0; i < half; ++i) {
    const float inv_freq = float(std::pow(double(theta), -2.0 * double(i) / double(hd)));
    for (int64_t p = 0; p < n; ++p) {
      const double angle = double(p) * double(inv_freq);
      cos[size_t(p * half + i)] = std::cos(angle);
      sin[size_t(p * half + i)] = std::sin(angle);
    }
  }
}

namespace {
template <class F>
void rope_rotate(F* x, int64_t T, const int32_t* pos, int64_t n_heads, const RopeTable& rt, double sign) {
  const int64_t hd = rt.head_dim, half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    const double* cs = rt.cos.data() + int64_t(pos[t]) * half;
    const double* sn = rt.sin.data() + int64_t(pos[t]) * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      F* v = x + (t * n_heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) {
        const F c = F(cs[i]), s = F(sign * sn[i]);
        const F x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c - x1 * s;
        v[i + half] = x0 * s + x1 * c;
      }
    }
  }
}
}  // namespace

template <class F>
void rope_forward(F* x, int64_t T, const int32_t* pos, int64_t n_heads, const RopeTable& rt) {
  rope_rotate(x, T, pos, n_heads, rt, 1.0);
}
template <class F>
void rope_backward(F* dx, int64_t T, const int32_t* pos, int64_t n_heads, const RopeTable& rt) {
  rope_rotate(dx, T, pos, n_heads, rt, -1.0);  // Rᵀ = R(−θ)
}

// ================================================================== attention ================

// Scores and dp are accumulated over d with a transposed copy of K (V) per (sequence, kv head),
// [hd][S]: the inner loop then runs over keys, contiguous and free of reductions, so it
// vectorises (head dims are small; one dot product per score was a quarter of training time).
namespace {
template <class F>
void gather_transposed(const F* src, const AttnShape& s, int64_t b, int64_t kvh, F* dst) {  // dst: [hd][S]
  for (int64_t j = 0; j < s.S; ++j)
    for (int64_t d = 0; d < s.hd; ++d) dst[d * s.S + j] = src[((b * s.S + j) * s.Hkv + kvh) * s.hd + d];
}
// y += a·x (distinct arrays: the compiler may vectorise without alias checks)
template <class F>
inline void axpy(F a, const F* __restrict x, F* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
// out[j] = Σ_d a[d] · Mt[d][j] for j < n
template <class F>
void times_transposed(const F* a, const F* Mt, int64_t hd, int64_t S, int64_t n, F* __restrict out) {
  for (int64_t j = 0; j < n; ++j) out[j] = 0;
  for (int64_t d = 0; d < hd; ++d) {
    const F ad = a[d];
    axpy(ad, Mt + d * S, out, n);
  }
}
}  // namespace

template <class F>
void attention_forward(const F* q, const F* k, const F* v, const AttnShape& s, F* probs, F* o, ThreadPool* pool) {
  const int64_t S = s.S, hd = s.hd, group = s.Hq / s.Hkv;
  const F scale = F(1.0 / std::sqrt(double(hd)));
  parallel_rows(pool, s.B * s.Hq, [&](int64_t j0, int64_t j1) {
    std::vector<F> kt(static_cast<size_t>(hd * S)), qs(static_cast<size_t>(hd));
    for (int64_t job = j0; job < j1; ++job) {
      const int64_t b = job / s.Hq, h = job % s.Hq, kvh = h / group;
      gather_transposed(k, s, b, kvh, kt.data());
      for (int64_t i = 0; i < S; ++i) {
        const F* qi = q + ((b * S + i) * s.Hq + h) * hd;
        for (int64_t d = 0; d < hd; ++d) qs[size_t(d)] = qi[d] * scale;
        F* p = probs + ((b * s.Hq + h) * S + i) * S;
        times_transposed(qs.data(), kt.data(), hd, S, i + 1, p);  // s_ij = q_i·k_j/√hd, j ≤ i
        const F mx = *std::max_element(p, p + i + 1);
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          p[j] = std::exp(p[j] - mx);
          sum += double(p[j]);
        }
        const F inv = F(1.0 / sum);
        for (int64_t j = 0; j <= i; ++j) p[j] *= inv;
        for (int64_t j = i + 1; j < S; ++j) p[j] = 0;
        F* oi = o + ((b * S + i) * s.Hq + h) * hd;
        for (int64_t d = 0; d < hd; ++d) oi[d] = 0;
        for (int64_t j = 0; j <= i; ++j) axpy(p[j], v + ((b * S + j) * s.Hkv + kvh) * hd, oi, hd);
      }
    }
  });
}

template <class F>
void attention_backward(const F* q, const F* k, const F* v, const F* probs, const F* o, const F* dout,
                        const AttnShape& s, F* dq, F* dk, F* dv, ThreadPool* pool) {
  const int64_t S = s.S, hd = s.hd, group = s.Hq / s.Hkv;
  const F scale = F(1.0 / std::sqrt(double(hd)));
  parallel_rows(pool, s.B * s.Hkv, [&](int64_t j0, int64_t j1) {
    std::vector<F> ds(static_cast<size_t>(S)), vt(static_cast<size_t>(hd * S));
    for (int64_t job = j0; job < j1; ++job) {
      const int64_t b = job / s.Hkv, kvh = job % s.Hkv;
      auto kv = [&](int64_t j) { return ((b * S + j) * s.Hkv + kvh) * hd; };  // row offset in k, v
      gather_transposed(v, s, b, kvh, vt.data());
      for (int64_t j = 0; j < S; ++j)
        for (int64_t d = 0; d < hd; ++d) dk[kv(j) + d] = dv[kv(j) + d] = 0;
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
        for (int64_t i = 0; i < S; ++i) {
          const int64_t qrow = ((b * S + i) * s.Hq + h) * hd;
          const F* p = probs + ((b * s.Hq + h) * S + i) * S;
          const F* doi = dout + qrow;
          F Di = 0;  // Σ_j p_ij dp_ij = do_i·o_i
          for (int64_t d = 0; d < hd; ++d) Di += doi[d] * o[qrow + d];
          times_transposed(doi, vt.data(), hd, S, i + 1, ds.data());  // dp_ij = do_i·v_j
          for (int64_t j = 0; j <= i; ++j) ds[size_t(j)] = p[j] * (ds[size_t(j)] - Di) * scale;
          F* dqi = dq + qrow;
          for (int64_t d = 0; d < hd; ++d) dqi[d] = 0;
          for (int64_t j = 0; j <= i; ++j) {
            axpy(p[j], doi, dv + kv(j), hd);
            axpy(ds[size_t(j)], k + kv(j), dqi, hd);
            axpy(ds[size_t(j)], q + qrow, dk + kv(j), hd);
          }
        }
    }
  });
}

// ================================================================== SwiGLU ===================

template <class F>
void swiglu_forward(const F* a, const F* b, F* g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = a[i] / (F(1) + std::exp(-a[i])) * b[i];  // as ops::silu_mul
}
template <class F>
void swiglu_backward(const F* a, const F* b, const F* dg, F* da, F* db, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const F sig = F(1) / (F(1) + std::exp(-a[i]));
    const F silu = a[i] * sig;
    da[i] = dg[i] * b[i] * sig * (F(1) + a[i] * (F(1) - sig));
    db[i] = dg[i] * silu;
  }
}

// ================================================================== router ===================

template <class F>
void route_forward(const F* logits, int64_t T, int64_t E, int64_t k, int32_t* idx, F* w) {
  for (int64_t t = 0; t < T; ++t) {
    const F* z = logits + t * E;
    int32_t* id = idx + t * k;
    for (int64_t r = 0; r < k; ++r) {
      int32_t best = -1;
      for (int32_t e = 0; e < int32_t(E); ++e) {
        if (std::find(id, id + r, e) != id + r) continue;
        if (best < 0 || z[e] > z[best]) best = e;  // strict: ties go to the lower expert
      }
      id[r] = best;
    }
    // softmax over the k selected logits; id[0] holds the largest
    double sum = 0;
    for (int64_t r = 0; r < k; ++r) {
      w[t * k + r] = std::exp(z[id[r]] - z[id[0]]);
      sum += double(w[t * k + r]);
    }
    for (int64_t r = 0; r < k; ++r) w[t * k + r] = F(double(w[t * k + r]) / sum);
  }
}

template <class F>
void route_backward(const F* w, const int32_t* idx, const F* dw, int64_t T, int64_t E, int64_t k, F* dlogits) {
  for (int64_t t = 0; t < T; ++t) {
    F wd = 0;
    for (int64_t r = 0; r < k; ++r) wd += w[t * k + r] * dw[t * k + r];
    for (int64_t r = 0; r < k; ++r) dlogits[t * E + idx[t * k + r]] += w[t * k + r] * (dw[t * k + r] - wd);
  }
}

template <class F>
double load_balance_loss(const F* logits, const int32_t* idx, int64_t T, int64_t E, int64_t k, double coef,
                         F* dlogits) {
  if (T <= 0) return 0;
  std::vector<double> f(static_cast<size_t>(E), 0.0), P(f), p(f);
  for (int64_t i = 0; i < T * k; ++i) f[size_t(idx[i])] += 1.0 / double(T * k);
  auto softmax_row = [&](int64_t t) {
    const F* z = logits + t * E;
    const double mx = double(*std::max_element(z, z + E));
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += (p[size_t(e)] = std::exp(double(z[e]) - mx));
    for (int64_t e = 0; e < E; ++e) p[size_t(e)] /= sum;
  };
  for (int64_t t = 0; t < T; ++t) {
    softmax_row(t);
    for (int64_t e = 0; e < E; ++e) P[size_t(e)] += p[size_t(e)] / double(T);
  }
  double L = 0;
  for (int64_t e = 0; e < E; ++e) L += f[size_t(e)] * P[size_t(e)];
  L *= coef * double(E);
  if (dlogits) {
    // dL/dp_te = coef·E·f_e / T;  through the softmax: dz_tj = p_tj (g_j − Σ_e p_te g_e)
    for (int64_t t = 0; t < T; ++t) {
      softmax_row(t);
      double pg = 0;
      for (int64_t e = 0; e < E; ++e) pg += p[size_t(e)] * f[size_t(e)];
      const double c = coef * double(E) / double(T);
      for (int64_t e = 0; e < E; ++e) dlogits[t * E + e] += F(c * p[size_t(e)] * (f[size_t(e)] - pg));
    }
  }
  return L;
}

template <class F>
double router_z_loss(const F* logits, int64_t T, int64_t E, double coef, F* dlogits) {
  if (T <= 0) return 0;
  double L = 0;
  for (int64_t t = 0; t < T; ++t) {
    const F* z = logits + t * E;
    const double mx = double(*std::max_element(z, z + E));
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(double(z[e]) - mx);
    const double lse = mx + std::log(sum);
    L += lse * lse;
    if (dlogits)
      for (int64_t e = 0; e < E; ++e)
        dlogits[t * E + e] += F(coef * 2.0 / double(T) * lse * std::exp(double(z[e]) - lse));
  }
  return coef * L / double(T);
}

// ================================================================== cross-entropy ============

template <class F>
double cross_entropy(const F* logits, const int32_t* targets, int64_t T, int64_t V, F scale, F* dlogits,
                     ThreadPool* pool) {
  std::vector<double> loss(static_cast<size_t>(T));
  parallel_rows(pool, T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const F* z = logits + t * V;
      const F mx = *std::max_element(z, z + V);
      double sum = 0;
      for (int64_t j = 0; j < V; ++j) sum += std::exp(double(z[j] - mx));
      const double lse = double(mx) + std::log(sum);
      loss[size_t(t)] = lse - double(z[targets[t]]);
      if (dlogits) {
        F* d = dlogits + t * V;
        const F lse_f = F(lse);
        for (int64_t j = 0; j < V; ++j) d[j] = scale * std::exp(z[j] - lse_f);
        d[targets[t]] -= scale;
      }
    }
  });
  double total = 0;
  for (double l : loss) total += l;
  return total;
}

// ================================================================== instantiations ===========

#define MIXTRAL_TRAIN_INSTANTIATE(F)                                                                       \
  template void embedding_forward<F>(const F*, int64_t, const int32_t*, int64_t, F*);                      \
  template void embedding_backward<F>(int64_t, const int32_t*, int64_t, const F*, F*);                     \
  template void rmsnorm_forward<F>(const F*, const F*, int64_t, int64_t, F, F*, F*, ThreadPool*);          \
  template void rmsnorm_backward<F>(const F*, const F*, const F*, const F*, int64_t, int64_t, F*, F*,      \
                                    ThreadPool*);                                                          \
  template void rope_forward<F>(F*, int64_t, const int32_t*, int64_t, const RopeTable&);                   \
  template void rope_backward<F>(F*, int64_t, const int32_t*, int64_t, const RopeTable&);                  \
  template void attention_forward<F>(const F*, const F*, const F*, const AttnShape&, F*, F*, ThreadPool*); \
  template void attention_backward<F>(const F*, const F*, const F*, const F*, const F*, const F*,          \
                                      const AttnShape&, F*, F*, F*, ThreadPool*);                          \
  template void swiglu_forward<F>(const F*, const F*, F*, int64_t);                                        \
  template void swiglu_backward<F>(const F*, const F*, const F*, F*, F*, int64_t);                         \
  template void route_forward<F>(const F*, int64_t, int64_t, int64_t, int32_t*, F*);                       \
  template void route_backward<F>(const F*, const int32_t*, const F*, int64_t, int64_t, int64_t, F*);      \
  template double load_balance_loss<F>(const F*, const int32_t*, int64_t, int64_t, int64_t, double, F*);  \
  template double router_z_loss<F>(const F*, int64_t, int64_t, double, F*);                                \
  template double cross_entropy<F>(const F*, const int32_t*, int64_t, int64_t, F, F*, ThreadPool*);

MIXTRAL_TRAIN_INSTANTIATE(float)
MIXTRAL_TRAIN_INSTANTIATE(double)

}  // namespace mixtral::train
