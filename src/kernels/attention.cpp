// Flash-style attention (see attention.h).
//
// A work item is up to tokens_per_item() consecutive query tokens of one run × one KV head. Its
// R = tokens × group query rows are the lanes of the vectors ("rows in lanes", padded to a
// multiple of 16), so the online softmax runs across rows with no horizontal operation:
//
//   Qt[d][r] = q[r][d] · log2(e)/√head_dim                 transposed once per item
//   m[r] = −∞,  l[r] = 0,  Ot[d][r] = 0
//   for each tile of 16 key positions [t0, t0+16), from the first one any row sees to the last
//   query:
//     S[j][r] = Σ_d Qt[d][r] · k[t0+j][d]                   (−∞ where row r does not see t0+j)
//     m' = max(m, max_j S[j]);  α = 2^(m − m');  P[j] = 2^(S[j] − m');  l = α·l + Σ_j P[j]
//     Ot[d] = α·Ot[d] + Σ_j P[j] · v[t0+j][d]
//   out[r][d] = Ot[d][r] / l[r]
// An item reads its queries before it writes their outputs, and no other item touches either,
// so out may be q.
//
// A row that sees no key of a tile is left exactly as it was (α = 1, P = 0 against finite
// values), keys no row of the item sees are never read (a zero vector stands in for them), and
// every lane runs the same operations in the same order at both SIMD widths. That is what makes
// a row's result independent of the rows beside it (see attention.h).
//
// The code is written once over GCC vector types and compiled twice, inlined into an AVX-512
// and an AVX2 entry point. Products are contracted into fused multiply-adds (each expression
// below has exactly one product to fuse, so the contraction cannot differ between the two).
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors only ever live inside the AVX-512 entry
#endif

#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "core/error.h"
#include "kernels/dequant.h"  // simd_level()

namespace mixtral {
namespace {

constexpr int64_t kItemRows = 64;  // query rows (tokens × group) computed together, at most
constexpr int64_t kMaxLanes = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
static_assert(kKeyTile == 16, "the kernels below take a tile as two halves of 8 keys");

#define ATTN_INLINE [[gnu::always_inline]] inline

typedef float F32x16 __attribute__((vector_size(64)));
typedef int32_t I32x16 __attribute__((vector_size(64)));
typedef float F32x8 __attribute__((vector_size(32)));
typedef int32_t I32x8 __attribute__((vector_size(32)));

template <class V>
ATTN_INLINE V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class I>
ATTN_INLINE I load_i(const int32_t* p) {
  I v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
ATTN_INLINE void store(float* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}
template <class V>
ATTN_INLINE V splat(float x) {
  return V{} + x;
}

// 2^x for x ≤ 0 (or −∞): 2^round(x) · p(x − round(x)), p a degree-6 polynomial on [−½, ½]
// (Cephes' exp2f, relative error ~1e-7); 0 below 2^−126.
template <class V, class I>
ATTN_INLINE V exp2v(const V& x) {
  const V big = splat<V>(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
  const V xc = x < -126.0f ? splat<V>(-126.0f) : x;
  const V t = xc + big;
  const V f = xc - (t - big);
  V p = f * 1.535336188319500e-4f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const I e = ((I)t - (I)big + 127) << 23;  // the integer round(x), as an exponent
  return x < -126.0f ? V{} : p * (V)e;
}

// S[j][lanes] = Σ_d qt[d][lanes] · k[j][d] for the 8 keys k[0..8).  qt row stride rs, S row stride ss.
template <class V>
ATTN_INLINE void scores8(const float* qt, int64_t rs, const float* const* k, int64_t hd, float* s, int64_t ss) {
  V acc[8] = {};
  for (int64_t d = 0; d < hd; ++d) {
    const V q = load<V>(qt + d * rs);
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) acc[j] = q * k[j][d] + acc[j];
  }
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) store(s + j * ss, acc[j]);
}

// One tile's online-softmax step for the lanes of one vector of rows: masks S (a key t0+j is seen
// by a row when first ≤ t0+j ≤ last), turns it into P, updates m and l, and leaves α.
template <class V, class I>
ATTN_INLINE void softmax_step(float* s, int64_t ss, int64_t t0, const int32_t* first, const int32_t* last, float* m,
                              float* l, float* alpha) {
  const I lo = load_i<I>(first), hi = load_i<I>(last);
  V mt = splat<V>(kNegInf);
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) {
    const I kp = I{} + int32_t(t0 + j);
    const V x = (kp >= lo) & (kp <= hi) ? load<V>(s + j * ss) : splat<V>(kNegInf);
    store(s + j * ss, x);
    mt = mt > x ? mt : x;
  }
  const V m_old = load<V>(m);
  const V m_new = m_old > mt ? m_old : mt;
  const auto active = mt > kNegInf;                       // the row sees a key of this tile
  const V a = active ? exp2v<V, I>(m_old - m_new) : splat<V>(1.0f);
  const V base = active ? m_new : V{};                    // finite in every lane
  V sum = V{};
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) {
    const V p = exp2v<V, I>(load<V>(s + j * ss) - base);  // 0 where masked
    store(s + j * ss, p);
    sum = sum + p;
  }
  store(l, load<V>(l) * a + sum);
  store(m, m_new);
  store(alpha, a);
}

