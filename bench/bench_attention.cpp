// Attention throughput at Mixtral's shape (32 query heads, 8 KV heads of 128): a prompt of P
// tokens from position 0 (causal), and one decode token after P cached positions. Compares the
// flash-style kernel with the per-(token, head) loop it replaced (a row of scores, softmax, axpy
// over V) and with ref::attention on the decode case. Not built by the tests.
//
//   g++ -std=c++20 -O3 -march=x86-64-v3 -Isrc bench/bench_attention.cpp src/core/*.cpp
//       src/kernels/*.cpp src/quant/*.cpp src/ops/ops.cpp -pthread -o /tmp/bench_attention
//   /tmp/bench_attention [threads] [--avx2] [--cpu-time] [--kernel-only]
//
// --cpu-time times by the process's CPU time instead of the wall clock (steadier on a busy
// machine; with several threads it sums them, so compare like with like); --kernel-only skips the slow per-task loop.
// GFLOP/s counts 4·head_dim per (query head, visible key): q·k and p·v.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/dequant.h"
#include "kernels/matmul.h"
#include "ops/ops.h"

using namespace mixtral;
using Clock = std::chrono::steady_clock;

namespace {

bool g_cpu_time = false;

double now_s() {
  if (!g_cpu_time) return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

template <class F>
double time_it(F fn, int min_reps = 3, double min_seconds = 0.5) {
  fn();
  std::vector<double> t;
  const double start = now_s();
  while (int(t.size()) < min_reps || now_s() - start < min_seconds) {
    const double t0 = now_s();
    fn();
    t.push_back(now_s() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct FlatKV final : KVSource {
  int64_t kv_dim;
  std::vector<float> k_, v_;
  const float* k(int, int64_t pos) const override { return k_.data() + pos * kv_dim; }
  const float* v(int, int64_t pos) const override { return v_.data() + pos * kv_dim; }
};

// The loop transformer.cpp ran before the kernel: one (token, head) per task.
void per_task(const AttentionShape& sh, const QueryRun& run, const KVSource& kv, std::vector<float>& scores,
              ThreadPool& pool) {
  const int64_t hd = sh.head_dim, group = sh.n_heads / sh.n_kv_heads, n_tasks = run.n * sh.n_heads;
  const float scale = 1.0f / std::sqrt(float(hd));
  const size_t per_thread = scores.size() / size_t(pool.size());
  pool.run([&](int thread, int n_threads) {
    float* s = scores.data() + size_t(thread) * per_thread;
    for (int64_t task = n_tasks * thread / n_threads; task < n_tasks * (thread + 1) / n_threads; ++task) {
      const int64_t t = task / sh.n_heads, h = task % sh.n_heads, kvh = h / group, pos = run.pos + t;
      const float* qh = run.q + t * sh.q_dim() + h * hd;
      for (int64_t p = 0; p <= pos; ++p) s[p] = dot_f32(qh, kv.k(0, p) + kvh * hd, hd) * scale;
      ops::softmax(s, pos + 1);
      float* out = run.out + t * sh.q_dim() + h * hd;
      std::fill(out, out + hd, 0.f);
      for (int64_t p = 0; p <= pos; ++p) ops::axpy(s[p], kv.v(0, p) + kvh * hd, out, hd);
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  bool kernel_only = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--avx2") == 0) set_simd_level(SimdLevel::AVX2);
    else if (std::strcmp(argv[i], "--cpu-time") == 0) g_cpu_time = true;
    else if (std::strcmp(argv[i], "--kernel-only") == 0) kernel_only = true;
    else threads = std::max(1, std::atoi(argv[i]));
  }
  const AttentionShape sh{32, 8, 128, 0};
  ThreadPool pool(threads);
  AttentionScratch scratch(sh, threads);
  std::printf("heads %lld/%lld of %lld, %d threads, %s\n", (long long)sh.n_heads, (long long)sh.n_kv_heads,
              (long long)sh.head_dim, threads, simd_level() == SimdLevel::AVX512 ? "AVX-512" : "AVX2");
  std::printf("| case | per-task loop | flash kernel | speed-up |\n|---|---|---|---|\n");
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t P : {512, 2048, 4096}) {
    FlatKV kv;
    kv.kv_dim = sh.kv_dim();
    kv.k_.resize(size_t((P + 1) * kv.kv_dim));
    kv.v_.resize(kv.k_.size());
    for (float& x : kv.k_) x = nd(rng);
    for (float& x : kv.v_) x = nd(rng);
    std::vector<float> q(size_t(P * sh.q_dim())), out(q.size()), scores(size_t(threads * (P + 1)));
    for (float& x : q) x = nd(rng);
    for (int decode = 0; decode < 2; ++decode) {
      const QueryRun run = decode ? QueryRun{0, P, 1, q.data(), out.data()} : QueryRun{0, 0, P, q.data(), out.data()};
      const double keys = decode ? double(P + 1) : double(P) * double(P + 1) / 2;
      const double flop = 4.0 * double(sh.head_dim) * double(sh.n_heads) * keys;
      const double t_old = kernel_only ? NAN : time_it([&] { per_task(sh, run, kv, scores, pool); });
      const double t_new = time_it([&] { attention(sh, &run, 1, kv, scratch, pool); });
      std::printf("| %s %lld | %.2f ms (%.1f GFLOP/s) | %.2f ms (%.1f GFLOP/s) | %.2fx |\n", decode ? "decode at" : "prompt",
                  (long long)P, t_old * 1e3, flop / t_old / 1e9, t_new * 1e3, flop / t_new / 1e9, t_old / t_new);
    }
  }
  return 0;
}
