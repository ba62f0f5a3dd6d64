#include "model/expert_cache.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"

namespace mixtral {

CachePolicy parse_cache_policy(const std::string& s) {
  if (s == "lru") return CachePolicy::LRU;
  if (s == "lfu") return CachePolicy::LFU;
  fail("--cache-policy", "\"" + s + "\" is not a policy (lru, lfu)");
}
PrefetchMode parse_prefetch_mode(const std::string& s) {
  if (s == "none") return PrefetchMode::None;
  if (s == "router") return PrefetchMode::Router;
  if (s == "previous") return PrefetchMode::Previous;
  if (s == "both") return PrefetchMode::Both;
  fail("--prefetch", "\"" + s + "\" is not a prefetch mode (none, router, previous, both)");
}
const char* name(CachePolicy p) { return p == CachePolicy::LRU ? "lru" : "lfu"; }
const char* name(PrefetchMode m) {
  switch (m) {
    case PrefetchMode::None: return "none";
    case PrefetchMode::Router: return "router";
    case PrefetchMode::Previous: return "previous";
    case PrefetchMode::Both: return "both";
  }
  return "?";
}

namespace {
// A part's region in a slot: its bytes widened to direct-read alignment on both sides.
size_t region_bytes(const Matrix& m) {
  constexpr size_t A = DirectFile::kAlign;
  return (m.bytes() + A - 1) / A * A + A;
}
}  // namespace

size_t ExpertCache::slot_bytes(const ExpertLocation& any) {
  size_t n = 0;
  for (const auto& p : any.parts) n += region_bytes(p.shape);
  return n;
}

ExpertCache::ExpertCache(std::vector<std::string> files, std::vector<std::vector<ExpertLocation>> where,
                         const ExpertCacheOptions& options)
    : options_(options), where_(std::move(where)) {
  n_layers_ = int64_t(where_.size());
  n_experts_ = n_layers_ ? int64_t(where_[0].size()) : 0;
  if (n_layers_ == 0 || n_experts_ == 0) fail("expert cache", "the model has no experts to offload");
  if (options_.n_slots < 1) fail("--memory-budget", "leaves no room for a single expert");
  for (const auto& f : files) files_.push_back(std::make_unique<DirectFile>(f));
  for (const auto& layer : where_)
    for (const auto& loc : layer) slot_bytes_ = std::max(slot_bytes_, slot_bytes(loc));
  const int64_t n_slots = std::min<int64_t>(options_.n_slots, n_layers_ * n_experts_);
  pool_ = std::make_unique<HugePageBuffer>(slot_bytes_ * size_t(n_slots), "--memory-budget (expert slots)");
  slots_.resize(size_t(n_slots));
  for (int64_t i = 0; i < n_slots; ++i) slots_[size_t(i)].base = pool_->data() + size_t(i) * slot_bytes_;
  entries_.resize(size_t(n_layers_ * n_experts_));
  used_now_.resize(size_t(n_layers_));
  used_before_.resize(size_t(n_layers_));
  for (int i = 0; i < std::max(1, options_.io_threads); ++i) io_threads_.emplace_back([this] { io_loop(); });
}

ExpertCache::~ExpertCache() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  io_wake_.notify_all();
  for (auto& t : io_threads_) t.join();
}

double ExpertCache::decayed_count(const Entry& en) const {
  return en.count * std::exp2(-double(clock_ - en.count_at) / options_.half_life);
}

void ExpertCache::count_use(Entry& en) const {
  en.count = decayed_count(en) + 1;
  en.count_at = clock_;
  en.last_use = clock_;
}

double ExpertCache::score(const Entry& en) const {
  return options_.policy == CachePolicy::LRU ? double(en.last_use) : decayed_count(en);
}

int32_t ExpertCache::victim_locked() const {
  int32_t best = -1;
  double best_score = 0;
  uint64_t best_use = 0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const int64_t owner = slots_[i].owner;
    if (owner < 0) return int32_t(i);
    const Entry& en = entries_[size_t(owner)];
    if (en.pins > 0 || en.prefetched || en.state != State::Ready) continue;
    const double s = score(en);
    if (best < 0 || s < best_score || (s == best_score && en.last_use < best_use)) {
      best = int32_t(i);
      best_score = s;
      best_use = en.last_use;
    }
  }
  return best;
}

void ExpertCache::fill() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (int64_t i = 0; i < int64_t(slots_.size()); ++i) {
      const int64_t layer = i % n_layers_, e = (i / n_layers_) % n_experts_;
      if (entries_[size_t(index(layer, int32_t(e)))].state == State::Absent)
        prefetch_queue_.push_back({index(layer, int32_t(e)), n_layers_});  // layer past the last: never stale
    }
  }
  io_wake_.notify_all();
  std::unique_lock<std::mutex> lk(mu_);
  ready_.wait(lk, [&] {  // a read failed, or every queued read is done
    if (!error_.empty()) return true;
    return prefetch_queue_.empty() &&
           std::none_of(entries_.begin(), entries_.end(), [](const Entry& en) { return en.state == State::Loading; });
  });
  if (!error_.empty()) throw Error(error_);
  for (Entry& en : entries_) {
    en.prefetched = false;
    en.count = 0;
    en.last_use = 0;
  }
  stats_ = {};
}

void ExpertCache::begin_forward(int64_t n_tokens) {
  std::lock_guard<std::mutex> lk(mu_);
  ++clock_;
  stats_.tokens += uint64_t(n_tokens);
  for (int64_t l = 0; l < n_layers_; ++l)
    if (!used_now_[size_t(l)].empty()) {
      used_before_[size_t(l)].swap(used_now_[size_t(l)]);
      used_now_[size_t(l)].clear();
    }
}

