// The continuous-batching engine without HTTP: requests batched together produce exactly what
// they produce alone, prefix sharing reuses KV blocks without changing outputs, cancellation and
// every finish reason free the sequence's blocks, and overload is refused, not queued forever.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/session.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::testing;

namespace {

struct Outcome {
  std::vector<int32_t> tokens;
  std::string text;
  RequestEvent last;
};

Outcome collect(Request& r) {
  Outcome o;
  RequestEvent ev;
  for (;;) {
    if (!r.next(ev, 60000)) {
      ADD_FAILURE() << "request " << r.id() << " timed out";
      return o;
    }
    o.text += ev.text;
    if (ev.done) {
      o.last = ev;
      return o;
    }
    o.tokens.push_back(ev.token);
  }
}

// Greedy continuation through a Session: the single-sequence reference.
std::vector<int32_t> alone(const Model& m, const std::vector<int32_t>& prompt, int n) {
  Session s(m, {256, 64, 1});
  std::vector<float> logits = s.eval(prompt);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    const int32_t id = argmax(logits.data(), m.config().vocab_size);
    if (id == m.tokenizer().eos()) break;
    out.push_back(id);
    logits = s.eval({id});
  }
  return out;
}

GenerationParams greedy(int n) {
  GenerationParams p;
  p.max_tokens = n;
  p.sampling.temperature = 0;
  return p;
}

class ServingEngine : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-f32.gguf");
    model_ = Model::load(fixtures_dir() + "/gguf/tiny-f32.gguf");
  }
  std::vector<int32_t> encode(const std::string& s) { return model_->tokenizer().encode(s, true); }
  std::unique_ptr<Model> model_;
};

TEST_F(ServingEngine, ConcurrentRequestsEqualEachAlone) {
  EngineOptions o;
  o.n_parallel = 4;
  o.n_ctx = 256;
  o.step_tokens = 24;  // forces chunked prefill alongside decoding
  o.n_threads = 2;
  Engine engine(*model_, o);
  const std::vector<std::string> texts = {"The first prompt is about the sea and the wind over it.", "Bonjour !",
                                          "def add(a, b):\n    return a + b\n", "1, 2, 3, 4, 5, 6, 7, 8,",
                                          "日本語のテキストです。", "A sixth request waits in the queue until a slot frees."};
  std::vector<std::shared_ptr<Request>> reqs;
  for (const auto& t : texts) reqs.push_back(engine.submit(encode(t), greedy(20)));
  for (size_t i = 0; i < texts.size(); ++i) {
    ASSERT_NE(reqs[i], nullptr);
    const Outcome o = collect(*reqs[i]);
    EXPECT_EQ(o.tokens, alone(*model_, encode(texts[i]), 20)) << texts[i];
    EXPECT_EQ(o.text, model_->tokenizer().decode(o.tokens));
    EXPECT_EQ(o.last.finish_reason, "length");
    EXPECT_EQ(o.last.completion_tokens, 20);
  }
  const EngineMetrics m = engine.metrics();
  EXPECT_EQ(m.requests_finished, texts.size());
  EXPECT_EQ(m.generated_tokens, 20 * texts.size());
  EXPECT_EQ(m.ttft.count, texts.size());
  ASSERT_EQ(m.expert_tokens.size(), 2u);
  uint64_t routed = 0;
  for (uint64_t c : m.expert_tokens[0]) routed += c;
  EXPECT_GT(routed, 0u);
}

// While a sequence decodes, a long prompt enters prefill_chunk tokens per step: its first
// token needs at least prompt / prefill_chunk steps, and both outputs stay exact.
TEST_F(ServingEngine, PrefillChunkBoundsPromptTokensPerDecodeStep) {
  EngineOptions o;
  o.n_parallel = 2;
  o.n_ctx = 512;
  o.step_tokens = 256;  // would take the whole prompt in one step
  o.prefill_chunk = 8;
  o.n_threads = 2;
  Engine engine(*model_, o);
  GenerationParams long_run = greedy(120);
  long_run.ignore_eos = true;
  const auto first_prompt = encode("A stream that keeps decoding.");
  auto first = engine.submit(first_prompt, long_run);
  RequestEvent ev;
  ASSERT_TRUE(first->next(ev, 60000));  // decoding now
  std::string text;
  for (int i = 0; i < 12; ++i) text += "Every prompt token here shares a step with the running stream. ";
  const auto prompt = encode(text);
  ASSERT_GT(prompt.size(), 100u);
  const uint64_t steps_before = engine.metrics().step.count;
  auto second = engine.submit(prompt, greedy(4));
  RequestEvent first_of_b;
  ASSERT_TRUE(second->next(first_of_b, 60000));
  // the step that sampled it may not be counted yet: one step of slack
  EXPECT_GE(engine.metrics().step.count - steps_before + 1, prompt.size() / 8);
  Outcome b = collect(*second);
  b.tokens.insert(b.tokens.begin(), first_of_b.token);
  const Outcome a = collect(*first);
  ASSERT_EQ(a.last.finish_reason, "length") << "the first stream must still decode while the prompt enters";
  EXPECT_EQ(b.tokens, alone(*model_, prompt, 4));
  std::vector<int32_t> all_a = {ev.token};
  all_a.insert(all_a.end(), a.tokens.begin(), a.tokens.end());
  EXPECT_EQ(all_a.size(), 120u);
}

