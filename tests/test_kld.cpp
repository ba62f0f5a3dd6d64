// KL-divergence (analysis/kl_divergence.h, `mixtral perplexity --kl-divergence`): the statistics
// helpers on hand-computed cases, the compact log-probability encoding, the base file's round
// trip and its refusal of missing, truncated and hostile files, and the comparison itself on
// the tiny fixtures (a model against itself: 0 and the same top token everywhere; a Q4_0 copy
// against F32: above 0 and small).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "analysis/kl_divergence.h"
#include "analysis/perplexity.h"
#include "cli_run.h"
#include "core/error.h"
#include "model/model.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::analysis;
using namespace mixtral::testing;

namespace {

TEST(KldStats, MeanErrorPercentileMedian) {
  // 1..12: mean 6.5, population variance (144-1)/12 = 11.9167, error sqrt(11.9167/11) = 1.04083.
  double sum = 0, sum2 = 0;
  std::vector<float> v;
  for (int i = 1; i <= 12; ++i) {
    sum += i;
    sum2 += double(i) * i;
    v.push_back(float(i));
  }
  const MeanError m = mean_and_error(sum, sum2, 12);
  EXPECT_DOUBLE_EQ(m.mean, 6.5);
  EXPECT_NEAR(m.error, std::sqrt((143.0 / 12) / 11), 1e-12);
  EXPECT_EQ(mean_and_error(30, 100, 10).error, 0);  // too few values for an error
  EXPECT_EQ(mean_and_error(0, 0, 0).mean, 0);
  EXPECT_DOUBLE_EQ(median(v), 6.5);
  EXPECT_DOUBLE_EQ(median({1, 2, 9}), 2);
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 1), 12);
  EXPECT_NEAR(percentile(v, 0.99), 1 + 0.99 * 11, 1e-6);  // between 11 and 12: 11.89
  EXPECT_NEAR(percentile(v, 0.5), 6.5, 1e-12);
  // a = 1..12, b = 2a: cov(mean a, mean b) = 2 var(a) / (n-1) with var the population variance.
  EXPECT_NEAR(covariance_of_means(sum, 2 * sum, 2 * sum2, 12), 2 * (143.0 / 12) / 11, 1e-12);
}

TEST(KldEncoding, RowDecodesToLogSoftmax) {
  const int64_t V = 7;
  const float z[V] = {1.5f, -3.f, 4.25f, 0.f, -40.f, 4.25f, 2.f};
  std::vector<uint16_t> row(size_t(kld_row_words(V)));
  EXPECT_EQ(row.size(), 12u);  // 4 + 8 (7 rounded up to even)
  const double nll = encode_log_probs(z, V, 2, row.data());
  double lse = 0;
  for (float x : z) lse += std::exp(double(x) - 4.25);
  lse = 4.25 + std::log(lse);
  EXPECT_NEAR(nll, lse - 4.25, 1e-5);
  EXPECT_EQ(row[4 + 7], 0);  // padding
  const float step = 16.f / 65535;
  for (int64_t v = 0; v < V; ++v) {
    if (v == 4) continue;  // below the floor: stored as max − 16
    EXPECT_NEAR(decoded_log_prob(row.data(), v), z[v] - lse, step) << v;
  }
  EXPECT_NEAR(decoded_log_prob(row.data(), 4), 4.25 - 16 - lse, step);
  EXPECT_EQ(row[4 + 2], 65535);
  EXPECT_EQ(row[4 + 4], 0);

  // A flat distribution has no spread: scale 0, every entry log(1/V).
  const float flat[3] = {2, 2, 2};
  std::vector<uint16_t> r3(size_t(kld_row_words(3)));
  encode_log_probs(flat, 3, 0, r3.data());
  for (int v = 0; v < 3; ++v) EXPECT_NEAR(decoded_log_prob(r3.data(), v), -std::log(3.0), 1e-6);
}

TEST(KldEncoding, HandComputedDivergence) {
  // Base p = softmax(0, 0) = (½, ½); model q = softmax(0, ln 3) = (¼, ¾):
  // KL(p‖q) = ½ ln(½/¼) + ½ ln(½/¾) = ½ ln(4/3) = 0.143841.
  const float base[2] = {0, 0}, model[2] = {0, float(std::log(3.0))};
  std::vector<uint16_t> row(size_t(kld_row_words(2)));
  encode_log_probs(base, 2, 1, row.data());
  KldAccumulator acc;
  EXPECT_NEAR(acc.add(model, row.data(), 2, 1), 0.5 * std::log(4.0 / 3), 1e-6);
  const auto s = acc.summary();
  EXPECT_NEAR(s.ppl.mean, 4.0 / 3, 1e-5);    // p(target) = ¾
  EXPECT_NEAR(s.ppl_base.mean, 2.0, 1e-5);   // p_base(target) = ½
  EXPECT_NEAR(s.p_diff.mean, 0.25, 1e-6);
  EXPECT_EQ(s.same_top.mean, 0.0);           // the base's tie goes to token 0, the model prefers 1
}