std::span<const int32_t> ExpertCache::previous(int64_t layer) const { return used_before_[size_t(layer)]; }

void ExpertCache::demand(int64_t layer, std::vector<int32_t>& experts) {
  std::vector<int32_t> hits, in_flight, misses;
  {
    std::lock_guard<std::mutex> lk(mu_);
    used_now_[size_t(layer)] = experts;
    // Hints for this layer or earlier ones are settled now: demanded, or wrong.
    std::erase_if(prefetch_queue_, [&](const Load& ld) {
      if (ld.layer > layer) return false;
      ++stats_.prefetch_dropped;
      return true;
    });
    for (int32_t e : experts) {
      Entry& en = entries_[size_t(index(layer, e))];
      ++en.pins;
      count_use(en);
      ++stats_.demanded;
      if (en.prefetched) {
        ++stats_.prefetch_used;
        en.prefetched = false;
      }
    }
    // A hint for this layer that was not demanded was wrong: no longer protected from eviction
    // (and never counted as a use, so it goes first).
    for (int32_t e = 0; e < n_experts_; ++e) entries_[size_t(index(layer, e))].prefetched = false;
    for (int32_t e : experts) {
      Entry& en = entries_[size_t(index(layer, e))];
      if (en.state == State::Ready) {
        ++stats_.hits;
        hits.push_back(e);
      } else if (en.state == State::Loading) {
        ++stats_.in_flight;
        in_flight.push_back(e);
      } else {
        en.state = State::Queued;
        demand_queue_.push_back({index(layer, e), layer});
        misses.push_back(e);
      }
    }
  }
  io_wake_.notify_all();
  experts = hits;
  experts.insert(experts.end(), in_flight.begin(), in_flight.end());
  experts.insert(experts.end(), misses.begin(), misses.end());
}

const ExpertWeights& ExpertCache::acquire(int64_t layer, int32_t expert) {
  std::unique_lock<std::mutex> lk(mu_);
  Entry& en = entries_[size_t(index(layer, expert))];
  if (en.state != State::Ready) {
    const auto t0 = std::chrono::steady_clock::now();
    ready_.wait(lk, [&] { return en.state == State::Ready || !error_.empty(); });
    stats_.stall_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (!error_.empty()) throw Error(error_);
  return slots_[size_t(en.slot)].views;
}

void ExpertCache::release(int64_t layer, int32_t expert) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    --entries_[size_t(index(layer, expert))].pins;
  }
  io_wake_.notify_all();
}

void ExpertCache::prefetch(int64_t layer, std::span<const int32_t> experts) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (int32_t e : experts)
      if (entries_[size_t(index(layer, e))].state == State::Absent) prefetch_queue_.push_back({index(layer, e), layer});
  }
  io_wake_.notify_all();
}

void ExpertCache::io_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    int32_t slot = -1;
    io_wake_.wait(lk, [&] {
      if (stop_) return true;
      if (!demand_queue_.empty()) return (slot = victim_locked()) >= 0;  // demand first, in order
      return !prefetch_queue_.empty();
    });
    if (stop_) return;
    Load ld{};
    const bool is_prefetch = demand_queue_.empty();
    if (!is_prefetch) {
      ld = demand_queue_.front();
      demand_queue_.pop_front();
    } else {
      ld = prefetch_queue_.front();
      prefetch_queue_.pop_front();
      if (entries_[size_t(ld.entry)].state != State::Absent) continue;  // demanded or loaded meanwhile
      slot = victim_locked();
      if (slot < 0) {  // a hint never waits for a slot
        ++stats_.prefetch_dropped;
        continue;
      }
    }
    Slot& s = slots_[size_t(slot)];
    if (s.owner >= 0) {  // evict
      Entry& old = entries_[size_t(s.owner)];
      old.state = State::Absent;
      old.slot = -1;
      old.prefetched = false;
    }
    Entry& en = entries_[size_t(ld.entry)];
    s.owner = ld.entry;
    en.slot = slot;
    en.state = State::Loading;
    if (is_prefetch) {  // kept until its layer's demand says whether it was right
      en.prefetched = true;
      ++stats_.prefetch_loads;
    }
    lk.unlock();
    std::string err;
    try {
      read_expert(ld.entry, s);
    } catch (const std::exception& e) {
      err = e.what();
    }
    lk.lock();
    if (!err.empty()) {
      if (error_.empty()) error_ = err;
      en.state = State::Absent;
      en.slot = -1;
      s.owner = -1;
    } else {
      en.state = State::Ready;
      ++stats_.loads;
      for (const auto& part : where_[size_t(ld.entry / n_experts_)][size_t(ld.entry % n_experts_)].parts)
        stats_.bytes_read += part.shape.bytes();
    }
    ready_.notify_all();
    io_wake_.notify_all();
  }
}

void ExpertCache::read_expert(int64_t entry, Slot& slot) {
  const ExpertLocation& loc = where_[size_t(entry / n_experts_)][size_t(entry % n_experts_)];
  uint8_t* dst = slot.base;
  Matrix* views[3] = {&slot.views.w1, &slot.views.w3, &slot.views.w2};
  for (size_t p = 0; p < 3; ++p) {
    const auto& part = loc.parts[p];
    *views[p] = part.shape;
    views[p]->data = files_[size_t(part.file)]->read(part.offset, part.shape.bytes(), dst);
    dst += region_bytes(part.shape);
  }
}

ExpertCacheStats ExpertCache::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void ExpertCache::reset_stats() {
  std::lock_guard<std::mutex> lk(mu_);
  stats_ = {};
}

}  // namespace mixtral
