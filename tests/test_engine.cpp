// Self-consistency of the forward pass and its agreement with an independent float64
// reference on shapes llama.cpp's references do not cover: cached decode == one full pass,
// N threads == 1 thread, a batch of prompts == each prompt alone, other layer/head/expert/top-k
// counts, sliding-window attention, --experts-per-token, and sparsity (experts nobody chose
// are never read).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "engine/session.h"
#include "reference_forward.h"
#include "sample/sampler.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::testing;

namespace {

const char* kText = "The mixture of experts routes every token to two of its eight experts, and the paper "
                    "measured how often consecutive tokens pick the same one.";

std::unique_ptr<Model> load_fixture(const std::string& rel, LoadOptions o = {}) {
  return Model::load(fixtures_dir() + "/" + rel, o);
}

// Every row's relative L2 between the engine (float32) and the float64 reference.
void expect_matches_reference(const Model& model, const std::vector<int32_t>& tokens, double tol) {
  const int64_t V = model.config().vocab_size, n = int64_t(tokens.size());
  Session s(model, {256, n, 2});
  const auto& ours = s.eval(tokens, true);
  const auto ref = reference_forward(model, tokens);
  double worst = 0;
  for (int64_t t = 0; t < n; ++t) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < V; ++i) {
      num += (ours[t * V + i] - ref[t][i]) * (ours[t * V + i] - ref[t][i]);
      den += ref[t][i] * ref[t][i];
    }
    worst = std::max(worst, std::sqrt(num / den));
  }
  EXPECT_LE(worst, tol);
  std::printf("  worst row relative L2 vs float64 reference: %.2e over %lld rows\n", worst, (long long)n);
}

TEST(Engine, OddShapeWithSlidingWindowMatchesReference) {
  REQUIRE_PATH(fixtures_dir() + "/hf/odd");
  const auto model = load_fixture("hf/odd");  // 3 layers, 6/2 heads of 16, 4 experts top-3, window 8
  ASSERT_EQ(model->config().sliding_window, 8);
  ASSERT_EQ(model->config().n_experts_used, 3);
  const auto tokens = model->tokenizer().encode(kText, true);
  ASSERT_GT(tokens.size(), 20u);  // longer than the window
  expect_matches_reference(*model, tokens, 1e-5);
}

TEST(Engine, ExpertsPerTokenOverrideMatchesReference) {
  REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-f32.gguf");
  for (int64_t k : {1, 3, 8}) {
    LoadOptions o;
    o.experts_per_token = k;
    const auto model = load_fixture("gguf/tiny-f32.gguf", o);
    ASSERT_EQ(model->config().n_experts_used, k);
    const auto tokens = model->tokenizer().encode("Top-k routing, with k chosen at load time.", true);
    SCOPED_TRACE(k);
    expect_matches_reference(*model, tokens, 1e-5);
  }
  LoadOptions bad;
  bad.experts_per_token = 9;
  EXPECT_THROW(load_fixture("gguf/tiny-f32.gguf", bad), Error);
}

TEST(Engine, CachedDecodeEqualsOneFullPass) {
  for (const char* rel : {"gguf/tiny-f32.gguf", "hf/odd", "gguf/tiny-q4_0.gguf"}) {
    REQUIRE_PATH(fixtures_dir() + "/" + rel);
    const auto model = load_fixture(rel);
    const int64_t V = model->config().vocab_size;
    const auto tokens = model->tokenizer().encode(kText, true);
    const int64_t n = int64_t(tokens.size());
    Session full(*model, {256, n, 2});
    const std::vector<float> all = full.eval(tokens, true);
    Session step(*model, {256, 512, 2});
    double worst = 0;
    for (int64_t t = 0; t < n; ++t) {
      const auto& row = step.eval({tokens[t]});
      worst = std::max(worst, rel_l2(row.data(), &all[t * V], V));
      EXPECT_EQ(argmax(row.data(), V), argmax(&all[t * V], V)) << rel << " position " << t;
    }
    // Ideally bit-identical; float32 summation order may differ between a batched matrix
    // product and a single row.
    EXPECT_LE(worst, 1e-6) << rel;
    std::printf("  %s: decode vs full pass worst relative L2 %.2e\n", rel, worst);
  }
}

