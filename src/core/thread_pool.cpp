#include "core/thread_pool.h"

#include <sched.h>

#include <algorithm>

namespace mixtral {
namespace {

// How a worker (or the caller, for its workers) waits before it sleeps: it tests an atomic in a
// tight loop for a few microseconds, then yields its core between tests (sched_yield: another
// thread of ours may be queued behind it on the same core when the machine has more runnable
// threads than cores), some tens of microseconds in all: longer than the gap between the loops
// of one token (a norm, the router), short enough that an idle pool gives its cores back.
// Counted, not timed: reading the clock in the loop showed up as 10 % of a decode profile.
constexpr int kTightTests = 1 << 12, kYields = 64;

// Waits until done() or the spin is spent; returns done().
template <class Done>
bool spin_until(Done done) {
  for (int i = 0; i < kTightTests; ++i) {
    if (done()) return true;
    // No pause instruction: under KVM a vCPU that runs pause in a loop is taken for a lock
    // spinner and descheduled (pause-loop exiting), which cost ~400 us per loop here.
    asm volatile("" ::: "memory");
  }
  for (int i = 0; i < kYields; ++i) {
    if (done()) return true;
    sched_yield();
  }
  return done();
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

int ThreadPool::default_threads() {
  return std::max(1u, std::thread::hardware_concurrency());
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    const auto ready = [&] { return stop_.load(std::memory_order_relaxed) || generation_.load(std::memory_order_acquire) != seen; };
    if (!spin_until(ready)) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, ready);
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    (*job_)(index, n_threads_);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      // The caller may be asleep on done_: notify under the mutex so that it cannot miss it
      // between testing pending_ and sleeping.
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_one();
    }
  }
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  job_ = &fn;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  {
    // Under the mutex: a worker about to sleep tests generation_ while holding it.
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();  // no system call when no worker sleeps
  fn(0, n_threads_);
  const auto done = [&] { return pending_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done)) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, done);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                              int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t units = (n + grain - 1) / grain;
  const int threads = int(std::min<int64_t>(n_threads_, units));
  if (threads <= 1) {
    fn(0, n);
    return;
  }
  run([&](int t, int) {
    if (t >= threads) return;
    const int64_t u0 = units * t / threads, u1 = units * (t + 1) / threads;
    const int64_t b = u0 * grain, e = std::min(n, u1 * grain);
    if (b < e) fn(b, e);
  });
}

}  // namespace mixtral
