#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "kernels/dequant.h"
#include "kernels/matmul.h"
#include "ops/ops.h"

namespace mixtral {

namespace {
AttentionShape attention_shape(const Config& c) {
  return {c.n_heads, c.n_kv_heads, c.head_dim, c.sliding_window > 0 ? c.sliding_window : 0};
}
}  // namespace

State::State(const Config& c, int64_t max_tokens_, int n_threads)
    : max_tokens(max_tokens_), dim_(c.dim), vocab_(c.vocab_size) {
  const size_t T = size_t(max_tokens), k = size_t(c.is_moe() ? c.n_experts_used : 1);
  const size_t E = size_t(c.is_moe() ? c.n_experts : 1);
  x.resize(T * c.dim);
  xn.resize(T * c.dim);
  q.resize(T * c.q_dim());
  this->k.resize(T * c.kv_dim());
  v.resize(T * c.kv_dim());
  proj.resize(T * c.dim);
  runs.reserve(T);
  attn = AttentionScratch(attention_shape(c), std::max(1, n_threads));
  inv_freq.resize(size_t(c.head_dim / 2));
  ops::rope_inv_freq(inv_freq.data(), c.head_dim, c.rope_theta);
  router_logits.resize(T * E);
  route_expert.resize(T * k);
  route_weight.resize(T * k);
  slot_token.resize(T * k);
  token_slot.resize(T * k);
  expert_begin.resize(E + 1);
  expert_fill.resize(E);
  expert_order.reserve(E);
  const size_t rows = std::min<size_t>(T * k, kExpertRows);
  ex_in.resize(T * k * c.dim);
  ex_h1.resize(rows * c.ffn_dim);
  ex_h3.resize(rows * c.ffn_dim);
  ex_out.resize(T * k * c.dim);
  if (c.is_moe()) {
    hint_x.resize(T * c.dim);
    hint_logits.resize(T * E);
    hint_expert.resize(T * k);
    hint_weight.resize(T * k);
    hint_count.resize(E);
    hint_list.reserve(E);
  }
  out_rows.reserve(T);
  reserve_logit_rows(1);
}

void State::reserve_logit_rows(int64_t n) {
  if (n <= max_logit_rows) return;
  max_logit_rows = n;
  out_x.resize(size_t(n * dim_));
  logits.resize(size_t(n * vocab_));
}

uint64_t runtime_bytes_estimate(const Config& c, int64_t max_tokens, int64_t kv_positions, int n_threads) {
  const uint64_t T = uint64_t(max_tokens), k = uint64_t(c.is_moe() ? c.n_experts_used : 1);
  const uint64_t E = uint64_t(c.is_moe() ? c.n_experts : 1), dim = uint64_t(c.dim);
  // Activations of the batch, the expert hidden rows, logits for a few rows, attention scratch.
  const uint64_t floats = T * (7 * dim + 2 * uint64_t(c.q_dim()) + 2 * uint64_t(c.kv_dim()) + 2 * E + 2 * k * dim) +
                          std::min<uint64_t>(T * k, kExpertRows) * 2 * uint64_t(c.ffn_dim) +
                          16 * (uint64_t(c.vocab_size) + dim) + uint64_t(std::max(1, n_threads)) * 64 * 1024;
  const uint64_t kv = 2 * uint64_t(c.n_layers) * uint64_t(kv_positions) * uint64_t(c.kv_dim());
  return (floats + kv) * sizeof(float);
}

namespace {

void check_batch(const Config& c, const Batch& b, const KVCache& kv, const State& s) {
  if (b.size() > s.max_tokens)
    fail("batch", std::to_string(b.size()) + " tokens exceed the state's capacity of " + std::to_string(s.max_tokens));
  if (b.n_logits() > s.max_logit_rows)
    fail("batch", std::to_string(b.n_logits()) + " tokens ask for logits; the state has room for " +
                      std::to_string(s.max_logit_rows) + " (State::reserve_logit_rows)");
  for (int64_t t = 0; t < b.size(); ++t) {
    if (b.token[t] < 0 || b.token[t] >= c.vocab_size)
      fail("batch", "token id " + std::to_string(b.token[t]) + " is outside the vocabulary");
    if (!kv.live(b.seq[t])) fail("batch", "sequence " + std::to_string(b.seq[t]) + " has no KV slot");
    if (b.pos[t] < 0 || b.pos[t] >= kv.capacity(b.seq[t]))
      fail("context", "position " + std::to_string(b.pos[t]) + " is past the sequence's KV capacity " +
                          std::to_string(kv.capacity(b.seq[t])));
  }
}

void rmsnorm_rows(const float* x, const std::vector<float>& w, float* out, int64_t n_rows, int64_t dim, float eps,
                  ThreadPool& pool) {
  pool.parallel_for(n_rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) ops::rmsnorm(x + r * dim, w.data(), out + r * dim, dim, eps);
  });
}

