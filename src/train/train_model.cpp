// The training forward/backward (see train_model.h). Shapes are in the comments:
// T = B·S tokens, D model width, F expert width, E experts, K experts per token, V vocabulary.
#include "train/train_model.h"

#include <cstring>

#include "kernels/matmul.h"

namespace mixtral::train {

// Everything one layer's backward needs from its forward.
struct TrainModel::LayerActs {
  std::vector<float> x_in;     // [T][D]  the residual stream entering the layer
  std::vector<float> r1, r2;   // [T]     RMSNorm scales (attention, MoE)
  std::vector<float> n;        // [T][D]  RMSNorm(x_in)
  std::vector<float> q;        // [T][Hq·hd]  after RoPE
  std::vector<float> k, v;     // [T][Hkv·hd] k after RoPE
  std::vector<float> probs;    // [B][Hq][S][S]
  std::vector<float> att;      // [T][Hq·hd]  attention output before Wo
  std::vector<float> h;        // [T][D]  x_in + attention
  std::vector<float> m;        // [T][D]  RMSNorm(h), the MoE input
  std::vector<float> zr;       // [T][E]  router logits (MoE only)
  std::vector<int32_t> idx;    // [T][K]  chosen experts, rank order
  std::vector<float> w;        // [T][K]  their weights
  // Slots (token, rank) grouped by expert: expert e owns slots [begin[e], begin[e+1]).
  std::vector<int32_t> slot_token, slot_rank;  // [T·K]
  std::vector<int32_t> token_slot;             // [T][K]
  std::vector<int64_t> begin;                  // [E+1]
  std::vector<float> xe;                       // [T·K][D]  gathered inputs
  std::vector<float> h1, h3, g;                // [T·K][F]  W1·x, W3·x, silu(h1) ⊙ h3
  std::vector<float> ye;                       // [T·K][D]  expert outputs
};

namespace {
void add_into(float* dst, const float* src, int64_t n, ThreadPool& pool) {
  pool.parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dst[i] += src[i];
  }, 4096);
}
template <class T>
void size_to(std::vector<T>& v, int64_t n) { v.assign(size_t(n), T(0)); }
}  // namespace

TrainModel::TrainModel(const TrainConfig& config, int64_t batch, int64_t seq, ThreadPool& pool)
    : c_(config),
      layout_(config),
      pool_(pool),
      B_(batch), S_(seq), T_(batch * seq),
      D_(config.model.dim), F_(config.model.ffn_dim), E_(config.n_experts()), K_(config.top_k()),
      V_(config.model.vocab_size),
      rope_(config.model.head_dim, seq, config.model.rope_theta),
      attn_{batch, seq, config.model.n_heads, config.model.n_kv_heads, config.model.head_dim} {
  const Config& m = c_.model;
  const int64_t T = T_, TK = T_ * K_, qd = m.q_dim(), kvd = m.kv_dim();
  size_to(pos_, T);
  for (int64_t t = 0; t < T; ++t) pos_[size_t(t)] = int32_t(t % S_);
  size_to(tokens_, T);
  size_to(targets_, T);
  layers_.resize(size_t(m.n_layers));
  for (auto& a : layers_) {
    size_to(a.x_in, T * D_); size_to(a.r1, T); size_to(a.r2, T); size_to(a.n, T * D_);
    size_to(a.q, T * qd); size_to(a.k, T * kvd); size_to(a.v, T * kvd);
    size_to(a.probs, B_ * m.n_heads * S_ * S_); size_to(a.att, T * qd);
    size_to(a.h, T * D_); size_to(a.m, T * D_); size_to(a.zr, T * E_);
    size_to(a.idx, TK); size_to(a.w, TK);
    size_to(a.slot_token, TK); size_to(a.slot_rank, TK); size_to(a.token_slot, TK); size_to(a.begin, E_ + 1);
    size_to(a.xe, TK * D_); size_to(a.h1, TK * F_); size_to(a.h3, TK * F_); size_to(a.g, TK * F_);
    size_to(a.ye, TK * D_);
  }
  size_to(x_final_, T * D_); size_to(r_final_, T); size_to(f_, T * D_); size_to(logits_, T * V_);
  size_to(dx_, T * D_); size_to(dtmp_, T * D_); size_to(dtmp2_, T * D_);
  size_to(dq_, T * qd); size_to(dk_, T * kvd); size_to(dv_, T * kvd); size_to(datt_, T * qd);
  size_to(dz_, T * E_); size_to(dw_, TK); size_to(dye_, TK * D_); size_to(dxe_, TK * D_); size_to(dxe2_, TK * D_);
  size_to(dg_, TK * F_); size_to(dh1_, TK * F_); size_to(dh3_, TK * F_);
}

