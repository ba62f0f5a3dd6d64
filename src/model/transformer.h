// The Mixtral forward pass over a Batch of tokens from any number of sequences.
//
//   h   = x + Attention(RMSNorm(x))            grouped-query attention, RoPE, KV cache
//   out = h + MoE(RMSNorm(h))                  route → run experts grouped → combine
//
// State holds every activation buffer, sized once for the largest batch; forward() allocates
// nothing. Logits are kept for one token per batch unless more rows are reserved (most callers
// want the last token's only; [512][32000] floats would be 65 MB).
#pragma once
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "model/activation_observer.h"
#include "model/batch.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/routing.h"

namespace mixtral {

// Expert FFNs run over at most this many (token, rank) rows at a time, which bounds the
// [rows][ffn] hidden buffers (results do not depend on it: the matmuls are batch-invariant).
inline constexpr int64_t kExpertRows = 128;

struct State {
  State(const Config& c, int64_t max_tokens, int n_threads);

  int64_t max_tokens;
  std::vector<float> x;        // [T][dim]       the residual stream
  std::vector<float> xn;       // [T][dim]       normed input of the current sub-layer
  std::vector<float> q;        // [T][q_dim]     queries, then (in place) attention's output
  std::vector<float> k;        // [T][kv_dim]
  std::vector<float> v;        // [T][kv_dim]
  std::vector<float> proj;     // [T][dim]       output of wo / of the MoE
  std::vector<float> inv_freq;  // [head_dim/2]  RoPE frequencies
  std::vector<QueryRun> runs;   // the batch's runs of consecutive tokens of one sequence
  AttentionScratch attn;        // per-thread tiles of the attention kernel

  // MoE: routing and tokens grouped by expert (a "slot" is one (token, rank) pair).
  std::vector<float> router_logits;  // [T][n_experts]
  std::vector<int32_t> route_expert;  // [T][k]
  std::vector<float> route_weight;    // [T][k]
  std::vector<int32_t> slot_token;    // [T·k]  token of each slot, slots grouped by expert
  std::vector<int32_t> token_slot;    // [T][k] where each (token, rank) landed
  std::vector<int64_t> expert_begin;  // [n_experts + 1] slot range of each expert
  std::vector<int64_t> expert_fill;   // [n_experts] next free slot of each expert while grouping
  std::vector<int32_t> expert_order;  // the chosen experts, in the order they run
  std::vector<float> ex_in;           // [T·k][dim]   gathered inputs
  std::vector<float> ex_h1;           // [kExpertRows][ffn]   w1 x, then silu(w1 x) ⊙ w3 x
  std::vector<float> ex_h3;           // [kExpertRows][ffn]   w3 x
  std::vector<float> ex_out;          // [T·k][dim]   w2 h
  // Offloaded experts: the next layer's router applied to the current residual stream, to
  // prefetch the experts it will probably choose.
  std::vector<float> hint_x;          // [T][dim]
  std::vector<float> hint_logits;     // [T][n_experts]
  std::vector<int32_t> hint_expert;   // [T][k]
  std::vector<float> hint_weight;     // [T][k]
  std::vector<int64_t> hint_count;    // [n_experts] tokens guessed for each expert
  std::vector<int32_t> hint_list;     // [n_experts] the guessed experts, most tokens first

  std::vector<int32_t> out_rows;  // tokens whose logits were asked for
  std::vector<float> out_x;       // [max_logit_rows][dim]
  std::vector<float> logits;      // [max_logit_rows][vocab]  forward()'s result, n_out rows
  int64_t max_logit_rows = 0;     // most tokens of a batch that may ask for logits

  // Makes room for the logits of n tokens per batch (grows out_x and logits; never shrinks).
  // Call it outside forward(), e.g. before evaluating a prompt with all its logits.
  void reserve_logit_rows(int64_t n);

 private:
  int64_t dim_ = 0, vocab_ = 0;
};

// An upper estimate of what a forward pass needs besides the weights: a State for batches of
// `max_tokens` and a KV cache of `kv_positions` positions in all (--memory-budget's reserve).
uint64_t runtime_bytes_estimate(const Config& c, int64_t max_tokens, int64_t kv_positions, int n_threads);

// Runs the batch through the model, writing K/V of every token into `kv` and the logits of
// the tokens marked in batch.logits into state.logits (in batch order). Tokens of one sequence
// must have consecutive positions whose earlier positions are already in the cache or earlier
// in the batch. Throws Error for a token id, position or sequence out of range. The observers
// (either may be null) see the routing decisions and the inputs of the matrix products.
void forward(const Model& model, const Batch& batch, KVCache& kv, State& state, ThreadPool& pool,
             RoutingObserver* observer = nullptr, ActivationObserver* activations = nullptr);

}  // namespace mixtral
