// Experts out of memory (--memory-budget): with any number of expert slots, any replacement
// policy and any prefetch mode, the logits are bitwise those of the in-memory run, because the
// cache only decides WHEN an expert's bytes arrive, never what they are. Also: the cache's
// counters, the budget arithmetic and its errors, and a file that changes under the cache.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/direct_file.h"
#include "core/error.h"
#include "core/memory.h"
#include "engine/session.h"
#include "session_logits.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::testing;
namespace fs = std::filesystem;

namespace {

const char* kText = "Consecutive tokens often pick the same expert, so a cache of experts that keeps the recent "
                    "ones and guesses the next layer's from its router reads little from the disk.";

LoadOptions offload(int64_t n_slots, CachePolicy policy = CachePolicy::LFU, PrefetchMode prefetch = PrefetchMode::Router,
                    bool fill = false) {
  LoadOptions o;
  o.memory_budget = uint64_t(1) << 30;  // ample: the slot count is capped below
  o.fill_cache = fill;
  o.cache.n_slots = n_slots;
  o.cache.policy = policy;
  o.cache.prefetch = prefetch;
  return o;
}

// Prefill in chunks of 7, then 12 single-token steps teacher-forced (session_logits.h).
std::vector<float> run(const Model& m, const std::vector<int32_t>& tokens, int threads = 2) {
  return teacher_forced_logits(m, tokens, 12, threads);
}

// Every budget from one slot to all experts, both policies, every prefetch mode.
void expect_offloading_exact(const std::string& rel) {
  const std::string path = fixtures_dir() + "/" + rel;
  REQUIRE_PATH(path);
  const auto resident = Model::load(path);
  ASSERT_EQ(resident->expert_cache(), nullptr);
  const Config& c = resident->config();
  const auto tokens = resident->tokenizer().encode(kText, true);
  ASSERT_GT(tokens.size(), 30u);
  const auto want = run(*resident, tokens);
  const int64_t all = c.n_layers * c.n_experts;
  for (int64_t slots : {int64_t(1), int64_t(2), c.n_layers, all / 2, all}) {
    for (CachePolicy p : {CachePolicy::LRU, CachePolicy::LFU}) {
      for (PrefetchMode f : {PrefetchMode::None, PrefetchMode::Router, PrefetchMode::Previous, PrefetchMode::Both}) {
        const bool fill = p == CachePolicy::LFU;  // starting full or empty
        const auto m = Model::load(path, offload(slots, p, f, fill));
        ASSERT_NE(m->expert_cache(), nullptr);
        EXPECT_EQ(m->expert_cache()->n_slots(), slots);
        const std::string what = rel + " slots=" + std::to_string(slots) + " " + name(p) + " prefetch=" + name(f);
        expect_same_bits(run(*m, tokens), want, what);
        const ExpertCacheStats st = m->expert_cache()->stats();
        EXPECT_GT(st.demanded, 0u) << what;
        EXPECT_GE(st.loads, st.demanded - st.hits - st.in_flight) << what;  // every miss was read
        if (f == PrefetchMode::None) {
          EXPECT_EQ(st.prefetch_loads, 0u) << what;
        }
      }
    }
  }
}

}  // namespace

TEST(ExpertCache, GgufQ4_0LogitsIdenticalForEveryBudget) { expect_offloading_exact("gguf/tiny-q4_0.gguf"); }
TEST(ExpertCache, GgufF32LogitsIdenticalForEveryBudget) { expect_offloading_exact("gguf/tiny-f32.gguf"); }
// Per-expert safetensors tensors, and an odd shape: 3 layers, 4 experts, top-3, sliding window.
TEST(ExpertCache, HfLogitsIdenticalForEveryBudget) { expect_offloading_exact("hf/tiny-bf16"); }
TEST(ExpertCache, OddShapeTop3LogitsIdenticalForEveryBudget) { expect_offloading_exact("hf/odd"); }