TrainModel::~TrainModel() = default;

// ================================================================== forward ==================

Losses TrainModel::forward(const float* P, const int32_t* tokens, const int32_t* targets) {
  std::memcpy(tokens_.data(), tokens, sizeof(int32_t) * size_t(T_));
  std::memcpy(targets_.data(), targets, sizeof(int32_t) * size_t(T_));
  const Config& m = c_.model;
  const float eps = m.norm_eps;
  Losses loss;

  embedding_forward(P + layout_.embed, D_, tokens_.data(), T_, layers_[0].x_in.data());  // [T][D]
  for (size_t l = 0; l < layers_.size(); ++l) {
    LayerActs& a = layers_[l];
    const ParamLayout::Layer& L = layout_.layers[l];
    attention_fwd(L, P, a, a.x_in.data());  // a.h = x_in + attention
    moe_fwd(L, P, a, int64_t(l));           // next x = h + MoE(RMSNorm(h))
    if (!c_.dense()) {
      const double n_layers = double(m.n_layers);
      loss.aux += load_balance_loss(a.zr.data(), a.idx.data(), T_, E_, K_, c_.aux_loss_coef / n_layers,
                                    static_cast<float*>(nullptr));
      if (c_.train.router_z_loss_coef > 0)
        loss.z += router_z_loss(a.zr.data(), T_, E_, c_.train.router_z_loss_coef / n_layers,
                                static_cast<float*>(nullptr));
    }
  }
  rmsnorm_forward(x_final_.data(), P + layout_.norm, T_, D_, eps, f_.data(), r_final_.data(), &pool_);
  linear_forward(P + layout_.lm_head, V_, D_, f_.data(), T_, logits_.data(), pool_);  // [T][V]
  loss.ce = cross_entropy(logits_.data(), targets_.data(), T_, V_, 1.0f, static_cast<float*>(nullptr), &pool_) /
            double(T_);
  return loss;
}

void TrainModel::attention_fwd(const ParamLayout::Layer& L, const float* P, LayerActs& a, const float* x) {
  const Config& m = c_.model;
  const int64_t qd = m.q_dim(), kvd = m.kv_dim();
  rmsnorm_forward(x, P + L.attn_norm, T_, D_, m.norm_eps, a.n.data(), a.r1.data(), &pool_);
  linear_forward(P + L.wq, qd, D_, a.n.data(), T_, a.q.data(), pool_);   // [T][Hq·hd]
  linear_forward(P + L.wk, kvd, D_, a.n.data(), T_, a.k.data(), pool_);  // [T][Hkv·hd]
  linear_forward(P + L.wv, kvd, D_, a.n.data(), T_, a.v.data(), pool_);  // [T][Hkv·hd]
  rope_forward(a.q.data(), T_, pos_.data(), m.n_heads, rope_);
  rope_forward(a.k.data(), T_, pos_.data(), m.n_kv_heads, rope_);
  attention_forward(a.q.data(), a.k.data(), a.v.data(), attn_, a.probs.data(), a.att.data(), &pool_);
  linear_forward(P + L.wo, D_, qd, a.att.data(), T_, a.h.data(), pool_);  // [T][D]
  add_into(a.h.data(), x, T_ * D_, pool_);                                // residual
}

