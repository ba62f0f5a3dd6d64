// Cost of one ThreadPool hand-off: microseconds per parallel_for with no work, and with 128 KB
// and 2 MB of doubles to sum (split over the threads), back to back. Not run by the tests.
//
//   bench_thread_pool [THREADS]   (default 2)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/thread_pool.h"

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::max(1, std::atoi(argv[1])) : 2;
  mixtral::ThreadPool pool(threads);
  std::vector<double> v(size_t(1) << 18, 1.0);
  double sink = 0;
  std::printf("%d threads\n", threads);
  for (const int64_t n : {int64_t(0), int64_t(1) << 14, int64_t(1) << 18}) {
    const int iters = 2000;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i)
      pool.parallel_for(std::max<int64_t>(n, threads), [&](int64_t b, int64_t e) {
        double s = 0;
        for (int64_t j = b; j < std::min(e, n); ++j) s += v[size_t(j)];
        if (s < 0) sink += s;  // keeps the reads
      });
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%8lld doubles: %8.2f us per parallel_for\n", static_cast<long long>(n), dt / iters * 1e6);
  }
  return sink < 0 ? 1 : 0;
}
