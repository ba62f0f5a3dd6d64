// A fixed pool of worker threads for data-parallel loops. The calling thread is worker 0, so
// ThreadPool(1) runs everything inline. Work is split statically by index, so a computation
// that writes each output element from one task gives identical results for every thread count.
//
// A decoded token runs some 30 short parallel loops back to back. Waking a sleeping worker
// through the kernel for each one costs tens of microseconds on a VM, and the caller then
// waits for the late worker. So workers, and the caller waiting for them, first spin on an
// atomic for a few tens of microseconds after their last loop, and only then sleep on the
// condition variable.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mixtral {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(thread, n_threads) once on each thread, and returns when all have finished.
  void run(const std::function<void(int thread, int n_threads)>& fn);

  // Splits [0, n) into size() contiguous chunks (in steps of `grain`) and calls
  // fn(begin, end) for each non-empty one.
  void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end)>& fn,
                    int64_t grain = 1);

  // Threads the machine has (hardware_concurrency, at least 1).
  static int default_threads();

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;  // only for sleeping and waking; the job hand-off is through the atomics
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int, int)>* job_ = nullptr;  // published by generation_'s release
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace mixtral