void TrainModel::moe_fwd(const ParamLayout::Layer& L, const float* P, LayerActs& a, int64_t layer) {
  const Config& m = c_.model;
  float* out = size_t(layer + 1) < layers_.size() ? layers_[size_t(layer + 1)].x_in.data() : x_final_.data();
  rmsnorm_forward(a.h.data(), P + L.ffn_norm, T_, D_, m.norm_eps, a.m.data(), a.r2.data(), &pool_);

  // 1. route: logits = Wg·m [T][E]; top-k; softmax over the k. Dense: one expert, weight 1.
  if (c_.dense()) {
    std::fill(a.idx.begin(), a.idx.end(), 0);
    std::fill(a.w.begin(), a.w.end(), 1.0f);
  } else {
    linear_forward(P + L.router, E_, D_, a.m.data(), T_, a.zr.data(), pool_);
    route_forward(a.zr.data(), T_, E_, K_, a.idx.data(), a.w.data());
  }

  // 2. group the (token, rank) slots by expert, in token order within an expert.
  std::vector<int64_t> fill(static_cast<size_t>(E_), 0);
  std::fill(a.begin.begin(), a.begin.end(), 0);
  for (int64_t s = 0; s < T_ * K_; ++s) ++a.begin[size_t(a.idx[size_t(s)] + 1)];
  for (int64_t e = 0; e < E_; ++e) a.begin[size_t(e + 1)] += a.begin[size_t(e)];
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t r = 0; r < K_; ++r) {
      const int32_t e = a.idx[size_t(t * K_ + r)];
      const int64_t s = a.begin[size_t(e)] + fill[size_t(e)]++;
      a.slot_token[size_t(s)] = int32_t(t);
      a.slot_rank[size_t(s)] = int32_t(r);
      a.token_slot[size_t(t * K_ + r)] = int32_t(s);
    }
  for (int64_t s = 0; s < T_ * K_; ++s)
    std::memcpy(&a.xe[size_t(s * D_)], &a.m[size_t(a.slot_token[size_t(s)]) * size_t(D_)], sizeof(float) * size_t(D_));

  // 3. each expert once over its tokens: ye = W2 · (silu(W1·xe) ⊙ W3·xe)
  for (int64_t e = 0; e < E_; ++e) {
    const int64_t b = a.begin[size_t(e)], n = a.begin[size_t(e + 1)] - b;
    if (n == 0) continue;
    const float* xe = &a.xe[size_t(b * D_)];
    float *h1 = &a.h1[size_t(b * F_)], *h3 = &a.h3[size_t(b * F_)], *g = &a.g[size_t(b * F_)];
    linear_forward(P + L.w1[size_t(e)], F_, D_, xe, n, h1, pool_);  // [n][F]
    linear_forward(P + L.w3[size_t(e)], F_, D_, xe, n, h3, pool_);  // [n][F]
    pool_.parallel_for(n, [&](int64_t i0, int64_t i1) {
      swiglu_forward(h1 + i0 * F_, h3 + i0 * F_, g + i0 * F_, (i1 - i0) * F_);
    });
    linear_forward(P + L.w2[size_t(e)], D_, F_, g, n, &a.ye[size_t(b * D_)], pool_);  // [n][D]
  }

  // 4. combine in rank order: out[t] = h[t] + Σ_r w[t][r] · ye[slot(t, r)]
  pool_.parallel_for(T_, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* o = out + t * D_;
      std::memcpy(o, &a.h[size_t(t * D_)], sizeof(float) * size_t(D_));
      for (int64_t r = 0; r < K_; ++r) {
        const float w = a.w[size_t(t * K_ + r)];
        const float* y = &a.ye[size_t(a.token_slot[size_t(t * K_ + r)]) * size_t(D_)];
        for (int64_t i = 0; i < D_; ++i) o[i] += w * y[i];
      }
    }
  });
}

// ================================================================== backward =================