// Ot[d][lanes] = α · Ot[d][lanes] + Σ_j P[j][lanes] · v[j][d] over the tile's 16 keys, DB
// values of d at a time (enough independent sums to keep the FMA units busy).
template <class V, int DB>
ATTN_INLINE void weighted_values(float* ot, int64_t rs, const float* p, int64_t ps, const float* const* v,
                                 const float* alpha, int64_t hd) {
  const V a = load<V>(alpha);
  bool rescale = false;
  for (size_t i = 0; i < sizeof(V) / sizeof(float); ++i) rescale |= a[i] != 1.0f;
  if (rescale)  // its own pass, so that the products below are the only ones to fuse
    for (int64_t d = 0; d < hd; ++d) store(ot + d * rs, load<V>(ot + d * rs) * a);
  for (int half = 0; half < 2; ++half) {
    V pj[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) pj[j] = load<V>(p + (half * 8 + j) * ps);
    const float* const* vh = v + half * 8;
    int64_t d = 0;
    for (; d + DB <= hd; d += DB) {
      V acc[DB];
#pragma GCC unroll 8
      for (int e = 0; e < DB; ++e) acc[e] = load<V>(ot + (d + e) * rs);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j)
#pragma GCC unroll 8
        for (int e = 0; e < DB; ++e) acc[e] = pj[j] * vh[j][d + e] + acc[e];
#pragma GCC unroll 8
      for (int e = 0; e < DB; ++e) store(ot + (d + e) * rs, acc[e]);
    }
    for (; d < hd; ++d) {
      V acc = load<V>(ot + d * rs);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) acc = pj[j] * vh[j][d] + acc;
      store(ot + d * rs, acc);
    }
  }
}

