// Causal grouped-query attention over keys and values held anywhere (a paged cache), computed
// flash-style: keys are taken in tiles of kKeyTile positions with an online softmax, so no row of
// scores over the whole context is ever stored, and each K/V tile is read once for every query
// head that shares its KV head and for several query tokens of the same sequence.
//
//   out[t][h] = Σ_p softmax_p(q[t][h] · k[p][h/group] / √head_dim) · v[p][h/group]
//               over the positions p of t's sequence with p ≤ pos(t) and pos(t) − p < window
//
// Reproducibility: tiles are aligned to absolute positions (multiples of kKeyTile), and every
// query row runs the same operations on its own tiles in increasing order, whatever else is
// computed beside it. So a token's output does not depend on the other tokens of the call (one
// token alone == a long prompt == a mixed batch, bit for bit), on the thread count, or on the
// SIMD level (AVX2 and AVX-512 compute the same lanes with the same operations). The sums are
// ordered differently from ref:: (one score, then a running rescaled sum), within ~1e-6.
#pragma once
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"

namespace mixtral {

constexpr int64_t kKeyTile = 16;  // key positions per tile

struct AttentionShape {
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t window = 0;  // 0: no limit; else a query at p sees keys p' with p − p' < window
  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
};

// Where keys and values live: the [kv_dim] vectors of sequence `seq` at position `pos`
// (KV head h at + h·head_dim). Only positions a query can see are asked for.
class KVSource {
 public:
  virtual const float* k(int seq, int64_t pos) const = 0;
  virtual const float* v(int seq, int64_t pos) const = 0;

 protected:
  ~KVSource() = default;
};

// n consecutive query tokens of one sequence, at positions pos, pos+1, ..., pos+n−1. The keys
// and values of every position up to the last one must already be in the source.
struct QueryRun {
  int seq = 0;
  int64_t pos = 0, n = 0;
  const float* q = nullptr;  // [n][q_dim] (after RoPE)
  float* out = nullptr;      // [n][q_dim]; may be q (the output then replaces the queries)
};

// Per-thread buffers, sized once for a shape and a thread count (forward() allocates nothing).
class AttentionScratch {
 public:
  AttentionScratch() = default;
  AttentionScratch(const AttentionShape& shape, int n_threads);
  const AttentionShape& shape() const { return shape_; }
  int n_threads() const { return int(threads_.size()); }
  int64_t tokens_per_item() const { return tokens_; }  // query tokens of a run computed together
  int64_t rows() const { return rows_; }  // query rows (token, head) of one item, padded to 16

  struct Thread {
    std::vector<float> f;    // transposed queries, output accumulators, scores, softmax state
    std::vector<int32_t> i;  // each row's first and last visible position
  };
  Thread& thread(int i) { return threads_[size_t(i)]; }

 private:
  AttentionShape shape_;
  int64_t tokens_ = 0, rows_ = 0;
  std::vector<Thread> threads_;
};

// Attention for every run; runs must not overlap in `out`. Work items (up to tokens_per_item()
// tokens of a run × one KV head) are dealt round-robin to the pool's threads, which must not
// outnumber the scratch's.
void attention(const AttentionShape& shape, const QueryRun* runs, int64_t n_runs, const KVSource& kv,
               AttentionScratch& scratch, ThreadPool& pool);

namespace ref {
// Scalar: for each (token, head), the row of scores over all visible positions, a softmax, then
// the weighted sum of the values.
void attention(const AttentionShape& shape, const QueryRun* runs, int64_t n_runs, const KVSource& kv);
}  // namespace ref

}  // namespace mixtral
