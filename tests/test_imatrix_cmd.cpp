// `mixtral imatrix` (analysis/imatrix_collector, the forward pass's ActivationObserver): the sums
// of x² it gathers against a float64 reference forward pass of the same tokens, expert entries
// counting only their routed tokens, the file's layout (llama-imatrix's names, no LM head or
// embedding) and its round trip through io/imatrix.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "analysis/imatrix_collector.h"
#include "cli_run.h"
#include "engine/session.h"
#include "io/imatrix.h"
#include "model/model.h"
#include "reference_forward.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::testing;
using analysis::ImatrixCollector;

namespace {

constexpr MatmulInput kInputs[] = {MatmulInput::AttnQKV, MatmulInput::AttnOutput, MatmulInput::Router,
                                   MatmulInput::ExpertGateUp, MatmulInput::ExpertDown};

std::vector<int32_t> some_tokens(int64_t n, int32_t vocab) {
  std::vector<int32_t> t{1};
  for (int64_t i = 1; i < n; ++i) t.push_back(int32_t((i * 7919 + 13) % (vocab - 3)) + 3);
  return t;
}

// Counts the experts each layer chose, from the routing decisions.
struct ExpertTally final : RoutingObserver {
  std::map<std::pair<int64_t, int32_t>, int64_t> n;  // (layer, expert) -> (token, rank) pairs
  void on_route(int64_t layer, const Batch& b, int64_t k, int64_t, const int32_t* experts, const float*,
                const float*) override {
    for (int64_t i = 0; i < b.size() * k; ++i) ++n[{layer, experts[i]}];
  }
};

// The engine's sums (one forward pass over `tokens`) against the reference's, every input of
// every layer; expert entries also against the routing decisions.
void check_against_reference(const std::string& path, int64_t n_tokens) {
  REQUIRE_PATH(path);
  const auto model = Model::load(path);
  const Config& c = model->config();
  const auto tokens = some_tokens(n_tokens, int32_t(c.vocab_size));
  ImatrixCollector collector(c);
  ExpertTally tally;
  Session session(*model, {n_tokens, n_tokens, 2});
  session.set_activation_observer(&collector);
  session.set_observer(&tally);
  session.eval(tokens);
  EXPECT_EQ(collector.passes(), 1);

  // (layer, input) -> [expert][col] sums and rows, from the reference.
  const int64_t E = c.is_moe() ? c.n_experts : 1;
  std::map<std::pair<int64_t, int>, std::vector<double>> ref_sum;
  std::map<std::pair<int64_t, int>, std::vector<int64_t>> ref_rows;
  reference_forward(*model, tokens, [&](int64_t l, MatmulInput w, int32_t e, int64_t, const Vec& x) {
    const bool ex = w == MatmulInput::ExpertGateUp || w == MatmulInput::ExpertDown;
    auto& s = ref_sum[{l, int(w)}];
    auto& r = ref_rows[{l, int(w)}];
    if (s.empty()) {
      s.assign(size_t((ex ? E : 1) * int64_t(x.size())), 0.0);
      r.assign(size_t(ex ? E : 1), 0);
    }
    const size_t base = size_t(ex ? e : 0) * x.size();
    for (size_t i = 0; i < x.size(); ++i) s[base + i] += x[i] * x[i];
    ++r[size_t(ex ? e : 0)];
  });

  for (int64_t l = 0; l < c.n_layers; ++l)
    for (const MatmulInput w : kInputs) {
      if (w == MatmulInput::Router && !c.is_moe()) continue;
      const auto& s = collector.stats(l, w);
      const auto& rs = ref_sum.at({l, int(w)});
      ASSERT_EQ(s.sum.size(), rs.size()) << l << " " << int(w);
      EXPECT_EQ(s.rows, ref_rows.at({l, int(w)})) << "layer " << l << " input " << int(w);
      EXPECT_EQ(s.ncall, 1);
      double worst = 0;
      for (size_t i = 0; i < rs.size(); ++i) worst = std::max(worst, std::fabs(s.sum[i] - rs[i]) / (rs[i] + 1e-12));
      EXPECT_LT(worst, 2e-4) << "layer " << l << " input " << int(w);
      if (w == MatmulInput::ExpertGateUp && c.is_moe()) {
        int64_t total = 0;
        for (int32_t e = 0; e < E; ++e) {
          const auto it = tally.n.find({l, e});
          EXPECT_EQ(s.rows[size_t(e)], it == tally.n.end() ? 0 : it->second) << "layer " << l << " expert " << e;
          total += s.rows[size_t(e)];
        }
        EXPECT_EQ(total, n_tokens * c.n_experts_used);  // each token once per rank, nothing else
      }
    }
}

TEST(ImatrixCollect, SumsEqualTheReferenceForwardMoE) { check_against_reference(fixture("gguf/tiny-f32.gguf"), 40); }

TEST(ImatrixCollect, SumsEqualTheReferenceForwardDense) { check_against_reference(fixture("hf/tiny-dense"), 24); }

TEST(ImatrixCollect, ObservingChangesNothing) {
  const std::string path = fixture("gguf/tiny-f32.gguf");
  REQUIRE_PATH(path);
  const auto model = Model::load(path);
  const auto tokens = some_tokens(20, int32_t(model->config().vocab_size));
  Session plain(*model, {20, 20, 2}), seen(*model, {20, 20, 2});
  ImatrixCollector collector(model->config());
  seen.set_activation_observer(&collector);
  EXPECT_EQ(plain.eval(tokens, true), seen.eval(tokens, true));
}

// The file: one entry per matrix (attn_q/k/v share their values), values = Σx²/rows · ncall,
// experts stacked; passes under 16 tokens skip the dense matrices, as llama-imatrix.
TEST(ImatrixCollect, ResultFollowsLlamaImatrix) {
  const std::string path = fixture("gguf/tiny-f32.gguf");
  REQUIRE_PATH(path);
  const auto model = Model::load(path);
  const Config& c = model->config();
  ImatrixCollector collector(c);
  Session session(*model, {64, 32, 2});
  session.set_activation_observer(&collector);
  session.eval(some_tokens(40, int32_t(c.vocab_size)));  // passes of 32 and 8 tokens
  session.reset();
  session.eval(some_tokens(8, int32_t(c.vocab_size)));  // one pass of 8 tokens: experts only
  EXPECT_EQ(collector.passes(), 3);                     // 32 + 8, then 8
  EXPECT_EQ(collector.stats(0, MatmulInput::AttnQKV).ncall, 1);
  EXPECT_EQ(collector.stats(0, MatmulInput::AttnQKV).rows[0], 32);
  EXPECT_EQ(collector.stats(1, MatmulInput::ExpertDown).ncall, 3);
  std::vector<std::string> skipped;
  const Imatrix m = collector.result("text.txt", &skipped);
  EXPECT_EQ(m.dataset, "text.txt");
  EXPECT_EQ(m.last_call, 3);
  std::set<std::string> names;
  for (const auto& e : m.entries) names.insert(e.name);
  for (const auto& s : skipped) names.insert(s);
  EXPECT_EQ(names.size(), size_t(c.n_layers) * 8);
  EXPECT_EQ(names.count("output.weight"), 0u);
  EXPECT_EQ(names.count("token_embd.weight"), 0u);
  for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps",
                        "ffn_down_exps"})
    EXPECT_EQ(names.count("blk.1." + std::string(n) + ".weight"), 1u) << n;
  const auto* q = m.find("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  const auto& s = collector.stats(0, MatmulInput::AttnQKV);
  EXPECT_EQ(q->values.size(), size_t(c.dim));
  EXPECT_FLOAT_EQ(q->values[5], float(s.sum[5]) / 32.f * 1.f);
  EXPECT_EQ(m.find("blk.0.attn_k.weight")->values, q->values);
  for (const auto& e : m.entries)
    if (e.name.find("_exps") != std::string::npos) {
      const int64_t cols = e.name.find("down") != std::string::npos ? c.ffn_dim : c.dim;
      EXPECT_EQ(int64_t(e.values.size()), c.n_experts * cols) << e.name;
      EXPECT_EQ(e.ncall, 3);
    }
}