void TrainModel::backward(const float* P, float* G, float scale) {
  const Config& m = c_.model;
  // d loss/d logits = scale/T · (softmax − onehot), written over the logits.
  cross_entropy(logits_.data(), targets_.data(), T_, V_, scale / float(T_), logits_.data(), &pool_);
  linear_backward(P + layout_.lm_head, V_, D_, f_.data(), logits_.data(), T_, dtmp_.data(), G + layout_.lm_head,
                  ls_, pool_);
  rmsnorm_backward(x_final_.data(), P + layout_.norm, r_final_.data(), dtmp_.data(), T_, D_, dx_.data(),
                   G + layout_.norm, &pool_);
  for (int64_t l = m.n_layers - 1; l >= 0; --l) {
    LayerActs& a = layers_[size_t(l)];
    const ParamLayout::Layer& L = layout_.layers[size_t(l)];
    moe_bwd(L, P, G, a, dx_.data(), dx_.data(), scale);  // dx_: ∂/∂out → ∂/∂h
    attention_bwd(L, P, G, a, dx_.data(), dx_.data());   // dx_: ∂/∂h → ∂/∂x_in
  }
  embedding_backward(D_, tokens_.data(), T_, dx_.data(), G + layout_.embed);
}

// dx: ∂L/∂out [T][D] on entry; dh = ∂L/∂h on return (may alias dx).
void TrainModel::moe_bwd(const ParamLayout::Layer& L, const float* P, float* G, LayerActs& a, const float* dx,
                         float* dh, float scale) {
  const int64_t TK = T_ * K_;
  // combine: dye[s] = w_r · dout[t];  dw[t][r] = ye[s] · dout[t]
  pool_.parallel_for(TK, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t t = a.slot_token[size_t(s)], r = a.slot_rank[size_t(s)];
      const float w = a.w[size_t(t * K_ + r)];
      const float* d = dx + t * D_;
      float* o = &dye_[size_t(s * D_)];
      for (int64_t i = 0; i < D_; ++i) o[i] = w * d[i];
      dw_[size_t(t * K_ + r)] = dot_f32(&a.ye[size_t(s * D_)], d, D_);
    }
  });
  // experts, each over its slots
  for (int64_t e = 0; e < E_; ++e) {
    const int64_t b = a.begin[size_t(e)], n = a.begin[size_t(e + 1)] - b;
    if (n == 0) continue;
    const float* xe = &a.xe[size_t(b * D_)];
    const float *h1 = &a.h1[size_t(b * F_)], *h3 = &a.h3[size_t(b * F_)];
    float *dg = &dg_[size_t(b * F_)], *dh1 = &dh1_[size_t(b * F_)], *dh3 = &dh3_[size_t(b * F_)];
    linear_backward(P + L.w2[size_t(e)], D_, F_, &a.g[size_t(b * F_)], &dye_[size_t(b * D_)], n, dg,
                    G + L.w2[size_t(e)], ls_, pool_);
    pool_.parallel_for(n, [&](int64_t i0, int64_t i1) {
      swiglu_backward(h1 + i0 * F_, h3 + i0 * F_, dg + i0 * F_, dh1 + i0 * F_, dh3 + i0 * F_, (i1 - i0) * F_);
    });
    linear_backward(P + L.w1[size_t(e)], F_, D_, xe, dh1, n, &dxe_[size_t(b * D_)], G + L.w1[size_t(e)], ls_, pool_);
    linear_backward(P + L.w3[size_t(e)], F_, D_, xe, dh3, n, &dxe2_[size_t(b * D_)], G + L.w3[size_t(e)], ls_, pool_);
    add_into(&dxe_[size_t(b * D_)], &dxe2_[size_t(b * D_)], n * D_, pool_);
  }
  // gather back to tokens in rank order: dm[t] = Σ_r dxe[slot(t, r)]
  float* dm = dtmp_.data();
  pool_.parallel_for(T_, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* o = dm + t * D_;
      std::memset(o, 0, sizeof(float) * size_t(D_));
      for (int64_t r = 0; r < K_; ++r) {
        const float* src = &dxe_[size_t(a.token_slot[size_t(t * K_ + r)]) * size_t(D_)];
        for (int64_t i = 0; i < D_; ++i) o[i] += src[i];
      }
    }
  });
  // router: through the top-k softmax, plus the auxiliary losses (scaled like the CE)
  if (!c_.dense()) {
    std::fill(dz_.begin(), dz_.end(), 0.0f);
    route_backward(a.w.data(), a.idx.data(), dw_.data(), T_, E_, K_, dz_.data());
    const double n_layers = double(c_.model.n_layers);
    load_balance_loss(a.zr.data(), a.idx.data(), T_, E_, K_, c_.aux_loss_coef / n_layers * scale, dz_.data());
    if (c_.train.router_z_loss_coef > 0)
      router_z_loss(a.zr.data(), T_, E_, c_.train.router_z_loss_coef / n_layers * scale, dz_.data());
    linear_backward(P + L.router, E_, D_, a.m.data(), dz_.data(), T_, dtmp2_.data(), G + L.router, ls_, pool_);
    add_into(dm, dtmp2_.data(), T_ * D_, pool_);
  }
  // m = RMSNorm(h):  dh = dout + RMSNorm'(dm)
  rmsnorm_backward(a.h.data(), P + L.ffn_norm, a.r2.data(), dm, T_, D_, dtmp2_.data(), G + L.ffn_norm, &pool_);
  if (dh != dx) std::memcpy(dh, dx, sizeof(float) * size_t(T_ * D_));
  add_into(dh, dtmp2_.data(), T_ * D_, pool_);
}