TEST(ExpertCache, ThreadCountDoesNotChangeResults) {
  const std::string path = fixtures_dir() + "/gguf/tiny-q8_0.gguf";
  REQUIRE_PATH(path);
  const auto m = Model::load(path, offload(3));
  const auto tokens = m->tokenizer().encode(kText, true);
  expect_same_bits(run(*m, tokens, 1), run(*m, tokens, 3), "1 vs 3 threads");
}

TEST(ExpertCache, CountersAddUp) {
  const std::string path = fixtures_dir() + "/gguf/tiny-q4_0.gguf";
  REQUIRE_PATH(path);
  const auto tokens = std::vector<int32_t>{1, 415, 2936, 302, 9977};
  {  // every expert fits: after one pass that used them, a repeat reads nothing
    const auto m = Model::load(path, offload(1000, CachePolicy::LFU, PrefetchMode::None));
    ExpertCache& cache = *m->expert_cache();
    EXPECT_EQ(cache.n_slots(), m->config().n_layers * m->config().n_experts);  // capped at all experts
    EXPECT_EQ(cache.stats().loads, 0u);  // not filled while loading
    Session s(*m, {64, 8, 2});
    s.eval(tokens);
    const auto first = cache.stats();
    EXPECT_EQ(first.hits, 0u);
    EXPECT_EQ(first.loads, first.demanded);
    EXPECT_EQ(first.tokens, tokens.size());
    cache.reset_stats();
    s.reset();
    s.eval(tokens);
    const auto again = cache.stats();
    EXPECT_EQ(again.hits, again.demanded);
    EXPECT_EQ(again.loads, 0u);
    EXPECT_EQ(again.bytes_read, 0u);
    EXPECT_DOUBLE_EQ(again.hit_rate(), 1.0);
  }
  {  // one slot, no prefetch: each expert use is a load of exactly one expert's bytes
    const std::string f32 = fixtures_dir() + "/gguf/tiny-f32.gguf";  // every expert the same size
    const auto m = Model::load(f32, offload(1, CachePolicy::LRU, PrefetchMode::None));
    const auto resident = Model::load(f32);
    const ExpertWeights& e = resident->weights().layers[0].experts[0];
    const uint64_t expert_bytes = e.w1.bytes() + e.w3.bytes() + e.w2.bytes();
    Session s(*m, {64, 1, 1});
    for (int32_t t : tokens) s.eval({t});
    const auto st = m->expert_cache()->stats();
    EXPECT_EQ(st.demanded, tokens.size() * size_t(m->config().n_layers * m->config().n_experts_used));
    EXPECT_EQ(st.loads, st.demanded - st.hits);
    EXPECT_EQ(st.bytes_read, st.loads * expert_bytes);
    EXPECT_NEAR(st.bytes_per_token(), double(st.bytes_read) / double(tokens.size()), 1e-9);
  }
}

TEST(ExpertCache, FillingAtLoadMakesTheFirstPassHit) {
  const std::string path = fixtures_dir() + "/gguf/tiny-q4_0.gguf";
  REQUIRE_PATH(path);
  const auto m = Model::load(path, offload(1000, CachePolicy::LFU, PrefetchMode::None, /*fill=*/true));
  ExpertCache& cache = *m->expert_cache();
  EXPECT_EQ(cache.stats().loads, 0u);  // the fill is not counted
  Session s(*m, {64, 8, 2});
  s.eval({1, 415, 2936, 302, 9977});
  const auto st = cache.stats();
  EXPECT_GT(st.demanded, 0u);
  EXPECT_EQ(st.hits, st.demanded);
  EXPECT_EQ(st.loads, 0u);
}

