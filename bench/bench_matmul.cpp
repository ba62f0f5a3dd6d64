// Matrix-product throughput at Mixtral's expert shape: W [N = 14336][K = 4096] (w1/w3 of one
// expert), decode (1 token) and prefill (64 tokens), for every weight dtype; and the scalar
// ref::matmul on a slice of the rows, for the speed-up ratio. Not built by the tests.
//
//   g++ -std=c++20 -O3 -march=x86-64-v3 -Isrc bench/bench_matmul.cpp src/core/*.cpp
//       src/quant/*.cpp src/kernels/*.cpp -pthread -o /tmp/bench_matmul
//   /tmp/bench_matmul [threads] [--avx2] [--float]
//
// Quantized dtypes multiply int8 activations (matmul_q8.h); --float runs them through the float
// path instead. ref::matmul is the float reference in both cases.
//
// GFLOP/s counts 2·N·K·tokens; GB/s counts the weight bytes read (x and y are small).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/dequant.h"
#include "kernels/matmul.h"
#include "quant/quantize.h"

using namespace mixtral;
using Clock = std::chrono::steady_clock;

namespace {

// Median seconds per call of fn over at least `min_reps` calls and `min_seconds`, after one warm-up.
template <class F>
double time_it(F fn, int min_reps = 5, double min_seconds = 1.0) {
  fn();
  std::vector<double> t;
  const auto start = Clock::now();
  while (int(t.size()) < min_reps || std::chrono::duration<double>(Clock::now() - start).count() < min_seconds) {
    const auto t0 = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int threads = ThreadPool::default_threads();
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--avx2") == 0) set_simd_level(SimdLevel::AVX2);
    else if (std::strcmp(argv[i], "--float") == 0) set_int8_activations(false);
    else threads = std::max(1, std::atoi(argv[i]));
  }
  const int64_t N = 14336, K = 4096, kPrefill = 64, kRefRows = 512;
  ThreadPool pool(threads);
  std::printf("W [%lld][%lld], %d threads, %s, %s activations for quantized weights\n", (long long)N,
              (long long)K, threads, simd_level() == SimdLevel::AVX512 ? "AVX-512" : "AVX2",
              int8_activations() ? "int8" : "float");

  // Source weights: Gaussian, σ = 0.02 (the fixtures' scale).
  std::vector<float> src(size_t(N * K));
  pool.parallel_for(N, [&](int64_t r0, int64_t r1) {
    std::mt19937 rng(static_cast<uint32_t>(r0));
    std::normal_distribution<float> nd(0.0f, 0.02f);
    for (int64_t i = r0 * K; i < r1 * K; ++i) src[size_t(i)] = nd(rng);
  });
  std::vector<float> x(size_t(kPrefill * K)), y(size_t(kPrefill * N));
  {
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (float& v : x) v = nd(rng);
  }

  {  // memory read bandwidth baseline: every thread sums its share of `src` (235 MB) as integers
    std::vector<uint64_t> part(static_cast<size_t>(threads));
    const double s = time_it([&] {
      pool.run([&](int i, int n) {
        const auto* p = reinterpret_cast<const uint64_t*>(src.data());
        const int64_t words = N * K / 2, b = words * i / n, e = words * (i + 1) / n;
        uint64_t acc[8] = {};
        for (int64_t j = b; j + 8 <= e; j += 8)
          for (int l = 0; l < 8; ++l) acc[l] += p[j + l];
        part[size_t(i)] = acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
      });
    });
    std::printf("memory read bandwidth (sum over %.0f MB): %.1f GB/s\n",
                double(src.size()) * 4 / 1e6, double(src.size()) * 4 / 1e9 / s);
  }

  std::printf("%-5s %7s | %-22s | %-22s | %-28s\n", "dtype", "MB", "decode (1 token)",
              "prefill (64 tokens)", "ref::matmul (512 rows) 1 / 64");
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K}) {
    const size_t rb = row_bytes(t, K);
    std::vector<uint8_t> w(rb * size_t(N));
    pool.parallel_for(N, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) quantize_row(t, src.data() + r * K, w.data() + rb * size_t(r), K);
    });
    const Matrix W{t, N, K, w.data()};
    const double mb = double(W.bytes()) / 1e6;

    const double s1 = time_it([&] { matmul(W, x.data(), 1, y.data(), pool); });
    const double s64 = time_it([&] { matmul(W, x.data(), kPrefill, y.data(), pool); });
    const Matrix Ws = W.slice_rows(0, kRefRows);
    const double r1 = time_it([&] { ref::matmul(Ws, x.data(), 1, y.data()); }, 3, 0.3);
    const double r64 = time_it([&] { ref::matmul(Ws, x.data(), kPrefill, y.data()); }, 1, 0.0);
    const double flop1 = 2.0 * double(N) * double(K), flop64 = flop1 * double(kPrefill);
    const double ref1_per_row = r1 / double(kRefRows), ref64_per_row = r64 / double(kRefRows);
    std::printf("%-5s %7.1f | %5.1f GFLOP/s %5.1f GB/s | %6.1f GFLOP/s %4.1f GB/s | %5.2f / %5.2f GFLOP/s "
                "(fast x%.0f / x%.0f)\n",
                dtype_name(t), mb, flop1 / s1 / 1e9, mb / 1e3 / s1, flop64 / s64 / 1e9,
                mb / 1e3 / s64, 2.0 * K / ref1_per_row / 1e9, 2.0 * K * kPrefill / ref64_per_row / 1e9,
                ref1_per_row * double(N) / s1, ref64_per_row * double(N) / s64);
    std::fflush(stdout);
  }
  return 0;
}