void add_rows(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// The keys and values of one layer of the cache, for the attention kernel.
struct CacheLayer final : KVSource {
  CacheLayer(const KVCache& kv, int64_t layer) : kv(kv), layer(layer) {}
  const float* k(int seq, int64_t pos) const override { return kv.k(layer, seq, pos); }
  const float* v(int seq, int64_t pos) const override { return kv.v(layer, seq, pos); }
  const KVCache& kv;
  int64_t layer;
};

// Grouped-query causal attention of every token of the batch over its own sequence.
//   in: s.xn [T][dim]   out: s.proj [T][dim]
void attention(const Config& c, const LayerWeights& L, int64_t layer, const Batch& b, KVCache& kv, State& s,
               ThreadPool& pool, ActivationObserver* acts) {
  const int64_t T = b.size(), hd = c.head_dim, q_dim = c.q_dim(), kv_dim = c.kv_dim();
  if (acts) acts->on_matmul_input(layer, MatmulInput::AttnQKV, -1, s.xn.data(), T, c.dim);
  matmul(L.wq, s.xn.data(), T, s.q.data(), pool);  // [T][q_dim]
  matmul(L.wk, s.xn.data(), T, s.k.data(), pool);  // [T][kv_dim]
  matmul(L.wv, s.xn.data(), T, s.v.data(), pool);  // [T][kv_dim]

  // RoPE on q and k, then k and v into the cache, before any token of the batch attends.
  pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      ops::rope(&s.q[t * q_dim], c.n_heads, hd, b.pos[t], s.inv_freq.data(), c.rope_style);
      ops::rope(&s.k[t * kv_dim], c.n_kv_heads, hd, b.pos[t], s.inv_freq.data(), c.rope_style);
      std::memcpy(kv.k(layer, b.seq[t], b.pos[t]), &s.k[t * kv_dim], sizeof(float) * kv_dim);
      std::memcpy(kv.v(layer, b.seq[t], b.pos[t]), &s.v[t * kv_dim], sizeof(float) * kv_dim);
    }
  });

  // Flash-style attention over each run of consecutive tokens of one sequence, in place:
  // q becomes the attention output.  [T][q_dim]
  s.runs.clear();
  for (int64_t t = 0; t < T; ++t) {
    if (t > 0 && b.seq[t] == b.seq[t - 1] && b.pos[t] == b.pos[t - 1] + 1) ++s.runs.back().n;
    else s.runs.push_back({b.seq[t], b.pos[t], 1, &s.q[t * q_dim], &s.q[t * q_dim]});
  }
  const CacheLayer source(kv, layer);
  mixtral::attention(attention_shape(c), s.runs.data(), int64_t(s.runs.size()), source, s.attn, pool);
  if (acts) acts->on_matmul_input(layer, MatmulInput::AttnOutput, -1, s.q.data(), T, q_dim);
  matmul(L.wo, s.q.data(), T, s.proj.data(), pool);  // [T][dim]
}

