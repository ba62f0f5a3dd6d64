// The thread pool's hand-off: every loop runs each index exactly once and returns only when all
// of it is done, whether the workers are still spinning from the loop before (back to back) or
// asleep (a pause longer than their spin), for 1 to 4 threads; an idle pool is destroyed cleanly.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "core/thread_pool.h"

using namespace mixtral;

TEST(ThreadPool, EveryLoopRunsEachIndexOnceAndWaitsForAll) {
  for (int threads = 1; threads <= 4; ++threads) {
    SCOPED_TRACE(threads);
    ThreadPool pool(threads);
    std::vector<int> hits(1000);
    for (int loop = 0; loop < 300; ++loop) {
      if (loop % 50 == 49) std::this_thread::sleep_for(std::chrono::milliseconds(20));  // workers asleep
      const int64_t n = 1 + loop % 997;
      pool.parallel_for(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) ++hits[size_t(i)];
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)], 1) << "loop " << loop << " index " << i;
      std::fill(hits.begin(), hits.end(), 0);
    }
    std::atomic<int> calls{0};
    pool.run([&](int t, int nt) {
      EXPECT_EQ(nt, threads);
      EXPECT_GE(t, 0);
      EXPECT_LT(t, nt);
      ++calls;
    });
    EXPECT_EQ(calls.load(), threads);
  }
}