std::string scratch(const std::string& name) { return scratch_path(name); }

KldBaseHeader small_header() {
  KldBaseHeader h{4, 5, 2, {}};
  for (int i = 0; i < 8; ++i) h.tokens.push_back(i % 5);
  return h;
}

std::vector<uint16_t> small_window(int seed) {
  const int64_t words = kld_row_words(5);
  std::vector<uint16_t> rows(size_t(kld_scored_per_window(4) * words));
  for (int64_t r = 0; r < kld_scored_per_window(4); ++r) {
    float z[5];
    for (int v = 0; v < 5; ++v) z[v] = float((v * 3 + seed + r) % 7) - 2;
    encode_log_probs(z, 5, 1, rows.data() + r * words);
  }
  return rows;
}

void write_small(const std::string& path) {
  KldBaseWriter w(path, small_header());
  w.write_window(small_window(0));
  w.write_window(small_window(1));
  w.close();
}

void write_bytes(const std::string& path, const std::string& b) { std::ofstream(path, std::ios::binary) << b; }

TEST(KldBaseFile, RoundTrip) {
  const std::string path = scratch("round.kld");
  write_small(path);
  KldBaseReader r(path);
  EXPECT_EQ(r.header().n_ctx, 4);
  EXPECT_EQ(r.header().n_vocab, 5);
  EXPECT_EQ(r.header().n_chunks, 2);
  EXPECT_EQ(r.header().tokens, small_header().tokens);
  std::vector<uint16_t> rows;
  r.read_window(0, rows);
  EXPECT_EQ(rows, small_window(0));
  r.read_window(1, rows);
  EXPECT_EQ(rows, small_window(1));
  EXPECT_THROW(r.read_window(2, rows), Error);
  // 20 header bytes, 8 tokens, 2 windows × 1 position × (4 + 6) words.
  EXPECT_EQ(slurp(path).size(), 20u + 32u + 2u * 10u * 2u);

  KldBaseWriter short_file(scratch("short.kld"), small_header());
  short_file.write_window(small_window(0));
  EXPECT_THROW(short_file.close(), Error);
}