// Tokens [i0, i0 + ni) of `run`, the query heads of KV head kvh.
template <class V, class I, int DB>
ATTN_INLINE void run_item(const AttentionShape& sh, const QueryRun& run, int64_t i0, int64_t ni, int64_t kvh,
                          const KVSource& kv, AttentionScratch::Thread& ts, int64_t cap) {
  constexpr int64_t W = int64_t(sizeof(V) / sizeof(float));
  const int64_t hd = sh.head_dim, group = sh.n_heads / sh.n_kv_heads, q_dim = sh.q_dim();
  const int64_t R = ni * group, rs = (R + W - 1) / W * W;  // rows, and the padded row stride
  float* qt = ts.f.data();     // [hd][rs]
  float* ot = qt + hd * cap;   // [hd][rs]
  float* S = ot + hd * cap;    // [16][rs]
  float* m = S + 16 * cap;     // [rs]
  float* l = m + cap;          // [rs]
  float* alpha = l + cap;      // [rs]
  const float* zero = alpha + cap;  // [hd] zeros, stands in for keys nobody sees
  int32_t* first = ts.i.data();     // [rs] first key position each row sees
  int32_t* last = first + cap;      // [rs] its own position (−1 for padding rows: sees nothing)

  const float c = float(1.4426950408889634 / std::sqrt(double(hd)));  // log2(e)/√d
  auto first_seen = [&](int64_t pos) { return sh.window > 0 ? std::max<int64_t>(0, pos - sh.window + 1) : 0; };
  for (int64_t r = 0; r < rs; ++r) {
    if (r < R) {
      const int64_t t = i0 + r / group, h = kvh * group + r % group, pos = run.pos + t;
      const float* q = run.q + t * q_dim + h * hd;
      for (int64_t d = 0; d < hd; ++d) qt[d * rs + r] = q[d] * c;
      first[r] = int32_t(first_seen(pos));
      last[r] = int32_t(pos);
    } else {
      for (int64_t d = 0; d < hd; ++d) qt[d * rs + r] = 0.0f;
      first[r] = 0;
      last[r] = -1;
    }
  }
  std::fill(m, m + rs, kNegInf);
  std::fill(l, l + rs, 0.0f);
  std::fill(ot, ot + hd * rs, 0.0f);

  const int64_t p_last = run.pos + i0 + ni - 1, p_lo = first_seen(run.pos + i0);
  for (int64_t t0 = p_lo / kKeyTile * kKeyTile; t0 <= p_last; t0 += kKeyTile) {
    const float* kr[kKeyTile];
    const float* vr[kKeyTile];
    for (int64_t j = 0; j < kKeyTile; ++j) {
      const int64_t p = t0 + j;
      const bool seen = p >= p_lo && p <= p_last;
      kr[j] = seen ? kv.k(run.seq, p) + kvh * hd : zero;
      vr[j] = seen ? kv.v(run.seq, p) + kvh * hd : zero;
    }
    for (int64_t v = 0; v < rs; v += W) {
      scores8<V>(qt + v, rs, kr, hd, S + v, rs);
      scores8<V>(qt + v, rs, kr + 8, hd, S + 8 * rs + v, rs);
      softmax_step<V, I>(S + v, rs, t0, first + v, last + v, m + v, l + v, alpha + v);
      weighted_values<V, DB>(ot + v, rs, S + v, rs, vr, alpha + v, hd);
    }
  }

  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = i0 + r / group, h = kvh * group + r % group;
    float* o = run.out + t * q_dim + h * hd;
    for (int64_t d = 0; d < hd; ++d) o[d] = ot[d * rs + r] / l[r];
  }
}

using ItemFn = void (*)(const AttentionShape&, const QueryRun&, int64_t, int64_t, int64_t, const KVSource&,
                        AttentionScratch::Thread&, int64_t);

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void item_avx512(
    const AttentionShape& sh, const QueryRun& run, int64_t i0, int64_t ni, int64_t kvh, const KVSource& kv,
    AttentionScratch::Thread& ts, int64_t cap) {
  // A few rows (one decode token: its group of query heads) would leave most of 16 lanes idle;
  // 8 lanes compute the same values (every lane's arithmetic is the same at either width).
  if (ni * (sh.n_heads / sh.n_kv_heads) <= 8) run_item<F32x8, I32x8, 8>(sh, run, i0, ni, kvh, kv, ts, cap);
  else run_item<F32x16, I32x16, 8>(sh, run, i0, ni, kvh, kv, ts, cap);
}

__attribute__((target("avx2,fma"))) void item_avx2(const AttentionShape& sh, const QueryRun& run, int64_t i0,
                                                   int64_t ni, int64_t kvh, const KVSource& kv,
                                                   AttentionScratch::Thread& ts, int64_t cap) {
  run_item<F32x8, I32x8, 4>(sh, run, i0, ni, kvh, kv, ts, cap);
}

void check_shape(const AttentionShape& sh) {
  if (sh.head_dim <= 0 || sh.n_kv_heads <= 0 || sh.n_heads <= 0 || sh.n_heads % sh.n_kv_heads != 0)
    fail("attention", "need n_heads a positive multiple of n_kv_heads and head_dim > 0");
}

}  // namespace