// dh: ∂L/∂h [T][D] on entry; dx = ∂L/∂x_in on return (may alias dh).
void TrainModel::attention_bwd(const ParamLayout::Layer& L, const float* P, float* G, LayerActs& a, const float* dh,
                               float* dx) {
  const Config& m = c_.model;
  const int64_t qd = m.q_dim(), kvd = m.kv_dim();
  linear_backward(P + L.wo, D_, qd, a.att.data(), dh, T_, datt_.data(), G + L.wo, ls_, pool_);
  attention_backward(a.q.data(), a.k.data(), a.v.data(), a.probs.data(), a.att.data(), datt_.data(), attn_,
                     dq_.data(), dk_.data(), dv_.data(), &pool_);
  rope_backward(dq_.data(), T_, pos_.data(), m.n_heads, rope_);
  rope_backward(dk_.data(), T_, pos_.data(), m.n_kv_heads, rope_);
  // dn = dq·Wq + dk·Wk + dv·Wv
  float *dn = dtmp_.data(), *tmp = dtmp2_.data();
  linear_backward(P + L.wq, qd, D_, a.n.data(), dq_.data(), T_, dn, G + L.wq, ls_, pool_);
  linear_backward(P + L.wk, kvd, D_, a.n.data(), dk_.data(), T_, tmp, G + L.wk, ls_, pool_);
  add_into(dn, tmp, T_ * D_, pool_);
  linear_backward(P + L.wv, kvd, D_, a.n.data(), dv_.data(), T_, tmp, G + L.wv, ls_, pool_);
  add_into(dn, tmp, T_ * D_, pool_);
  rmsnorm_backward(a.x_in.data(), P + L.attn_norm, a.r1.data(), dn, T_, D_, tmp, G + L.attn_norm, &pool_);
  if (dx != dh) std::memcpy(dx, dh, sizeof(float) * size_t(T_ * D_));
  add_into(dx, tmp, T_ * D_, pool_);
}

std::vector<std::vector<int64_t>> TrainModel::expert_counts() const {
  std::vector<std::vector<int64_t>> out;
  for (const auto& a : layers_) {
    std::vector<int64_t> c(static_cast<size_t>(E_));
    for (int64_t e = 0; e < E_; ++e) c[size_t(e)] = a.begin[size_t(e + 1)] - a.begin[size_t(e)];
    out.push_back(c);
  }
  return out;
}

}  // namespace mixtral::train