void expect_refused(const std::string& bytes, const std::string& message) {
  const std::string path = scratch("bad.kld");
  write_bytes(path, bytes);
  try {
    KldBaseReader r(path);
    std::vector<uint16_t> rows;
    for (int32_t i = 0; i < r.header().n_chunks; ++i) r.read_window(i, rows);
    ADD_FAILURE() << "accepted: " << message;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}

std::string with_i32(std::string b, size_t at, int32_t v) {
  std::memcpy(b.data() + at, &v, 4);
  return b;
}

TEST(KldBaseFile, BadFilesRefused) {
  EXPECT_THROW(KldBaseReader(scratch("absent.kld")), Error);
  const std::string good_path = scratch("good.kld");
  write_small(good_path);
  const std::string good = slurp(good_path);
  expect_refused("", "not a KL-divergence base file");
  expect_refused("_logits_", "not a KL-divergence base file");
  expect_refused("_LOGITS_" + good.substr(8), "not a KL-divergence base file");
  expect_refused(good.substr(0, good.size() - 1), "truncated");
  expect_refused(good.substr(0, 40), "truncated");
  expect_refused(good + "x", "oversized");
  expect_refused(with_i32(good, 8, 2), "bad header");          // n_ctx too small to score anything
  expect_refused(with_i32(good, 8, -5), "bad header");
  expect_refused(with_i32(good, 12, 0), "bad header");         // n_vocab
  expect_refused(with_i32(good, 12, 1 << 30), "bad header");
  expect_refused(with_i32(good, 16, -1), "bad header");        // n_chunks
  expect_refused(with_i32(good, 16, 0x7fffffff), "truncated");
  expect_refused(with_i32(good, 20, 5), "outside the vocabulary");
  expect_refused(with_i32(good, 20, -1), "outside the vocabulary");
  const float nan = std::nanf("");
  int32_t nan_bits;
  std::memcpy(&nan_bits, &nan, 4);
  expect_refused(with_i32(good, 52, nan_bits), "corrupt log-probabilities");  // first row's scale
}

// The logits of every scored position of the first windows of a text.
struct Scored {
  std::vector<std::vector<float>> logits;
  std::vector<int32_t> targets;
};

Scored score(const std::string& model_path, const std::vector<int32_t>& tokens, int64_t n_ctx, int64_t windows) {
  const auto model = Model::load(model_path);
  Session session(*model, {n_ctx, n_ctx, 1});
  PerplexityWindows w(session, model->tokenizer().bos(), n_ctx);
  const int64_t V = model->config().vocab_size;
  Scored s;
  for (int64_t c = 0; c < windows; ++c) {
    const auto& z = w.eval(tokens, c);
    for (int64_t j = w.first_scored(); j < n_ctx - 1; ++j) {
      s.logits.emplace_back(z.begin() + j * V, z.begin() + (j + 1) * V);
      s.targets.push_back(tokens[size_t(c * n_ctx + j + 1)]);
    }
  }
  return s;
}

KldAccumulator::Summary compare(const Scored& base, const Scored& test) {
  const int64_t V = int64_t(base.logits[0].size());
  std::vector<uint16_t> row(size_t(kld_row_words(V)));
  KldAccumulator acc;
  for (size_t i = 0; i < base.logits.size(); ++i) {
    encode_log_probs(base.logits[i].data(), V, base.targets[i], row.data());
    acc.add(test.logits[i].data(), row.data(), V, test.targets[i]);
  }
  return acc.summary();
}

std::vector<int32_t> text_tokens(const std::string& model_path, int64_t n) {
  const auto model = Model::load(model_path);
  std::vector<int32_t> t{model->tokenizer().bos()};
  for (int64_t i = 1; i < n; ++i) t.push_back(int32_t((i * 7919 + 13) % (model->config().vocab_size - 3)) + 3);
  return t;
}

TEST(KldModels, SelfIsZeroQuantizedIsSmall) {
  const std::string f32 = fixture("gguf/tiny-f32.gguf"), q4 = fixture("gguf/tiny-q4_0.gguf");
  REQUIRE_PATH(f32);
  REQUIRE_PATH(q4);
  const auto tokens = text_tokens(f32, 2 * 32);
  const Scored ref = score(f32, tokens, 32, 2), quant = score(q4, tokens, 32, 2);
  ASSERT_EQ(ref.logits.size(), 2u * 15u);

  const auto self = compare(ref, ref);
  EXPECT_LT(self.kld.mean, 1e-6);  // only the base's 16-bit rounding of log-probabilities
  EXPECT_LT(self.kld_max, 1e-5);
  EXPECT_EQ(self.same_top.mean, 1.0);
  EXPECT_NEAR(self.ppl_ratio.mean, 1.0, 1e-4);

  const auto q = compare(ref, quant);
  EXPECT_GT(q.kld.mean, 1e-5);
  EXPECT_LT(q.kld.mean, 0.05);
  EXPECT_GT(q.same_top.mean, 0.5);
  EXPECT_NEAR(q.ppl_ratio.mean, 1.0, 0.1);
}

// The command end to end: base from F32, Q4_0 against it, then the refusals.
TEST(KldCli, BaseThenCompare) {
  const std::string f32 = fixture("gguf/tiny-f32.gguf"), q4 = fixture("gguf/tiny-q4_0.gguf");
  REQUIRE_PATH(f32);
  REQUIRE_PATH(q4);
  const std::string text = scratch("text.txt"), base = scratch("cli.kld");
  std::string words;
  for (int i = 0; i < 400; ++i) words += "word" + std::to_string(i * 37 % 101) + (i % 9 ? " " : ".\n");
  write_bytes(text, words);
  auto r = run_mixtral({"perplexity", "-m", f32, "-f", text, "-c", "64", "--chunks", "2", "-t", "1",
                        "--kl-divergence-base", base});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("Final estimate: PPL"), std::string::npos);
  r = run_mixtral({"perplexity", "-m", q4, "--kl-divergence-base", base, "--kl-divergence", "-t", "1", "-o", "json"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tokens_scored"], 2 * 31);
  EXPECT_GT(j["kld"]["mean"].get<double>(), 0);
  EXPECT_LT(j["kld"]["mean"].get<double>(), 0.05);
  r = run_mixtral({"perplexity", "-m", f32, "--kl-divergence-base", base, "--kl-divergence", "-t", "1", "-f", text});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("Same top p: 100.000"), std::string::npos) << r.out;

  // Refusals: no base, a missing base, a base of another vocabulary, another text.
  r = run_mixtral({"perplexity", "-m", q4, "--kl-divergence"});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("needs --kl-divergence-base"), std::string::npos) << r.err;
  r = run_mixtral({"perplexity", "-m", q4, "--kl-divergence", "--kl-divergence-base", scratch("absent.kld")});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("cannot read"), std::string::npos) << r.err;
  const std::string other = scratch("vocab5.kld");
  write_small(other);
  r = run_mixtral({"perplexity", "-m", q4, "--kl-divergence", "--kl-divergence-base", other});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("vocabulary of 5"), std::string::npos) << r.err;
  write_bytes(scratch("other.txt"), "something else entirely, " + words);
  r = run_mixtral({"perplexity", "-m", q4, "--kl-divergence", "--kl-divergence-base", base, "-f", scratch("other.txt")});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("does not tokenize to the base file"), std::string::npos) << r.err;
}

}  // namespace
