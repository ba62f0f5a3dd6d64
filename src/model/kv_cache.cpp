#include "model/kv_cache.h"

#include <unistd.h>

#include "core/error.h"

namespace mixtral {

KVCache::KVCache(const Config& c, int64_t n_blocks, int64_t block_size)
    : n_layers_(c.n_layers), n_blocks_(n_blocks), block_size_(block_size), kv_dim_(c.kv_dim()) {
  if (block_size < 1 || block_size > 4096) fail("kv cache", "block size must be in [1, 4096]");
  if (n_blocks < 1 || n_blocks > (int64_t(1) << 30)) fail("kv cache", "block count out of range");
  const double bytes = 2.0 * double(n_layers_) * double(n_blocks) * double(block_size) * double(kv_dim_) * sizeof(float);
  const double ram = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  if (bytes > 0.9 * ram)
    fail("--ctx-size", "the KV cache would need " + std::to_string(int64_t(bytes / (1 << 20))) +
                           " MiB, more than this machine has (lower --ctx-size or --parallel)");
  n_elems_ = size_t(n_layers_) * size_t(n_blocks) * size_t(block_size) * size_t(kv_dim_);
  k_.reset(new float[n_elems_]);  // not zeroed: untouched context costs no memory
  v_.reset(new float[n_elems_]);
  blocks_.resize(size_t(n_blocks));
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(int32_t(b));
}

KVCache KVCache::reserved(const Config& c, int n_seq, int64_t n_ctx, int64_t block_size) {
  if (n_ctx < 1 || n_ctx > c.max_context)
    fail("--ctx-size", std::to_string(n_ctx) + " is outside [1, " + std::to_string(c.max_context) + "] (the model's context)");
  const int64_t per_seq = (n_ctx + block_size - 1) / block_size;
  KVCache kv(c, per_seq * n_seq, block_size);
  for (int s = 0; s < n_seq; ++s) kv.ensure(kv.add_seq(), n_ctx);
  return kv;
}

int KVCache::add_seq() {
  if (!free_seqs_.empty()) {
    const int s = free_seqs_.back();
    free_seqs_.pop_back();
    live_[size_t(s)] = 1;
    return s;
  }
  tables_.emplace_back();
  live_.push_back(1);
  return int(tables_.size()) - 1;
}

void KVCache::free_seq(int seq) {
  if (!live(seq)) return;
  truncate(seq, 0);
  live_[size_t(seq)] = 0;
  free_seqs_.push_back(seq);
}

int32_t KVCache::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!cached_.empty()) {  // evict the least recently used cached block
    b = cached_.front();
    cached_.pop_front();
    by_hash_.erase(blocks_[size_t(b)].hash);
  } else {
    return -1;
  }
  Block& blk = blocks_[size_t(b)];
  blk = Block{};
  blk.refs = 1;
  ++n_used_;
  return b;
}

void KVCache::release(int32_t b) {
  Block& blk = blocks_[size_t(b)];
  if (--blk.refs > 0) return;
  --n_used_;
  if (blk.hash != 0) {
    cached_.push_back(b);
    blk.lru = std::prev(cached_.end());
  } else {
    free_.push_back(b);
  }
}

bool KVCache::ensure(int seq, int64_t n) {
  auto& table = tables_[size_t(seq)];
  while (int64_t(table.size()) * block_size_ < n) {
    const int32_t b = allocate();
    if (b < 0) return false;
    table.push_back(b);
  }
  return true;
}

void KVCache::truncate(int seq, int64_t n) {
  auto& table = tables_[size_t(seq)];
  const size_t keep = size_t((n + block_size_ - 1) / block_size_);
  while (table.size() > keep) {
    release(table.back());
    table.pop_back();
  }
  // A published block that is now only partly valid must not be shared any more.
  if (!table.empty() && n % block_size_ != 0) {
    Block& last = blocks_[size_t(table.back())];
    if (last.hash != 0 && last.refs == 1) {
      by_hash_.erase(last.hash);
      last.hash = 0;
    }
  }
}

uint64_t KVCache::chain_hash(uint64_t parent, const int32_t* tokens, int64_t n) {
  // FNV-1a over the parent hash and the tokens; 0 is reserved for "unpublished".
  uint64_t h = 1469598103934665603ull ^ parent;
  for (int64_t i = 0; i < n; ++i) {
    h ^= uint64_t(uint32_t(tokens[i]));
    h *= 1099511628211ull;
  }
  return h == 0 ? 1 : h;
}

int64_t KVCache::attach_prefix(int seq, const std::vector<int32_t>& tokens) {
  auto& table = tables_[size_t(seq)];
  if (!table.empty()) return 0;
  uint64_t parent = 0;
  int64_t reused = 0;
  // Full blocks only, and never the last token: its logits must be computed.
  while ((reused + block_size_) <= int64_t(tokens.size()) - 1) {
    const uint64_t h = chain_hash(parent, &tokens[size_t(reused)], block_size_);
    const auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    Block& blk = blocks_[size_t(it->second)];
    if (blk.parent != parent || !std::equal(blk.tokens.begin(), blk.tokens.end(), tokens.begin() + reused)) break;
    if (blk.refs++ == 0) {
      cached_.erase(blk.lru);
      ++n_used_;
    }
    table.push_back(it->second);
    parent = h;
    reused += block_size_;
  }
  return reused;
}

void KVCache::register_blocks(int seq, const std::vector<int32_t>& tokens, int64_t n_computed) {
  const auto& table = tables_[size_t(seq)];
  uint64_t parent = 0;
  for (size_t i = 0; i < table.size() && int64_t(i + 1) * block_size_ <= n_computed; ++i) {
    Block& blk = blocks_[size_t(table[i])];
    const int32_t* first = &tokens[i * size_t(block_size_)];
    if (blk.hash == 0) {
      const uint64_t h = chain_hash(parent, first, block_size_);
      if (by_hash_.count(h)) return;  // an identical block is already published; keep the chain simple
      blk.hash = h;
      blk.parent = parent;
      blk.tokens.assign(first, first + block_size_);
      by_hash_[h] = table[i];
    }
    parent = blk.hash;
  }
}

}  // namespace mixtral
