// The key/value cache, paged: a pool of fixed-size blocks (block_size positions of every layer)
// and, per sequence, a block table mapping its positions to blocks. Values are float32
// (llama.cpp's references use an F32 cache; F16 moves logits by ~2e-4).
//
// Prefix sharing: a full block is identified by the hash of every token up to its end. When a
// new sequence starts with tokens whose blocks are cached (the same system prompt, a resent
// conversation), attach_prefix() maps those blocks into its table instead of recomputing them.
// Shared blocks are full and lie before the sequence's first computed position, so they are
// never written again. Blocks no sequence uses stay cached (LRU) until the pool needs them.
#pragma once
#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "model/config.h"

namespace mixtral {

class KVCache {
 public:
  // Throws Error when the pool would not fit in the machine's memory.
  KVCache(const Config& config, int64_t n_blocks, int64_t block_size);

  // A cache for `n_seq` sequences of up to `n_ctx` positions each, fully reserved up front.
  static KVCache reserved(const Config& config, int n_seq, int64_t n_ctx, int64_t block_size = 16);

  int64_t block_size() const { return block_size_; }
  int64_t n_blocks() const { return n_blocks_; }
  int64_t blocks_used() const { return n_used_; }
  size_t bytes() const { return 2 * n_elems_ * sizeof(float); }

  // --- sequences ---
  int add_seq();                        // a new, empty sequence; returns its id
  void free_seq(int seq);               // releases its blocks (cached ones stay shareable)
  int n_seq() const { return int(tables_.size()); }
  bool live(int seq) const { return seq >= 0 && seq < n_seq() && live_[size_t(seq)]; }
  // Makes positions [0, n) of `seq` addressable, allocating blocks; false when the pool is out
  // of blocks (what was allocated stays).
  bool ensure(int seq, int64_t n);
  int64_t capacity(int seq) const { return int64_t(tables_[size_t(seq)].size()) * block_size_; }
  // Drops positions from n on (whole blocks past n are released).
  void truncate(int seq, int64_t n);

  // --- prefix sharing ---
  // Maps the longest cached run of full blocks matching tokens[0, k·block_size) into the empty
  // sequence `seq`, leaving at least one token to compute. Returns the positions reused.
  int64_t attach_prefix(int seq, const std::vector<int32_t>& tokens);
  // Publishes every full block of `seq` whose positions [0, n_computed) hold `tokens`.
  void register_blocks(int seq, const std::vector<int32_t>& tokens, int64_t n_computed);

  // [kv_dim] key / value vectors of `layer`, `seq`, position `pos` (which must be addressable).
  float* k(int64_t layer, int seq, int64_t pos) { return k_.get() + offset(layer, seq, pos); }
  float* v(int64_t layer, int seq, int64_t pos) { return v_.get() + offset(layer, seq, pos); }
  const float* k(int64_t layer, int seq, int64_t pos) const { return k_.get() + offset(layer, seq, pos); }
  const float* v(int64_t layer, int seq, int64_t pos) const { return v_.get() + offset(layer, seq, pos); }

 private:
  struct Block {
    int32_t refs = 0;
    uint64_t hash = 0;            // chain hash of all tokens up to the block's end; 0 = unpublished
    std::vector<int32_t> tokens;  // the block's own tokens (to rule out hash collisions)
    uint64_t parent = 0;          // hash of the previous block (0 for the first)
    std::list<int32_t>::iterator lru;  // position in cached_ when refs == 0 and published
  };
  size_t offset(int64_t layer, int seq, int64_t pos) const {
    const int32_t block = tables_[size_t(seq)][size_t(pos / block_size_)];
    return ((size_t(layer) * size_t(n_blocks_) + size_t(block)) * size_t(block_size_) + size_t(pos % block_size_)) *
           size_t(kv_dim_);
  }
  int32_t allocate();          // a free block, evicting the least recently cached one if needed; -1 if none
  void release(int32_t block);
  static uint64_t chain_hash(uint64_t parent, const int32_t* tokens, int64_t n);

  int64_t n_layers_, n_blocks_, block_size_, kv_dim_;
  size_t n_elems_;
  std::unique_ptr<float[]> k_, v_;  // [layer][block][slot][kv_dim], uninitialised until written
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;       // never-published free blocks
  std::list<int32_t> cached_;       // published, unreferenced blocks, least recently used first
  std::unordered_map<uint64_t, int32_t> by_hash_;
  std::vector<std::vector<int32_t>> tables_;
  std::vector<uint8_t> live_;
  std::vector<int> free_seqs_;
  int64_t n_used_ = 0;
};

}  // namespace mixtral