TEST(ImatrixCmd, WritesAFileThatRoundTrips) {
  const std::string path = fixture("gguf/tiny-f32.gguf");
  REQUIRE_PATH(path);
  std::string text;
  for (int i = 0; i < 40; ++i)
    text += "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest " +
            std::to_string(i) + ". ";
  const std::string txt = scratch_path("calib.txt"), out = scratch_path("out.imatrix");
  std::ofstream(txt) << text;
  const CliResult r = run_mixtral({"imatrix", "-m", path, "-f", txt, "-c", "64", "--chunks", "5", "-t", "2", "-o", out});
  ASSERT_EQ(r.status, 0) << r.err;
  const Imatrix m = read_imatrix(out);
  EXPECT_EQ(m.last_call, 5);
  EXPECT_EQ(m.dataset, txt);
  EXPECT_EQ(m.find("output.weight"), nullptr);
  EXPECT_EQ(m.find("token_embd.weight"), nullptr);
  ASSERT_NE(m.find("blk.0.attn_output.weight"), nullptr);
  EXPECT_EQ(m.find("blk.0.attn_output.weight")->ncall, 5);
  for (const auto& e : m.entries)
    for (const float v : e.values) ASSERT_TRUE(std::isfinite(v) && v >= 0) << e.name;
  const std::string again = scratch_path("again.imatrix");
  write_imatrix(m, again);
  EXPECT_EQ(slurp(again), slurp(out));

  const CliResult few = run_mixtral({"imatrix", "-m", path, "-f", txt, "-c", "1024", "-o", out});
  EXPECT_EQ(few.status, 1);
  EXPECT_NE(few.err.find("at least 2 x 1024"), std::string::npos) << few.err;
}

}  // namespace
