// Matrix-product throughput at Mixtral's expert shapes, for each weight dtype and a sweep of
// token counts: 1 (decode), 2-16 (a serving step of several streams), 64 and 512 (prefill).
// Shapes: up = W [14336][4096] (w1/w3 of one expert: K 4096 -> N 14336) and down =
// W [4096][14336] (w2: K 14336 -> N 4096). Optionally the scalar ref::matmul on a slice of rows,
// for the speed-up ratio. Built with the project (build/bench/bench_matmul); not run by the tests.
//
//   bench_matmul [-t THREADS] [--simd avx2|avx512|avx512bf16] [--types bf16,q8_0,q5_k,...]
//                [--tokens 1,2,4,8,16,64,512] [--shapes up,down] [--ref] [--cpu-time] [--float]
//                [--layouts rows,tiles]
//
// --layouts: each quantized dtype once per layout, in the same run: rows (as files store them)
// and tiles (kernels/weight_tiles.h, as a model read into memory holds them). Default: both.
//
// Quantized dtypes multiply int8 activations (matmul_q8.h); --float runs them through the float
// path instead. ref::matmul is the float reference in both cases.
//
// GFLOP/s counts 2·N·K·tokens; GB/s counts the weight bytes read once (x and y are small). Each
// call reads a different copy of W (512 MB in all, in huge pages as the model's weights), so the
// weights come from memory, as in decode.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <exception>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/memory.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/dequant.h"
#include "kernels/matmul.h"
#include "kernels/weight_tiles.h"
#include "quant/quantize.h"

using namespace mixtral;
using Clock = std::chrono::steady_clock;

namespace {

// With --cpu-time: the process's CPU seconds divided by the thread count instead of wall time
// (on a shared machine, leaves out the time the threads wait for a core; not the time they
// wait for memory that others use too).
bool g_cpu_time = false;
int g_threads = 1;
double now_s() {
  if (!g_cpu_time) return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec)) / g_threads;
}

// Weight bytes cycled through per matrix: well over the last-level cache (32 MB here).
constexpr size_t kColdBytes = size_t(512) << 20;

// Fastest seconds per call of fn over at least `min_reps` calls and `min_seconds`, after one
// warm-up (the fastest: the machine is shared, and other work only ever adds time).
template <class F>
double time_it(F fn, int min_reps = 5, double min_seconds = 0.5) {
  fn();
  std::vector<double> t;
  const auto start = Clock::now();
  while (int(t.size()) < min_reps || std::chrono::duration<double>(Clock::now() - start).count() < min_seconds) {
    const double t0 = now_s();
    fn();
    t.push_back(now_s() - t0);
  }
  return *std::min_element(t.begin(), t.end());
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
  return out;
}

DType parse_type(const std::string& s) {
  for (DType t : kAllDTypes) {
    std::string n = dtype_name(t);
    for (char& c : n) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (n == s) return t;
  }
  std::fprintf(stderr, "unknown type %s\n", s.c_str());
  std::exit(2);
}