TEST(Engine, ThreadCountDoesNotChangeResults) {
  REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-q8_0.gguf");
  for (const char* rel : {"gguf/tiny-f32.gguf", "gguf/tiny-q8_0.gguf"}) {
    const auto model = load_fixture(rel);
    const auto tokens = model->tokenizer().encode(kText, true);
    std::vector<float> first;
    for (int threads : {1, 2, 3}) {
      Session s(*model, {256, 16, threads});  // several batches of 16 too
      auto out = s.eval(tokens, true);
      out.insert(out.end(), s.eval({42}).begin(), s.eval({42}).end());
      if (first.empty()) first = out;
      else EXPECT_EQ(0, std::memcmp(first.data(), out.data(), out.size() * sizeof(float))) << rel << " threads " << threads;
    }
  }
}

TEST(Engine, BatchOfPromptsEqualsEachAlone) {
  REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-f32.gguf");
  const auto model = load_fixture("gguf/tiny-f32.gguf");
  const Config& c = model->config();
  const int64_t V = c.vocab_size;
  const std::vector<std::string> texts = {"Bonjour, le monde.", kText, "def f(x):\n    return x * 2\n"};
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& t : texts) prompts.push_back(model->tokenizer().encode(t, true));

  // All prompts in one batch, each in its own KV slot, logits at every position.
  ThreadPool pool(2);
  KVCache kv = KVCache::reserved(c, int(prompts.size()), 256);
  int64_t total = 0;
  for (const auto& p : prompts) total += int64_t(p.size());
  State state(c, total, 2);
  state.reserve_logit_rows(total);
  Batch b;
  for (size_t s = 0; s < prompts.size(); ++s)
    for (size_t i = 0; i < prompts[s].size(); ++i) b.add(prompts[s][i], int32_t(i), int32_t(s), true);
  forward(*model, b, kv, state, pool);

  int64_t row = 0;
  for (const auto& p : prompts) {
    Session alone(*model, {256, int64_t(p.size()), 2});
    const auto& mine = alone.eval(p, true);
    for (size_t i = 0; i < p.size(); ++i, ++row) {
      EXPECT_LE(rel_l2(&state.logits[row * V], &mine[i * V], V), 1e-6);
      EXPECT_EQ(argmax(&state.logits[row * V], V), argmax(&mine[i * V], V));
    }
  }
}

TEST(Engine, LogitsRowsMustBeReserved) {
  REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-f32.gguf");
  const auto model = load_fixture("gguf/tiny-f32.gguf");
  const Config& c = model->config();
  ThreadPool pool(1);
  KVCache kv = KVCache::reserved(c, 1, 32);
  State state(c, 8, 1);
  EXPECT_EQ(state.max_logit_rows, 1);
  EXPECT_EQ(state.logits.size(), size_t(c.vocab_size));  // not [max_tokens][vocab]
  Batch b;
  for (int32_t i = 0; i < 3; ++i) b.add(10 + i, i, 0, true);
  EXPECT_THROW(forward(*model, b, kv, state, pool), Error);
  state.reserve_logit_rows(3);
  forward(*model, b, kv, state, pool);
  EXPECT_EQ(state.logits.size(), size_t(3 * c.vocab_size));
}

// Records every routing decision.
struct Recorder : RoutingObserver {
  std::vector<std::set<int32_t>> used;  // per layer
  int64_t calls = 0;
  void on_route(int64_t layer, const Batch& b, int64_t k, int64_t n_experts, const int32_t* experts,
                const float* weights, const float*) override {
    ++calls;
    if (used.size() <= size_t(layer)) used.resize(size_t(layer) + 1);
    for (int64_t t = 0; t < b.size(); ++t) {
      float sum = 0;
      for (int64_t r = 0; r < k; ++r) {
        EXPECT_GE(experts[t * k + r], 0);
        EXPECT_LT(experts[t * k + r], n_experts);
        if (r > 0) {
          EXPECT_LE(weights[t * k + r], weights[t * k + r - 1]);
        }
        sum += weights[t * k + r];
        used[layer].insert(experts[t * k + r]);
      }
      EXPECT_NEAR(sum, 1.0f, 1e-6f);
    }
  }
};