// Offloaded experts only: tells the cache which experts layer `target` will probably use, by
// applying its router to the residual stream as it is now (s.x) and/or repeating the previous
// pass's choice there (temporal locality), as the cache's prefetch mode says.
void hint_experts(const Config& c, const LayerWeights& target, int64_t target_layer, int64_t T, State& s,
                  ThreadPool& pool, ExpertCache& cache) {
  const PrefetchMode mode = cache.options().prefetch;
  if (mode == PrefetchMode::Router || mode == PrefetchMode::Both) {
    const int64_t E = c.n_experts, k = c.n_experts_used;
    rmsnorm_rows(s.x.data(), target.ffn_norm, s.hint_x.data(), T, c.dim, c.norm_eps, pool);
    matmul(target.router, s.hint_x.data(), T, s.hint_logits.data(), pool);
    route_top_k(s.hint_logits.data(), T, E, k, s.hint_expert.data(), s.hint_weight.data());
    // The guessed first choices, most tokens first. (Second choices are guessed less often
    // right: hinting them too read ~25 % more bytes per token for a similar hit rate, measured
    // on the full-depth model and the trained default model; docs/BENCHMARKS.md.)
    std::fill(s.hint_count.begin(), s.hint_count.end(), 0);
    for (int64_t t = 0; t < T; ++t) ++s.hint_count[s.hint_expert[t * k]];
    s.hint_list.clear();
    for (int32_t e = 0; e < E; ++e)
      if (s.hint_count[e] > 0) s.hint_list.push_back(e);
    std::stable_sort(s.hint_list.begin(), s.hint_list.end(),
                     [&](int32_t a, int32_t b) { return s.hint_count[a] > s.hint_count[b]; });
    cache.prefetch(target_layer, s.hint_list);
  }
  if (mode == PrefetchMode::Previous || mode == PrefetchMode::Both)
    cache.prefetch(target_layer, cache.previous(target_layer));
}

// Sparse mixture of experts: route each token to its top-k experts, run every expert once on
// all the tokens routed to it, combine the outputs with the routing weights. With offloaded
// experts (`cache`), the chosen experts are demanded first, the next layer's are hinted, and
// the experts run in the order they become available.
//   in: s.xn [T][dim]   out: s.proj [T][dim]
void moe(const Config& c, const LayerWeights& L, const LayerWeights* next, int64_t layer, const Batch& b, State& s,
         ThreadPool& pool, RoutingObserver* observer, ActivationObserver* acts, ExpertCache* cache) {
  const int64_t T = b.size(), dim = c.dim, ffn = c.ffn_dim;
  const int64_t E = c.is_moe() ? c.n_experts : 1, k = c.is_moe() ? c.n_experts_used : 1;

  // 1. Route.  router_logits: [T][E]; route_expert, route_weight: [T][k]
  if (c.is_moe()) {
    if (acts) acts->on_matmul_input(layer, MatmulInput::Router, -1, s.xn.data(), T, dim);
    matmul(L.router, s.xn.data(), T, s.router_logits.data(), pool);
    route_top_k(s.router_logits.data(), T, E, k, s.route_expert.data(), s.route_weight.data());
    if (observer)
      observer->on_route(layer, b, k, E, s.route_expert.data(), s.route_weight.data(), s.router_logits.data());
  } else {  // a dense model is one expert that every token uses with weight 1
    std::fill_n(s.route_expert.begin(), T, 0);
    std::fill_n(s.route_weight.begin(), T, 1.0f);
  }

  // 2. Group the (token, rank) slots by expert: expert e owns slots [expert_begin[e], expert_begin[e+1]).
  std::fill(s.expert_begin.begin(), s.expert_begin.end(), 0);
  for (int64_t i = 0; i < T * k; ++i) ++s.expert_begin[s.route_expert[i] + 1];
  for (int64_t e = 0; e < E; ++e) s.expert_begin[e + 1] += s.expert_begin[e];
  std::copy(s.expert_begin.begin(), s.expert_begin.begin() + E, s.expert_fill.begin());
  for (int64_t i = 0; i < T * k; ++i) {
    const int64_t slot = s.expert_fill[s.route_expert[i]]++;
    s.slot_token[slot] = int32_t(i / k);
    s.token_slot[i] = int32_t(slot);
  }
  pool.parallel_for(T * k, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      std::memcpy(&s.ex_in[i * dim], &s.xn[s.slot_token[i] * dim], sizeof(float) * dim);
  });

  // 3. Run each chosen expert once over all its tokens: SwiGLU, w2 · (silu(w1 x) ⊙ w3 x).
  //    Sparsity: an expert nobody chose is never touched (nor loaded).
  s.expert_order.clear();
  for (int32_t e = 0; e < E; ++e)
    if (s.expert_begin[e + 1] > s.expert_begin[e]) s.expert_order.push_back(e);
  if (cache) {
    cache->demand(layer, s.expert_order);  // misses start loading; order: resident first
    if (next) hint_experts(c, *next, layer + 1, T, s, pool, *cache);
  }
  for (const int32_t e : s.expert_order) {
    const ExpertWeights& X = cache ? cache->acquire(layer, e) : L.experts[e];
    for (int64_t first = s.expert_begin[e]; first < s.expert_begin[e + 1]; first += kExpertRows) {
      const int64_t n = std::min(kExpertRows, s.expert_begin[e + 1] - first);
      if (acts) acts->on_matmul_input(layer, MatmulInput::ExpertGateUp, e, &s.ex_in[first * dim], n, dim);
      matmul(X.w1, &s.ex_in[first * dim], n, s.ex_h1.data(), pool);  // [n][ffn]
      matmul(X.w3, &s.ex_in[first * dim], n, s.ex_h3.data(), pool);  // [n][ffn]
      pool.parallel_for(n, [&](int64_t i0, int64_t i1) {
        ops::silu_mul(&s.ex_h1[i0 * ffn], &s.ex_h3[i0 * ffn], (i1 - i0) * ffn);
      });
      if (acts) acts->on_matmul_input(layer, MatmulInput::ExpertDown, e, s.ex_h1.data(), n, ffn);
      matmul(X.w2, s.ex_h1.data(), n, &s.ex_out[first * dim], pool);  // [n][dim]
    }
    if (cache) cache->release(layer, e);
  }

  // 4. Combine, in rank order: proj[t] = Σ_r weight[t][r] · out[slot(t, r)].
  pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* y = &s.proj[t * dim];
      std::fill(y, y + dim, 0.f);
      for (int64_t r = 0; r < k; ++r) ops::axpy(s.route_weight[t * k + r], &s.ex_out[s.token_slot[t * k + r] * dim], y, dim);
    }
  });
}

}  // namespace