TEST(ExpertCache, BudgetBelowResidentWeightsIsAClearError) {
  const std::string path = fixtures_dir() + "/gguf/tiny-q4_0.gguf";
  REQUIRE_PATH(path);
  LoadOptions o;
  o.memory_budget = uint64_t(2) << 20;  // 2 MiB: below the 4 MiB embedding alone
  try {
    Model::load(path, o);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("--memory-budget"), std::string::npos) << msg;
    EXPECT_NE(msg.find("too small"), std::string::npos) << msg;
    EXPECT_NE(msg.find("non-expert weights"), std::string::npos) << msg;
  }
  // The reserve for the KV cache and activations counts too.
  o.memory_budget = uint64_t(80) << 20;
  EXPECT_NO_THROW(Model::load(path, o));
  o.runtime_bytes = [](const Config&) { return uint64_t(1) << 30; };
  EXPECT_THROW(Model::load(path, o), Error);
}

TEST(ExpertCache, DenseModelIsNeverOffloaded) {
  const std::string path = fixtures_dir() + "/gguf/tiny-dense-f32.gguf";
  REQUIRE_PATH(path);
  LoadOptions o;
  o.memory_budget = uint64_t(1) << 30;
  EXPECT_EQ(Model::load(path, o)->expert_cache(), nullptr);  // fits: loaded as usual
  o.memory_budget = uint64_t(1) << 20;
  EXPECT_THROW(Model::load(path, o), Error);  // below its weights: an error, not an OOM
}

TEST(ExpertCache, FileTruncatedUnderTheCacheIsAnErrorNotACrash) {
  const std::string src = fixtures_dir() + "/gguf/tiny-q4_0.gguf";
  REQUIRE_PATH(src);
  const std::string path = ::testing::TempDir() + "/expert-cache-truncated-" + std::to_string(::getpid()) + ".gguf";
  fs::copy_file(src, path, fs::copy_options::overwrite_existing);
  const auto m = Model::load(path, offload(1, CachePolicy::LRU, PrefetchMode::None));
  fs::resize_file(path, fs::file_size(path) / 2);  // the experts' bytes are gone
  Session s(*m, {64, 8, 1});
  try {
    s.eval({1, 415, 2936, 302});
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  fs::remove(path);
}

TEST(DirectFile, ReadsAnyRangeExactly) {
  const std::string path = ::testing::TempDir() + "/direct-file-" + std::to_string(::getpid());
  std::string bytes(3 * DirectFile::kAlign + 123, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = char(i * 131 + 7);
  std::ofstream(path, std::ios::binary) << bytes;
  DirectFile f(path);
  std::vector<uint8_t*> keep;
  for (auto [off, n] : {std::pair<size_t, size_t>{0, 1}, {1, 4095}, {4095, 2}, {5000, 7000}, {bytes.size() - 5, 5}}) {
    void* buf = std::aligned_alloc(DirectFile::kAlign, DirectFile::span(off, n));
    const uint8_t* p = f.read(off, n, static_cast<uint8_t*>(buf));
    EXPECT_EQ(std::memcmp(p, bytes.data() + off, n), 0) << off << "+" << n;
    std::free(buf);
  }
  void* buf = std::aligned_alloc(DirectFile::kAlign, DirectFile::span(bytes.size() - 5, 10));
  EXPECT_THROW(f.read(bytes.size() - 5, 10, static_cast<uint8_t*>(buf)), Error);  // past the end
  std::free(buf);
  fs::remove(path);
}

TEST(Memory, ParseSize) {
  EXPECT_EQ(parse_size("20G", "f"), uint64_t(20) << 30);
  EXPECT_EQ(parse_size("300M", "f"), uint64_t(300) << 20);
  EXPECT_EQ(parse_size("1.5GiB", "f"), uint64_t(3) << 29);
  EXPECT_EQ(parse_size("2gb", "f"), uint64_t(2) << 30);
  EXPECT_EQ(parse_size("2097152", "f"), uint64_t(2) << 20);
  for (const char* bad : {"", "G", "-1G", "12X", "1.5.5G", "nanG", "100K"}) EXPECT_THROW(parse_size(bad, "f"), Error) << bad;
  EXPECT_GT(memory_available(), 0u);
  EXPECT_GT(resident_bytes(), 0u);
  EXPECT_GE(peak_resident_bytes(), resident_bytes());
}
