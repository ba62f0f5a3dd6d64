// Experts kept out of memory: a fixed pool of slots, each holding one expert of one layer (its
// three matrices), filled from the checkpoint file by background I/O threads with direct reads.
// For models larger than RAM (--memory-budget): everything but the experts stays resident, and
// each token waits only for those of its experts that are not already in a slot.
//
// The forward pass talks to it in three calls per MoE layer:
//   demand(layer, experts)  — the router's choice; hits are pinned, misses are queued for loading
//                             in the given order, and the experts are reordered: resident first
//   acquire(layer, e)       — waits until e is in a slot (the wait is "stall" time), returns views
//   release(layer, e)       — done computing with e; its slot may be reused
// and hints what comes next with prefetch(layer, experts): loads that never block a demand and
// never evict a pinned expert. A hinted expert is kept until its layer's demand; if that did not
// choose it, it was never used and goes first.
//
// Which slot is reused is the policy's call: LRU, or LFU-decay (a use count that decays by half
// every `half_life` tokens, ties broken by recency), which keeps the experts a model prefers
// under skewed load. Every decision depends on the sequence of calls only, and loading never
// changes a weight value, so results are bitwise the same as with every expert resident.
#pragma once
#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/direct_file.h"
#include "core/memory.h"
#include "model/weights.h"

namespace mixtral {

enum class CachePolicy { LRU, LFU };
enum class PrefetchMode { None, Router, Previous, Both };
CachePolicy parse_cache_policy(const std::string& s);   // "lru" | "lfu"; Error otherwise
PrefetchMode parse_prefetch_mode(const std::string& s);  // "none" | "router" | "previous" | "both"
const char* name(CachePolicy p);
const char* name(PrefetchMode m);

// Where one expert's matrices are in the checkpoint: file (index into the cache's file list),
// byte offset, and the matrix's shape and dtype (data left null).
struct ExpertLocation {
  struct Part {
    int file = 0;
    uint64_t offset = 0;
    Matrix shape;
  };
  std::array<Part, 3> parts;  // w1, w3, w2
};

struct ExpertCacheOptions {
  int64_t n_slots = 0;  // Model::load: 0 = as many as the budget allows; > 0 caps that
  CachePolicy policy = CachePolicy::LFU;
  PrefetchMode prefetch = PrefetchMode::Router;
  double half_life = 16;  // LFU: tokens for a use count to decay by half
  int io_threads = 2;
};

struct ExpertCacheStats {
  uint64_t demanded = 0;         // (layer, expert) uses the forward pass asked for
  uint64_t hits = 0;             // ... found in a slot
  uint64_t in_flight = 0;        // ... found loading (a prefetch not finished)
  uint64_t loads = 0;            // experts read from disk (demand + prefetch)
  uint64_t prefetch_loads = 0;   // ... of them issued as prefetch
  uint64_t prefetch_used = 0;    // prefetched experts demanded before being evicted
  uint64_t prefetch_dropped = 0; // hints not loaded (no free slot, or stale)
  uint64_t bytes_read = 0;       // the experts' own bytes (reads widen each to 4 KiB alignment)
  uint64_t tokens = 0;           // tokens the forward pass ran (for per-token figures)
  double stall_s = 0;            // time acquire() waited for I/O
  double hit_rate() const { return demanded ? double(hits) / double(demanded) : 0; }
  double prefetch_accuracy() const { return prefetch_loads ? double(prefetch_used) / double(prefetch_loads) : 0; }
  double bytes_per_token() const { return tokens ? double(bytes_read) / double(tokens) : 0; }
};

class ExpertCache {
 public:
  // `files`: the checkpoint files the locations index; `where[layer][expert]`.
  ExpertCache(std::vector<std::string> files, std::vector<std::vector<ExpertLocation>> where,
              const ExpertCacheOptions& options);
  ~ExpertCache();
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  // Bytes of one slot (the three matrices, each widened to direct-read alignment).
  static size_t slot_bytes(const ExpertLocation& any);
  int64_t n_slots() const { return int64_t(slots_.size()); }
  size_t pool_bytes() const { return pool_->size(); }
  const ExpertCacheOptions& options() const { return options_; }

  // Fills every slot before the first token (experts of every layer in turn, so each layer
  // starts with the same share), as loading a model would; returns when the reads are done.
  // The statistics start after it.
  void fill();

  // A forward pass over `n_tokens` tokens begins (advances the policy's clock).
  void begin_forward(int64_t n_tokens);
  // The experts of `layer` the router chose, in any order; rewritten in the order to compute
  // them (resident first, then in loading order). Pins all of them.
  void demand(int64_t layer, std::vector<int32_t>& experts);
  const ExpertWeights& acquire(int64_t layer, int32_t expert);
  void release(int64_t layer, int32_t expert);
  // Experts `layer` will probably need; loaded into free or evictable slots without waiting.
  void prefetch(int64_t layer, std::span<const int32_t> experts);
  // The experts `layer` used in the previous forward pass (for PrefetchMode::Previous).
  std::span<const int32_t> previous(int64_t layer) const;

  ExpertCacheStats stats() const;
  void reset_stats();

 private:
  enum class State { Absent, Queued, Loading, Ready };  // Queued: waiting for a slot (demand)
  struct Entry {
    State state = State::Absent;
    int32_t slot = -1;
    int32_t pins = 0;
    bool prefetched = false;  // loaded by a hint, its layer not demanded since: not evictable
    uint64_t last_use = 0;    // clock of the last demand
    double count = 0;         // LFU: decayed use count as of `count_at`
    uint64_t count_at = 0;
  };
  struct Slot {
    uint8_t* base = nullptr;
    int64_t owner = -1;  // entry index, -1 when free
    ExpertWeights views;
  };
  struct Load {
    int64_t entry;
    int64_t layer;
  };

  int64_t index(int64_t layer, int32_t e) const { return layer * n_experts_ + e; }
  double decayed_count(const Entry& en) const;  // LFU: the use count as of now
  void count_use(Entry& en) const;              // a use now (recency and count)
  double score(const Entry& en) const;          // higher = keep
  int32_t victim_locked() const;         // a free or evictable slot; -1 when none
  void io_loop();
  void read_expert(int64_t entry, Slot& slot);

  ExpertCacheOptions options_;
  std::vector<std::unique_ptr<DirectFile>> files_;
  std::vector<std::vector<ExpertLocation>> where_;
  int64_t n_layers_ = 0, n_experts_ = 0;
  size_t slot_bytes_ = 0;
  std::unique_ptr<HugePageBuffer> pool_;  // the slots, slot_bytes_ apart

  mutable std::mutex mu_;
  std::condition_variable io_wake_;    // loads queued, a slot freed, or stop
  std::condition_variable ready_;      // an entry became Ready
  std::vector<Entry> entries_;
  std::vector<Slot> slots_;
  std::deque<Load> demand_queue_, prefetch_queue_;
  std::vector<std::vector<int32_t>> used_now_, used_before_;  // per layer, this/previous pass
  uint64_t clock_ = 0;
  ExpertCacheStats stats_;
  bool stop_ = false;
  std::string error_;  // the first failed read; acquire() rethrows it
  std::vector<std::thread> io_threads_;
};

}  // namespace mixtral