void forward(const Model& model, const Batch& b, KVCache& kv, State& s, ThreadPool& pool, RoutingObserver* observer,
             ActivationObserver* activations) {
  const Config& c = model.config();
  const Weights& w = model.weights();
  check_batch(c, b, kv, s);
  const int64_t T = b.size(), dim = c.dim;
  if (activations) activations->on_forward(T);

  // Embedding lookup.  x: [T][dim]  (single rows: Model::load never tiles token_embd)
  if (w.token_embd.layout != Layout::Rows) fail("forward", "internal: the embedding matrix is tiled");
  pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) dequantize_row(w.token_embd.dtype, w.token_embd.row(b.token[t]), &s.x[t * dim], dim);
  });

  ExpertCache* cache = model.expert_cache();
  if (cache) {
    cache->begin_forward(T);
    hint_experts(c, w.layers[0], 0, T, s, pool, *cache);
  }

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    const LayerWeights* next = l + 1 < c.n_layers ? &w.layers[l + 1] : nullptr;
    rmsnorm_rows(s.x.data(), L.attn_norm, s.xn.data(), T, dim, c.norm_eps, pool);
    attention(c, L, l, b, kv, s, pool, activations);
    add_rows(s.x.data(), s.proj.data(), T * dim);  // h = x + attention(norm(x))
    rmsnorm_rows(s.x.data(), L.ffn_norm, s.xn.data(), T, dim, c.norm_eps, pool);
    moe(c, L, next, l, b, s, pool, observer, activations, cache);
    add_rows(s.x.data(), s.proj.data(), T * dim);  // out = h + moe(norm(h))
  }

  // LM head, only for the tokens whose logits were asked for.  logits: [n_out][vocab]
  s.out_rows.clear();
  for (int64_t t = 0; t < T; ++t)
    if (b.logits[t]) s.out_rows.push_back(int32_t(t));
  const int64_t n_out = int64_t(s.out_rows.size());
  for (int64_t i = 0; i < n_out; ++i)
    ops::rmsnorm(&s.x[s.out_rows[i] * dim], w.output_norm.data(), &s.out_x[i * dim], dim, c.norm_eps);
  if (n_out > 0) matmul(w.output, s.out_x.data(), n_out, s.logits.data(), pool);
}

}  // namespace mixtral