// Whether this build quantizes t (the family's quantizers may not be there yet).
bool can_quantize(DType t, int64_t K) {
  std::vector<float> x(size_t(K), 0.01f);
  std::vector<uint8_t> q(row_bytes(t, K));
  try {
    quantize_row(t, x.data(), q.data(), K);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// Weights of a type without a quantizer: random bytes, every fp16 field (at the offsets given)
// set to a small finite value; the speed does not depend on the values.
void random_rows(DType t, int64_t rows, int64_t K, uint8_t* out) {
  const DTypeInfo info = dtype_info(t);
  const size_t n = size_t(rows * K / info.block_size), bb = info.block_bytes;
  std::mt19937 rng(11);
  for (size_t i = 0; i < n * bb; ++i) out[i] = uint8_t(rng());
  std::vector<size_t> halves = {0};
  if (t == DType::Q4_1 || t == DType::Q5_1 || t == DType::Q4_K || t == DType::Q5_K) halves = {0, 2};
  if (t == DType::Q2_K) halves = {80, 82};
  if (t == DType::Q3_K) halves = {108};
  if (t == DType::Q6_K) halves = {208};
  const uint16_t h = 0x2000;  // 2^-7
  for (size_t i = 0; i < n; ++i)
    for (size_t o : halves) std::memcpy(out + i * bb + o, &h, 2);
}

const char* simd_name(SimdLevel l) {
  switch (l) {
    case SimdLevel::AVX2: return "AVX2";
    case SimdLevel::AVX512: return "AVX-512";
    case SimdLevel::AVX512_BF16: return "AVX-512 BF16";
  }
  return "?";
}

}  // namespace

int main(int argc, char** argv) {
  int threads = ThreadPool::default_threads();
  std::vector<std::string> types = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"};
  std::vector<int64_t> tokens = {1, 2, 4, 8, 16, 64, 512};
  std::vector<std::string> shapes = {"up", "down"};
  bool with_ref = false;
  std::vector<std::string> layouts = {"rows", "tiles"};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "-t") threads = std::max(1, std::atoi(v)), ++i;
    else if (a == "--simd") {
      const std::string s = v;
      set_simd_level(s == "avx2" ? SimdLevel::AVX2 : s == "avx512" ? SimdLevel::AVX512 : SimdLevel::AVX512_BF16);
      ++i;
    } else if (a == "--types") types = split(v), ++i;
    else if (a == "--tokens") {
      tokens.clear();
      for (const auto& s : split(v)) tokens.push_back(std::atoll(s.c_str()));
      ++i;
    } else if (a == "--shapes") shapes = split(v), ++i;
    else if (a == "--ref") with_ref = true;
    else if (a == "--cpu-time") g_cpu_time = true;
    else if (a == "--float") set_int8_activations(false);
    else if (a == "--layouts") layouts = split(v), ++i;
    else {
      std::fprintf(stderr, "usage: bench_matmul [-t N] [--simd avx2|avx512|avx512bf16] [--types a,b] "
                           "[--tokens 1,2,..] [--shapes up,down] [--ref] [--cpu-time] [--float] "
                           "[--layouts rows,tiles]\n");
      return 2;
    }
  }
  const int64_t max_tokens = *std::max_element(tokens.begin(), tokens.end());
  ThreadPool pool(threads);
  g_threads = threads;
  std::printf("%d threads, %s, %s activations for quantized weights\n", threads, simd_name(simd_level()),
              int8_activations() ? "int8" : "float");

  for (const std::string& shape : shapes) {
    const int64_t N = shape == "down" ? 4096 : 14336, K = shape == "down" ? 14336 : 4096;
    // Source weights: Gaussian, σ = 0.02 (the fixtures' scale); x: Gaussian, σ = 1.
    std::vector<float> src(size_t(N * K));
    pool.parallel_for(N, [&](int64_t r0, int64_t r1) {
      std::mt19937 rng(static_cast<uint32_t>(r0));
      std::normal_distribution<float> nd(0.0f, 0.02f);
      for (int64_t i = r0 * K; i < r1 * K; ++i) src[size_t(i)] = nd(rng);
    });
    std::vector<float> x(size_t(max_tokens * K)), y(size_t(max_tokens * N));
    {
      std::mt19937 rng(7);
      std::normal_distribution<float> nd(0.0f, 1.0f);
      for (float& v : x) v = nd(rng);
    }
    std::printf("\n%s: W [%lld][%lld]  GFLOP/s (GB/s of weights)\n%-11s", shape.c_str(), (long long)N,
                (long long)K, "dtype");
    for (int64_t T : tokens) std::printf(" | %8lld tok   ", (long long)T);
    std::printf("%s\n", with_ref ? " | ref 1 / 64 tokens GFLOP/s" : "");
    for (const std::string& tn : types)
    for (const std::string& layout : layouts) {
      const DType t = parse_type(tn);
      const bool tiles = layout == "tiles";
      if (tiles && !tileable(t)) continue;
      const size_t rb = row_bytes(t, K);
      // Copies of W, used in turn, so that one call's weights are never in cache from the call
      // before (a 4-bit expert matrix, ~33 MB, would otherwise sit largely in a 32 MB L3 and
      // report more than the memory's bandwidth).
      const size_t bytes = rb * size_t(N);
      const size_t n_copies = std::max<size_t>(2, (kColdBytes + bytes - 1) / bytes);
      HugePageBuffer w(n_copies * bytes, "bench_matmul");  // as the model holds weights read into memory
      if (can_quantize(t, K))
        pool.parallel_for(N, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) quantize_row(t, src.data() + r * K, w.data() + rb * size_t(r), K);
        });
      else random_rows(t, N, K, w.data());
      Matrix W0{t, N, K, w.data()};
      if (tiles) to_tiles(W0, w.data());
      for (size_t c = 1; c < n_copies; ++c) std::memcpy(w.data() + c * bytes, w.data(), bytes);
      std::vector<Matrix> Wc;
      for (size_t c = 0; c < n_copies; ++c) Wc.push_back(Matrix{t, N, K, w.data() + c * bytes, W0.layout});
      const Matrix& W = Wc[0];
      size_t turn = 0;
      const double gb = double(W.bytes()) / 1e9, flop1 = 2.0 * double(N) * double(K);
      std::printf("%-5s%-6s", dtype_name(t), tiles ? " tiles" : "");
      for (int64_t T : tokens) {
        const double s = time_it([&] { matmul(Wc[turn++ % n_copies], x.data(), T, y.data(), pool); },
                                 T >= 64 ? 3 : 5, T >= 64 ? 1.0 : 0.5);
        std::printf(" | %6.1f (%4.1f)", flop1 * double(T) / s / 1e9, gb / s);
        std::fflush(stdout);
      }
      if (with_ref) {
        const int64_t kRefRows = 256;
        const Matrix Ws = W.slice_rows(0, kRefRows);
        const double r1 = time_it([&] { ref::matmul(Ws, x.data(), 1, y.data()); }, 3, 0.3);
        const double r64 = time_it([&] { ref::matmul(Ws, x.data(), 64, y.data()); }, 1, 0.0);
        std::printf(" | %5.2f / %5.2f", 2.0 * double(K * kRefRows) / r1 / 1e9,
                    2.0 * double(K * kRefRows) * 64 / r64 / 1e9);
      }
      std::printf("\n");
    }
  }
  return 0;
}