TEST_F(ServingEngine, PrefixSharingReusesBlocksAndKeepsOutputs) {
  EngineOptions o;
  o.n_parallel = 2;
  o.n_ctx = 256;
  o.block_size = 8;
  Engine engine(*model_, o);
  const std::string system = "You are a helpful assistant. Answer briefly and precisely, in English. ";
  const auto a = encode(system + "What is a mixture of experts?");
  const auto b = encode(system + "Why route only two experts?");
  const Outcome first = collect(*engine.submit(a, greedy(8)));
  EXPECT_EQ(first.last.cached_tokens, 0);
  const Outcome again = collect(*engine.submit(a, greedy(8)));
  EXPECT_EQ(again.tokens, first.tokens);
  EXPECT_EQ(again.last.cached_tokens, int64_t((a.size() - 1) / 8 * 8));
  const Outcome other = collect(*engine.submit(b, greedy(8)));
  EXPECT_GE(other.last.cached_tokens, 8);
  EXPECT_EQ(other.tokens, alone(*model_, b, 8));
  EXPECT_EQ(engine.metrics().kv_blocks_used, 0);
}

TEST_F(ServingEngine, CancellationFreesBlocks) {
  EngineOptions o;
  o.n_parallel = 2;
  o.n_ctx = 512;
  Engine engine(*model_, o);
  auto r = engine.submit(encode("Tell me a very long story about the experts."), greedy(400));
  RequestEvent ev;
  ASSERT_TRUE(r->next(ev, 60000));
  r->cancel();
  const Outcome rest = collect(*r);
  EXPECT_EQ(rest.last.finish_reason, "cancelled");
  for (int i = 0; i < 100 && engine.metrics().running > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const EngineMetrics m = engine.metrics();
  EXPECT_EQ(m.kv_blocks_used, 0);
  EXPECT_EQ(m.running, 0);
  EXPECT_EQ(m.requests_cancelled, 1u);
}

TEST_F(ServingEngine, StopStringsEndTheText) {
  EngineOptions o;
  o.n_ctx = 256;
  Engine engine(*model_, o);
  const auto prompt = encode("Once upon a time");
  const std::string full = model_->tokenizer().decode(alone(*model_, prompt, 24));
  ASSERT_GT(full.size(), 12u);
  const std::string stop = full.substr(full.size() / 2, 4);
  GenerationParams p = greedy(24);
  p.stop = {stop, "a string that never appears"};
  const Outcome o1 = collect(*engine.submit(prompt, p));
  EXPECT_EQ(o1.last.finish_reason, "stop");
  EXPECT_EQ(o1.text, full.substr(0, full.find(stop)));
}

TEST_F(ServingEngine, LimitsAndErrors) {
  EngineOptions o;
  o.n_parallel = 1;
  o.n_ctx = 64;
  o.max_queue = 2;
  Engine engine(*model_, o);
  EXPECT_THROW(engine.submit({}, greedy(4)), Error);
  EXPECT_THROW(engine.submit(std::vector<int32_t>(64, 100), greedy(4)), Error);   // no room to generate
  EXPECT_THROW(engine.submit({1, 32000}, greedy(4)), Error);                       // token outside vocab
  // max_tokens is capped by the context: 60 prompt tokens leave 4.
  const Outcome capped = collect(*engine.submit(std::vector<int32_t>(60, 100), greedy(1000)));
  EXPECT_EQ(capped.last.finish_reason, "length");
  EXPECT_EQ(capped.last.completion_tokens, 4);
  // A full queue refuses instead of waiting forever.
  std::vector<std::shared_ptr<Request>> held;
  int refused = 0;
  for (int i = 0; i < 8; ++i) {
    auto r = engine.submit(encode("queue"), greedy(30));
    if (r) held.push_back(r);
    else ++refused;
  }
  EXPECT_GT(refused, 0);
  for (auto& r : held) collect(*r);
  engine.shutdown(true);
  EXPECT_EQ(engine.submit(encode("late"), greedy(2)), nullptr);
}

TEST_F(ServingEngine, KvPoolExhaustionIsAnErrorNotAHang) {
  EngineOptions o;
  o.n_parallel = 2;
  o.n_ctx = 128;
  o.kv_blocks = 3;  // 48 positions for two sequences that each want more
  o.block_size = 16;
  Engine engine(*model_, o);
  auto a = engine.submit(std::vector<int32_t>(30, 100), greedy(60));
  auto b = engine.submit(std::vector<int32_t>(30, 200), greedy(60));
  const Outcome oa = collect(*a), ob = collect(*b);
  EXPECT_TRUE(oa.last.finish_reason == "error" || ob.last.finish_reason == "error");
  EXPECT_EQ(engine.metrics().kv_blocks_used, 0);
}

TEST_F(ServingEngine, ShutdownCancelsRunningWork) {
  EngineOptions o;
  o.n_ctx = 1024;
  auto engine = std::make_unique<Engine>(*model_, o);
  auto r = engine->submit(encode("A long answer, please."), greedy(900));
  RequestEvent ev;
  ASSERT_TRUE(r->next(ev, 60000));
  engine->shutdown(false);
  EXPECT_EQ(collect(*r).last.finish_reason, "cancelled");
}

}  // namespace
