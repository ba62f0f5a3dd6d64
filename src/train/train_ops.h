// Forward/backward pairs for every operation of the Mixtral training graph.
//
// Each op is a forward that saves what its backward needs, and a backward that maps the
// gradient of the loss with respect to the op's outputs (dy) onto its inputs (dx) and
// parameters (dW, accumulated with +=). The row-wise ops are templates instantiated for float
// (training) and double (the finite-difference tests, where float's rounding would hide bugs);
// the linear layer has a float fast path on the engine's matmul kernel and a scalar reference.
//
// Determinism: every output element is written by exactly one task, and every reduction over
// tokens (parameter gradients, losses) runs in token order, so results are bitwise the same for
// any thread count. `pool` may be null (serial).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/thread_pool.h"

namespace mixtral::train {

// Runs fn(begin, end) over [0, n) on the pool (or inline when pool is null).
void parallel_rows(ThreadPool* pool, int64_t n, const std::function<void(int64_t, int64_t)>& fn);

// ---------------------------------------------------------------- linear  y = x·Wᵀ ----------
// W: [out][in] (nn.Linear's layout), x: [T][in], y: [T][out].
// backward: dx = dy·W (overwritten; skipped when dx is null), dW += dyᵀ·x.
// The fast path uses the matmul kernel for all three products (transposing x, dy and W into
// `scratch`), so its accumulation order is the kernel's fixed one.
struct LinearScratch {
  std::vector<float> a, b, c;  // transposes and the dW product, grown on demand
};
void linear_forward(const float* W, int64_t out, int64_t in, const float* x, int64_t T, float* y,
                    ThreadPool& pool);
void linear_backward(const float* W, int64_t out, int64_t in, const float* x, const float* dy,
                     int64_t T, float* dx, float* dW, LinearScratch& scratch, ThreadPool& pool);

namespace ref {
template <class F>
void linear_forward(const F* W, int64_t out, int64_t in, const F* x, int64_t T, F* y);
template <class F>
void linear_backward(const F* W, int64_t out, int64_t in, const F* x, const F* dy, int64_t T,
                     F* dx, F* dW);
}  // namespace ref

// ---------------------------------------------------------------- embedding ----------------
// y[t] = E[tok[t]];  dE[tok[t]] += dy[t] (in token order).           E: [V][D], y: [T][D]
template <class F>
void embedding_forward(const F* E, int64_t D, const int32_t* tok, int64_t T, F* y);
template <class F>
void embedding_backward(int64_t D, const int32_t* tok, int64_t T, const F* dy, F* dE);

// ---------------------------------------------------------------- RMSNorm ------------------
// y = x · r ⊙ g with r = 1/sqrt(mean(x²) + eps), per row of D.          x, y: [T][D], r: [T]
// backward: dx = r·(g⊙dy) − x · r³/D · Σ_i g_i dy_i x_i;   dg += Σ_t dy ⊙ x·r
template <class F>
void rmsnorm_forward(const F* x, const F* g, int64_t T, int64_t D, F eps, F* y, F* r,
                     ThreadPool* pool);
template <class F>
void rmsnorm_backward(const F* x, const F* g, const F* r, const F* dy, int64_t T, int64_t D,
                      F* dx, F* dg, ThreadPool* pool);

// ---------------------------------------------------------------- RoPE ---------------------
// HF's half-split convention: pair i of a head is (x[i], x[i + hd/2]), turned by
// pos · theta^(−2i/hd). The angles are those of ops::rope (double angle from the float
// frequency), so a trained checkpoint scores identically in the inference engine.
struct RopeTable {
  int64_t head_dim = 0, n_pos = 0;
  std::vector<double> cos, sin;  // [n_pos][head_dim/2]
  RopeTable(int64_t head_dim, int64_t n_pos, float theta);
};
// x: [T][n_heads][hd] rotated in place by the angle of pos[t]. The rotation is orthogonal, so
// the backward is the same rotation by −angle applied to dy (also in place).
template <class F>
void rope_forward(F* x, int64_t T, const int32_t* pos, int64_t n_heads, const RopeTable& rt);
template <class F>
void rope_backward(F* dx, int64_t T, const int32_t* pos, int64_t n_heads, const RopeTable& rt);

// ---------------------------------------------------------------- attention ----------------
// Grouped-query causal self-attention over B sequences of S tokens each (token t = b·S + i).
//   s_ij = q_i·k_j / √hd (j ≤ i);  p_i = softmax(s_i);  o_i = Σ_j p_ij v_j
// q, o: [B·S][Hq][hd]; k, v: [B·S][Hkv][hd]; query head h reads kv head h / (Hq/Hkv).
// probs: [B][Hq][S][S] (the rows' causal parts; saved for the backward).
// backward:  dv_j += p_ij do_i;  dp_ij = do_i·v_j;  ds_ij = p_ij (dp_ij − do_i·o_i);
//            dq_i = Σ_j ds_ij k_j/√hd;  dk_j += ds_ij q_i/√hd
// dq, dk, dv are overwritten. Tasks are (sequence, kv head), so no two write the same row.
struct AttnShape {
  int64_t B, S, Hq, Hkv, hd;
};
template <class F>
void attention_forward(const F* q, const F* k, const F* v, const AttnShape& s, F* probs, F* o,
                       ThreadPool* pool);
template <class F>
void attention_backward(const F* q, const F* k, const F* v, const F* probs, const F* o,
                        const F* dout, const AttnShape& s, F* dq, F* dk, F* dv, ThreadPool* pool);

// ---------------------------------------------------------------- SwiGLU -------------------
// g = silu(a) ⊙ b, silu(a) = a·σ(a);  da = dg ⊙ b ⊙ σ(a)(1 + a(1 − σ(a))),  db = dg ⊙ silu(a)
template <class F>
void swiglu_forward(const F* a, const F* b, F* g, int64_t n);
template <class F>
void swiglu_backward(const F* a, const F* b, const F* dg, F* da, F* db, int64_t n);

// ---------------------------------------------------------------- router -------------------
// Mixtral §2.1: for each token the k largest of the E logits (ties: lower expert first), and
// their weights w = softmax over those k. idx, w: [T][k].
// backward: dz_{idx_r} += w_r (dw_r − Σ_q w_q dw_q); the unselected logits get nothing here.
template <class F>
void route_forward(const F* logits, int64_t T, int64_t E, int64_t k, int32_t* idx, F* w);
template <class F>
void route_backward(const F* w, const int32_t* idx, const F* dw, int64_t T, int64_t E, int64_t k,
                    F* dlogits);

// Switch-Transformer load balancing (Fedus et al. 2021, eq. 4), for top-k routing:
//   L = coef · E · Σ_e f_e · P_e,  f_e = (slots routed to e) / (T·k),  P_e = mean_t softmax(z_t)_e
// f is a count (no gradient); dz_t = coef·E/T · p_t ⊙ (f − p_t·f). Returns L; dlogits += dL/dz
// when non-null. Uniform routing gives L = coef.
template <class F>
double load_balance_loss(const F* logits, const int32_t* idx, int64_t T, int64_t E, int64_t k,
                         double coef, F* dlogits);
// ST-MoE router z-loss (Zoph et al. 2022, eq. 5): L = coef · mean_t logsumexp(z_t)²;
// dz_t = coef · 2/T · lse_t · softmax(z_t).
template <class F>
double router_z_loss(const F* logits, int64_t T, int64_t E, double coef, F* dlogits);

// ---------------------------------------------------------------- cross-entropy ------------
// Returns Σ_t (logsumexp(z_t) − z_t[target_t]) over T rows of V logits (summed in token order,
// in double). When dlogits is non-null it receives scale · (softmax(z_t) − onehot(target_t));
// dlogits may alias logits (the logits are then consumed).
template <class F>
double cross_entropy(const F* logits, const int32_t* targets, int64_t T, int64_t V, F scale,
                     F* dlogits, ThreadPool* pool);

}  // namespace mixtral::train
