// Random-weight models (model/random_model.h, `mixtral make-model`): the draws have the stated
// distribution, a tiny model loads and runs (finite logits, routing spread over the experts),
// and the bytes depend on the seed only — not on the thread count; fewer layers give a prefix.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <unistd.h>

#include "core/error.h"
#include "engine/session.h"
#include "io/gguf.h"
#include "model/model.h"
#include "model/random_model.h"
#include "model/routing.h"
#include "text/sentencepiece_model.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::testing;
namespace fs = std::filesystem;

namespace {

std::string tokenizer_path() { return shared_dir() + "/tokenizers/tokenizer.model.v1"; }

std::string temp_file(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/mixtral-make-model-" + std::to_string(::getpid());
  fs::create_directories(dir);
  return dir + "/" + name;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

Config tiny(int64_t layers = 2) {
  Config c = random_model_preset("tiny").config;
  c.n_layers = layers;
  return c;
}

RandomModelOptions options(DType type, uint64_t seed, int threads) {
  RandomModelOptions o;
  o.type = type;
  o.seed = seed;
  o.threads = threads;
  o.std_qk = random_model_preset("tiny").std_qk;
  return o;
}

// Every expert each layer chose, over all tokens.
struct ExpertsSeen final : RoutingObserver {
  std::vector<std::set<int32_t>> chosen;
  bool finite_logits = true;
  void on_route(int64_t layer, const Batch& batch, int64_t k, int64_t n_experts, const int32_t* experts,
                const float*, const float* logits) override {
    if (chosen.size() <= size_t(layer)) chosen.resize(size_t(layer) + 1);
    for (int64_t i = 0; i < int64_t(batch.size()) * k; ++i) chosen[size_t(layer)].insert(experts[i]);
    for (int64_t i = 0; i < int64_t(batch.size()) * n_experts; ++i) finite_logits &= std::isfinite(logits[i]);
  }
};

}  // namespace

TEST(RandomModel, RowsAreUniformWithTheStatedStd) {
  const uint64_t key = random_tensor_key(7, "blk.0.attn_q.weight");
  std::vector<float> x(1 << 20);
  random_row(key, 3, 0.02f, 0.f, x.data(), int64_t(x.size()));
  double sum = 0, sq = 0;
  float lo = 1, hi = -1;
  for (float v : x) {
    sum += v;
    sq += double(v) * v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const double n = double(x.size()), mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 1e-4);
  EXPECT_NEAR(sd, 0.02, 0.02 * 0.005);
  const float edge = 0.02f * std::sqrt(3.f);  // uniform on [-edge, edge)
  EXPECT_GE(lo, -edge);
  EXPECT_LT(hi, edge);
  EXPECT_LT(lo, -0.99f * edge);
  EXPECT_GT(hi, 0.99f * edge);

  // Norm weights sit around 1; the same (key, row) gives the same values; other rows, other keys differ.
  std::vector<float> a(256), b(256), c(256), d(256);
  random_row(key, 3, 0.05f, 1.f, a.data(), 256);
  random_row(key, 3, 0.05f, 1.f, b.data(), 256);
  random_row(key, 4, 0.05f, 1.f, c.data(), 256);
  random_row(random_tensor_key(8, "blk.0.attn_q.weight"), 3, 0.05f, 1.f, d.data(), 256);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, d);
  for (float v : a) EXPECT_NEAR(v, 1.f, 0.05f * std::sqrt(3.f) + 1e-6f);
}

TEST(RandomModel, TinyModelLoadsAndRoutesOverManyExperts) {
  REQUIRE_PATH(tokenizer_path());
  const Vocab vocab = load_sentencepiece_model(tokenizer_path());
  for (DType type : {DType::Q4_0, DType::Q8_0, DType::F16}) {
    SCOPED_TRACE(dtype_name(type));
    const std::string path = temp_file("tiny.gguf");
    make_random_gguf(tiny(), vocab, path, options(type, 1, 2));
    const auto model = Model::load(path);
    const Config& c = model->config();
    EXPECT_EQ(c.n_layers, 2);
    EXPECT_EQ(c.n_experts, 8);
    EXPECT_EQ(c.dim, 128);
    EXPECT_NE(model->dtype_summary().find(dtype_name(type)), std::string::npos) << model->dtype_summary();
    const auto ids = model->tokenizer().encode("The quick brown fox jumps over the lazy dog, again and again.", true);
    ASSERT_GE(ids.size(), 12u);
    Session s(*model, {64, 64, 2});
    ExpertsSeen seen;
    s.set_observer(&seen);
    const std::vector<float> logits = s.eval(ids, /*all_logits=*/true);
    ASSERT_EQ(logits.size(), ids.size() * size_t(c.vocab_size));
    double sq = 0;
    for (float v : logits) {
      ASSERT_TRUE(std::isfinite(v));
      sq += double(v) * v;
    }
    EXPECT_GT(std::sqrt(sq / double(logits.size())), 0.1);  // not degenerate
    EXPECT_TRUE(seen.finite_logits);
    ASSERT_EQ(seen.chosen.size(), 2u);
    for (const auto& layer : seen.chosen) EXPECT_GE(layer.size(), 4u);  // routing spreads, not one expert
  }
}

TEST(RandomModel, BytesDependOnTheSeedOnlyAndFewerLayersArePrefix) {
  REQUIRE_PATH(tokenizer_path());
  const Vocab vocab = load_sentencepiece_model(tokenizer_path());
  const std::string one = temp_file("t1.gguf"), two = temp_file("t2.gguf"), other = temp_file("s2.gguf"),
                    shallow = temp_file("l1.gguf");
  make_random_gguf(tiny(), vocab, one, options(DType::Q4_0, 5, 1));
  make_random_gguf(tiny(), vocab, two, options(DType::Q4_0, 5, 2));
  make_random_gguf(tiny(), vocab, other, options(DType::Q4_0, 6, 2));
  make_random_gguf(tiny(1), vocab, shallow, options(DType::Q4_0, 5, 2));
  const std::string a = file_bytes(one);
  EXPECT_GT(a.size(), 4u << 20);
  EXPECT_TRUE(a == file_bytes(two)) << "1 thread and 2 threads differ";
  const std::string b = file_bytes(other);
  EXPECT_EQ(a.size(), b.size());
  EXPECT_FALSE(a == b) << "seed 6 gave the bytes of seed 5";

  // Every tensor of the 1-layer model is the same tensor of the 2-layer model.
  const GgufFile deep(one), flat(shallow);
  ASSERT_LT(flat.tensors().size(), deep.tensors().size());
  for (const RawTensor& t : flat.tensors()) {
    const RawTensor* u = deep.find(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    ASSERT_EQ(t.nbytes, u->nbytes) << t.name;
    EXPECT_EQ(std::memcmp(t.data, u->data, t.nbytes), 0) << t.name;
  }
}

TEST(RandomModel, RejectsAVocabularyOfTheWrongSize) {
  REQUIRE_PATH(tokenizer_path());
  const Vocab vocab = load_sentencepiece_model(tokenizer_path());
  Config c = tiny();
  c.vocab_size = 32768;
  const std::string path = temp_file("bad.gguf");
  try {
    make_random_gguf(c, vocab, path, options(DType::Q8_0, 1, 1));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("32000 pieces"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_THROW(random_model_preset("mixtral-9x9b"), Error);
}