AttentionScratch::AttentionScratch(const AttentionShape& sh, int n_threads) : shape_(sh) {
  check_shape(sh);
  const int64_t group = sh.n_heads / sh.n_kv_heads;
  tokens_ = std::max<int64_t>(1, kItemRows / group);
  rows_ = (tokens_ * group + kMaxLanes - 1) / kMaxLanes * kMaxLanes;
  threads_.resize(size_t(std::max(1, n_threads)));
  for (Thread& t : threads_) {
    t.f.assign(size_t((2 * sh.head_dim + kKeyTile + 3) * rows_ + sh.head_dim), 0.0f);
    t.i.assign(size_t(2 * rows_), 0);
  }
}

void attention(const AttentionShape& sh, const QueryRun* runs, int64_t n_runs, const KVSource& kv,
               AttentionScratch& scratch, ThreadPool& pool) {
  check_shape(sh);
  const AttentionShape& ss = scratch.shape();
  if (ss.n_heads != sh.n_heads || ss.n_kv_heads != sh.n_kv_heads || ss.head_dim != sh.head_dim)
    fail("attention", "the scratch was sized for another shape");
  if (pool.size() > scratch.n_threads())
    fail("attention", "scratch for " + std::to_string(scratch.n_threads()) + " threads, pool of " +
                          std::to_string(pool.size()));
  const ItemFn item = simd_level() >= SimdLevel::AVX512 ? item_avx512 : item_avx2;
  const int64_t per = scratch.tokens_per_item(), cap = scratch.rows();
  // Items round-robin, KV heads innermost: neighbouring items cost about the same, so every
  // thread gets a fair share of the long (late) and short (early) query tokens.
  pool.run([&](int thread, int n_threads) {
    AttentionScratch::Thread& ts = scratch.thread(thread);
    int64_t index = 0;
    for (int64_t r = 0; r < n_runs; ++r)
      for (int64_t i0 = 0; i0 < runs[r].n; i0 += per)
        for (int64_t kvh = 0; kvh < sh.n_kv_heads; ++kvh)
          if (index++ % n_threads == thread) item(sh, runs[r], i0, std::min(per, runs[r].n - i0), kvh, kv, ts, cap);
  });
}

namespace ref {

void attention(const AttentionShape& sh, const QueryRun* runs, int64_t n_runs, const KVSource& kv) {
  check_shape(sh);
  const int64_t hd = sh.head_dim, group = sh.n_heads / sh.n_kv_heads, q_dim = sh.q_dim();
  const float scale = 1.0f / std::sqrt(float(hd));
  std::vector<float> w;
  for (int64_t r = 0; r < n_runs; ++r) {
    const QueryRun& run = runs[r];
    for (int64_t t = 0; t < run.n; ++t) {
      const int64_t pos = run.pos + t, lo = sh.window > 0 ? std::max<int64_t>(0, pos - sh.window + 1) : 0;
      for (int64_t h = 0; h < sh.n_heads; ++h) {
        const int64_t kvh = h / group;
        const float* q = run.q + t * q_dim + h * hd;
        w.assign(size_t(pos - lo + 1), 0.0f);
        float mx = kNegInf;
        for (int64_t p = lo; p <= pos; ++p) {
          const float* k = kv.k(run.seq, p) + kvh * hd;
          float s = 0.0f;
          for (int64_t d = 0; d < hd; ++d) s += q[d] * k[d];
          w[size_t(p - lo)] = s * scale;
          mx = std::max(mx, s * scale);
        }
        double sum = 0.0;
        for (float& x : w) {
          x = std::exp(x - mx);
          sum += x;
        }
        float* out = run.out + t * q_dim + h * hd;
        std::fill(out, out + hd, 0.0f);
        for (int64_t p = lo; p <= pos; ++p) {
          const float a = float(w[size_t(p - lo)] / sum);
          const float* v = kv.v(run.seq, p) + kvh * hd;
          for (int64_t d = 0; d < hd; ++d) out[d] += a * v[d];
        }
      }
    }
  }
}

}  // namespace ref

}  // namespace mixtral