// Sparsity made observable: poison (NaN) the weights of an expert the router never picks for a
// prompt; if any byte of it were read, the logits would turn to NaN.
TEST(Engine, UnchosenExpertsAreNeverRead) {
  const std::string src = fixtures_dir() + "/hf/tiny";
  REQUIRE_PATH(src);
  const auto model = Model::load(src);
  const auto tokens = model->tokenizer().encode("Hi", true);  // 2 tokens: at most 4 of 8 experts per layer
  Recorder rec;
  Session s(*model, {64, 64, 1});
  s.set_observer(&rec);
  const std::vector<float> clean = s.eval(tokens, true);
  EXPECT_EQ(rec.calls, model->config().n_layers);
  int32_t unused = -1;
  for (int32_t e = 0; e < 8 && unused < 0; ++e)
    if (!rec.used[0].count(e)) unused = e;
  ASSERT_GE(unused, 0);

  // Copy the checkpoint and overwrite that expert's three matrices with NaN.
  const std::string dst = ::testing::TempDir() + "/poisoned-tiny";
  std::filesystem::remove_all(dst);
  std::filesystem::copy(src, dst);
  std::fstream f(dst + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  const ExpertWeights& X = model->weights().layers[0].experts[unused];
  // gen_mixtral.py writes model.embed_tokens first, at the start of the data section
  // (8 + header length), so pointer differences from it are file offsets.
  std::ifstream orig(src + "/model.safetensors", std::ios::binary);
  uint64_t header_len = 0;
  orig.read(reinterpret_cast<char*>(&header_len), 8);
  const uint8_t* file_start = model->weights().token_embd.data - (8 + header_len);
  const float nan = std::nanf("");
  for (const Matrix* m : {&X.w1, &X.w3, &X.w2}) {
    f.seekp(std::streamoff(m->data - file_start));
    for (int64_t i = 0; i < m->rows * m->cols; ++i) f.write(reinterpret_cast<const char*>(&nan), 4);
  }
  f.close();
  const auto poisoned = Model::load(dst);
  Session p(*poisoned, {64, 64, 1});
  const auto& out = p.eval(tokens, true);
  ASSERT_EQ(out.size(), clean.size());
  EXPECT_EQ(0, std::memcmp(out.data(), clean.data(), out.size() * sizeof(float)));
  std::filesystem::remove_all(dst);
}

TEST(Engine, ContextOverflowIsAnError) {
  REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-f32.gguf");
  const auto model = load_fixture("gguf/tiny-f32.gguf");
  Session s(*model, {8, 8, 1});
  std::vector<int32_t> nine(9, 100);
  EXPECT_THROW(s.eval(nine), Error);
  s.eval(std::vector<int32_t>(8, 100));
  EXPECT_THROW(s.eval({5}), Error);
}

TEST(Sampler, GreedyAndSeeded) {
  std::vector<float> logits = {0.1f, 2.0f, 2.0f, -1.0f, 1.5f};
  EXPECT_EQ(argmax(logits.data(), 5), 1);  // first index on ties
  SamplerParams g;
  g.temperature = 0;
  EXPECT_EQ(Sampler(g).sample(logits.data(), 5, {}), 1);

  SamplerParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0;
  p.seed = 7;
  Sampler a(p), b(p);
  std::vector<int32_t> ra, rb;
  for (int i = 0; i < 200; ++i) {
    ra.push_back(a.sample(logits.data(), 5, {}));
    rb.push_back(b.sample(logits.data(), 5, {}));
  }
  EXPECT_EQ(ra, rb);
  EXPECT_GT(std::set<int32_t>(ra.begin(), ra.end()).size(), 2u);  // it does sample

  // top-k 2 keeps only ids 1 and 2; min-p 0.5 drops ids below half the best's probability.
  p.top_k = 2;
  Sampler k2(p);
  for (int i = 0; i < 100; ++i) {
    const int32_t id = k2.sample(logits.data(), 5, {});
    EXPECT_TRUE(id == 1 || id == 2);
  }
  p.top_k = 0;
  p.min_p = 0.5f;  // p(4)/p(1) = e^-0.5 = 0.61 stays; p(0) = e^-1.9 goes
  Sampler mp(p);
  for (int i = 0; i < 100; ++i) {
    const int32_t id = mp.sample(logits.data(), 5, {});
    EXPECT_TRUE(id == 1 || id == 2 || id == 4) << id;
  }
  // Repetition penalty: penalising 1 and 2 makes 4 the greedy choice.
  g.repeat_penalty = 2.0f;
  EXPECT_EQ(Sampler(g).sample(logits.data(), 5, {1, 2}), 4);
}

}  // namespace
