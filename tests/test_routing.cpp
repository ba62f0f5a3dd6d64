// The routing analysis (src/analysis, `mixtral routes`): every statistic on hand-made decision
// sequences whose answers are known exactly; the random baselines against seeded Monte-Carlo
// simulations; the observer on real fixture models; the trace file; the command end to end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sys/wait.h>
#include <unistd.h>

#include "analysis/routing_report.h"
#include "analysis/routing_stats.h"
#include "analysis/routing_trace.h"
#include "core/error.h"
#include "engine/session.h"
#include "model/model.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::analysis;
using namespace mixtral::testing;
namespace fs = std::filesystem;

namespace {

// A one-layer trace built by hand: each window is a list of tokens, each token its k experts in
// rank order. Token ids count up; weights are 1/k.
struct Synthetic {
  int64_t n, k;
  std::vector<std::string> domains = {"d"};
  RouteTrace t;
  Synthetic(int64_t n_experts, int64_t top_k) : n(n_experts), k(top_k) {
    t.n_layers = 1;
    t.n_experts = n;
    t.k = k;
    t.domains = domains;
  }
  void window(const std::vector<std::vector<int>>& tokens, uint16_t domain = 0, int32_t first_token = 100) {
    const uint32_t w = t.rows() == 0 ? 0 : t.window.back() + 1;
    for (size_t i = 0; i < tokens.size(); ++i) {
      EXPECT_EQ(int64_t(tokens[i].size()), k);
      t.window.push_back(w);
      t.token.push_back(first_token + int32_t(i));
      t.pos.push_back(int32_t(i));
      t.domain.push_back(domain);
      for (int e : tokens[i]) {
        t.experts.push_back(uint16_t(e));
        t.weights.push_back(1.0f / float(k));
      }
    }
  }
};

std::string temp_dir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "/mixtral-routing-" + std::to_string(::getpid()) + "/" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// An ordered uniformly random k-subset of n: a partial Fisher–Yates shuffle.
std::vector<int> random_top_k(std::mt19937_64& rng, int n, int k) {
  std::vector<int> e(static_cast<size_t>(n));
  std::iota(e.begin(), e.end(), 0);
  for (int i = 0; i < k; ++i) std::swap(e[size_t(i)], e[size_t(i + int(rng() % uint64_t(n - i)))]);
  e.resize(size_t(k));
  return e;
}

}  // namespace

// ---- statistics on decisions known exactly ----

TEST(RoutingStats, SameExpertEveryTokenRepeatsEveryPair) {
  Synthetic s(8, 2);
  s.window(std::vector<std::vector<int>>(10, {3, 5}));
  const RoutingStats st = compute_stats(s.t);
  const Cell& c = st.at(0, 0);
  EXPECT_EQ(c.tokens, 10);
  EXPECT_EQ(c.pairs, 9);
  const Rates r = repeat_rates(c);
  EXPECT_DOUBLE_EQ(r.first, 1.0);
  EXPECT_DOUBLE_EQ(r.first_or_second, 1.0);
  EXPECT_DOUBLE_EQ(r.top_k, 1.0);
  const auto share = shares(c.chosen_counts);
  EXPECT_DOUBLE_EQ(share[3], 0.5);
  EXPECT_DOUBLE_EQ(share[5], 0.5);
  EXPECT_DOUBLE_EQ(shares(c.first_counts)[3], 1.0);
  // Independent tokens from a distribution that is always {3, 5}: certain repetition too.
  const Rates ind = independent_rates(c, 8);
  EXPECT_DOUBLE_EQ(ind.first, 1.0);
  EXPECT_DOUBLE_EQ(ind.first_or_second, 1.0);
}

TEST(RoutingStats, DisjointAlternationNeverRepeats) {
  Synthetic s(8, 2);
  s.window({{0, 1}, {2, 3}, {0, 1}, {2, 3}, {0, 1}});
  const Rates r = repeat_rates(compute_stats(s.t).at(0, 0));
  EXPECT_DOUBLE_EQ(r.first, 0.0);
  EXPECT_DOUBLE_EQ(r.first_or_second, 0.0);
  // Independent draws from half {0,1}, half {2,3} (with replacement, 3:2): P(same set) = 0.36 + 0.16.
  const Rates ind = independent_rates(compute_stats(s.t).at(0, 0), 8);
  EXPECT_NEAR(ind.first, 0.52, 1e-12);
  EXPECT_NEAR(ind.first_or_second, 0.52, 1e-12);
}

TEST(RoutingStats, SwappedOrSharedSecondChoiceCountsOnlyAsFirstOrSecond) {
  Synthetic s(8, 2);
  s.window({{0, 1}, {1, 0}, {2, 0}});  // swapped ranks; then only t's second = t+1's second
  const Rates r = repeat_rates(compute_stats(s.t).at(0, 0));
  EXPECT_DOUBLE_EQ(r.first, 0.0);
  EXPECT_DOUBLE_EQ(r.first_or_second, 1.0);
}

TEST(RoutingStats, KnownMixture) {
  Synthetic s(8, 2);
  // pairs: same first | disjoint | swapped | disjoint | same first  →  first 2/5, first-or-second 3/5
  s.window({{0, 1}, {0, 1}, {2, 3}, {3, 2}, {1, 4}, {1, 0}});
  const RoutingStats st = compute_stats(s.t);
  const Cell& c = st.at(0, 0);
  EXPECT_EQ(c.pairs, 5);
  EXPECT_EQ(c.repeat_first, 2);
  EXPECT_EQ(c.repeat_first_or_second, 3);
  EXPECT_DOUBLE_EQ(repeat_rates(c).first, 0.4);
  EXPECT_DOUBLE_EQ(repeat_rates(c).first_or_second, 0.6);
  // first choices 0,0,2,3,1,1 → Σp² = (4+1+1+4)/36; shares of the 12 assignments.
  EXPECT_NEAR(independent_rates(c, 8).first, 10.0 / 36, 1e-12);
  const std::vector<double> expect = {3 / 12.0, 4 / 12.0, 2 / 12.0, 2 / 12.0, 1 / 12.0, 0, 0, 0};
  const auto got = shares(c.chosen_counts);
  for (size_t e = 0; e < 8; ++e) EXPECT_DOUBLE_EQ(got[e], expect[e]) << e;
  // Inclusion–exclusion by hand: m = (3,4,2,2,1,0,0,0)/6; sets {0,1}×3, {2,3}×2, {1,4}×1.
  const double singles = (9 + 16 + 4 + 4 + 1) / 36.0, doubles = (9 + 4 + 1) / 36.0;
  EXPECT_NEAR(independent_rates(c, 8).first_or_second, singles - doubles, 1e-12);
}

TEST(RoutingStats, TopKDiffersFromFirstOrSecondWhenKIsThree) {
  Synthetic s(6, 3);
  s.window({{0, 1, 2}, {3, 4, 2}, {4, 3, 5}});  // share only a third choice; then a swapped pair
  const Rates r = repeat_rates(compute_stats(s.t).at(0, 0));
  EXPECT_DOUBLE_EQ(r.first, 0.0);
  EXPECT_DOUBLE_EQ(r.first_or_second, 0.5);
  EXPECT_DOUBLE_EQ(r.top_k, 1.0);
}

TEST(RoutingStats, PairsStayInsideWindowsAndSkipBos) {
  Synthetic s(8, 2);
  s.window({{0, 1}, {0, 1}}, 0, /*first_token=*/1);  // token ids 1, 2: the first is "BOS"
  s.window({{0, 1}, {0, 1}}, 0, 1);
  RoutingStats st = compute_stats(s.t);
  EXPECT_EQ(st.at(0, 0).tokens, 4);
  EXPECT_EQ(st.at(0, 0).pairs, 2);  // not 3: the windows do not join
  st = compute_stats(s.t, /*skip_token=*/1);
  EXPECT_EQ(st.at(0, 0).tokens, 2);
  EXPECT_EQ(st.at(0, 0).pairs, 0);
  // A gap in positions (a token not recorded) breaks the pair too.
  Synthetic g(8, 2);
  g.window({{0, 1}, {0, 1}, {0, 1}});
  g.t.pos[2] = 5;
  EXPECT_EQ(compute_stats(g.t).at(0, 0).pairs, 1);
}

TEST(RoutingStats, DomainsArePooledAndDivergenceIsMeasured) {
  Synthetic s(4, 2);
  s.t.domains = {"a", "b"};
  for (int w = 0; w < 2; ++w) s.window({{0, 1}, {1, 0}, {0, 1}}, 0);
  for (int w = 0; w < 2; ++w) s.window({{2, 3}, {2, 3}, {3, 2}}, 1);
  const RoutingStats st = compute_stats(s.t);
  EXPECT_EQ(st.at(0, 0).tokens, 6);
  EXPECT_EQ(st.at(1, 0).tokens, 6);
  EXPECT_EQ(st.pooled(0).tokens, 12);
  EXPECT_EQ(st.pooled(0).pairs, 8);
  EXPECT_DOUBLE_EQ(repeat_rates(st.at(0, 0)).first, 0.0);
  EXPECT_DOUBLE_EQ(repeat_rates(st.at(1, 0)).first, 0.5);
  EXPECT_DOUBLE_EQ(repeat_rates(st.pooled(0)).first, 0.25);
  // Independent-token nulls: each domain's first choices are ⅔ one expert, ⅓ another → Σp² = 5/9;
  // the pooled null weights the domains (pairs never cross them), unlike the mixture's own 5/18.
  EXPECT_NEAR(independent_rates(st.at(0, 0), 4).first, 5.0 / 9, 1e-12);
  EXPECT_NEAR(pooled_independent_rates(st, 0).first, 5.0 / 9, 1e-12);
  EXPECT_NEAR(independent_rates(st.pooled(0), 4).first, 5.0 / 18, 1e-12);
  const LayerDivergence d = layer_divergence(st, 0);
  EXPECT_NEAR(d.max_pairwise, 1.0, 1e-12);  // disjoint experts: the maximum, one bit
  EXPECT_EQ(d.pair_a, 0);
  EXPECT_EQ(d.pair_b, 1);
  // Against the pooled (¼, ¼, ¼, ¼): H(⅜, ⅜, ⅛, ⅛) − (H(a) + H(pooled)) / 2 = H(M) − (1 + 2) / 2.
  const double hm = -(0.75 * std::log2(0.375) + 0.25 * std::log2(0.125));
  EXPECT_NEAR(d.vs_pooled[0], hm - 1.5, 1e-12);
  EXPECT_NEAR(d.split_half[0], 0.0, 1e-12);  // both windows of a domain route alike
  EXPECT_NEAR(d.split_half[1], 0.0, 1e-12);
}

TEST(RoutingStats, JensenShannonKnownValues) {
  EXPECT_NEAR(js_divergence({0.2, 0.3, 0.5}, {0.2, 0.3, 0.5}), 0.0, 1e-15);
  EXPECT_NEAR(js_divergence({1, 0}, {0, 1}), 1.0, 1e-15);
  // H(0.75, 0.25) − (H(1, 0) + H(0.5, 0.5)) / 2
  const double h = -(0.75 * std::log2(0.75) + 0.25 * std::log2(0.25));
  EXPECT_NEAR(js_divergence({1, 0}, {0.5, 0.5}), h - 0.5, 1e-12);
  EXPECT_TRUE(std::isnan(js_divergence({kNaN, kNaN}, {0.5, 0.5})));
}

// ---- the random baselines ----

TEST(RoutingBaselines, FormulasMatchThePaper) {
  const Rates r = uniform_baselines(8, 2);
  EXPECT_DOUBLE_EQ(r.first, 0.125);
  EXPECT_NEAR(r.first_or_second, 1 - 6.0 / 8 * 5.0 / 7, 1e-15);  // the paper's "≈ 46 %"
  EXPECT_NEAR(r.first_or_second, 0.4643, 1e-4);
  EXPECT_DOUBLE_EQ(r.top_k, r.first_or_second);
  EXPECT_DOUBLE_EQ(uniform_baselines(8, 1).first_or_second, 0.125);  // top-1: first choice only
  EXPECT_NEAR(uniform_baselines(4, 3).first_or_second, 1 - 1.0 / 6, 1e-15);
  EXPECT_DOUBLE_EQ(uniform_baselines(4, 3).top_k, 1.0);  // two 3-sets of 4 always meet
}

// The formulas against a seeded simulation of independent uniformly random routing, through the
// same statistics code (so the definitions and the formulas are checked together).
TEST(RoutingBaselines, MonteCarloAgreesWithinHalfAPoint) {
  for (auto [n, k] : std::vector<std::pair<int, int>>{{8, 2}, {8, 1}, {4, 3}, {16, 4}, {64, 6}, {128, 8}}) {
    std::mt19937_64 rng(uint64_t(1000 * n + k));
    Synthetic s(n, k);
    std::vector<std::vector<int>> tokens;
    for (int i = 0; i < 200000; ++i) tokens.push_back(random_top_k(rng, n, k));
    s.window(tokens);
    const RoutingStats st = compute_stats(s.t);
    const Rates sim = repeat_rates(st.at(0, 0)), formula = uniform_baselines(n, k);
    EXPECT_NEAR(sim.first, formula.first, 0.005) << n << "/" << k;
    EXPECT_NEAR(sim.first_or_second, formula.first_or_second, 0.005) << n << "/" << k;
    EXPECT_NEAR(sim.top_k, formula.top_k, 0.005) << n << "/" << k;
    // With uniform routing the independent-token baseline is the uniform one.
    const Rates ind = independent_rates(st.at(0, 0), n);
    EXPECT_NEAR(ind.first, formula.first, 0.005) << n << "/" << k;
    EXPECT_NEAR(ind.first_or_second, formula.first_or_second, 0.005) << n << "/" << k;
  }
}

// The independent-token baseline on skewed routing: draws without replacement from unequal
// expert probabilities, independent between tokens, must repeat as often as the formula says.
TEST(RoutingBaselines, IndependentBaselineMatchesSkewedSimulation) {
  const std::vector<double> w = {8, 4, 2, 1, 1, 1, 0.5, 0.5};
  std::mt19937_64 rng(7);
  Synthetic s(8, 2);
  std::vector<std::vector<int>> tokens;
  for (int i = 0; i < 200000; ++i) {
    std::discrete_distribution<int> first(w.begin(), w.end());
    const int a = first(rng);
    std::vector<double> rest = w;
    rest[size_t(a)] = 0;
    std::discrete_distribution<int> second(rest.begin(), rest.end());
    tokens.push_back({a, second(rng)});
  }
  s.window(tokens);
  const RoutingStats st = compute_stats(s.t);
  const Cell& c = st.at(0, 0);
  const Rates sim = repeat_rates(c), ind = independent_rates(c, 8);
  EXPECT_NEAR(sim.first, ind.first, 0.005);
  EXPECT_NEAR(sim.first_or_second, ind.first_or_second, 0.005);
  EXPECT_GT(ind.first, 0.2);  // far above the uniform 12.5 %: the skew is what it measures
}

// ---- the observer on real models ----

class RoutingObserverOnModel : public ::testing::TestWithParam<std::string> {};

TEST_P(RoutingObserverOnModel, RecordsEveryLayerOfEveryToken) {
  const std::string path = fixtures_dir() + "/" + GetParam();
  REQUIRE_PATH(path);
  const auto model = Model::load(path);
  const Config& c = model->config();
  const auto ids = model->tokenizer().encode("def f(self):\n    return self.x + 1  # routing", true);
  ASSERT_GE(ids.size(), 10u);
  // The same window evaluated in one batch and in batches of 4: the trace must not care.
  RouteTrace traces[2];
  for (int pass = 0; pass < 2; ++pass) {
    TraceRecorder rec(c, {"code"});
    Session s(*model, {64, pass == 0 ? 64 : 4, 2});
    s.set_observer(&rec);
    rec.begin_window(0);
    s.eval(ids);
    traces[pass] = rec.take();
  }
  const RouteTrace& t = traces[0];
  const int64_t n = int64_t(ids.size()), k = c.n_experts_used;
  ASSERT_EQ(t.rows(), n);
  ASSERT_EQ(int64_t(t.experts.size()), n * c.n_layers * k);
  for (int64_t r = 0; r < n; ++r) {
    EXPECT_EQ(t.token[size_t(r)], ids[size_t(r)]);
    EXPECT_EQ(t.pos[size_t(r)], r);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const uint16_t* e = t.experts_at(r, l);
      const float* w = t.weights_at(r, l);
      float sum = 0;
      for (int64_t x = 0; x < k; ++x) {
        EXPECT_LT(e[x], c.n_experts);
        for (int64_t y = 0; y < x; ++y) EXPECT_NE(e[x], e[y]);
        if (x > 0) {
          EXPECT_LE(w[x], w[x - 1]);  // rank order
        }
        sum += w[x];
      }
      EXPECT_NEAR(sum, 1.0f, 1e-5f) << "row " << r << " layer " << l;
    }
  }
  EXPECT_EQ(traces[0], traces[1]);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RoutingObserverOnModel,
                         ::testing::Values("gguf/tiny-f32.gguf", "hf/odd"),
                         [](const auto& info) { return std::string(info.index == 0 ? "tiny_gguf" : "odd_top3"); });

TEST(RoutingObserver, RejectsMisuse) {
  const std::string path = fixtures_dir() + "/gguf/tiny-f32.gguf";
  REQUIRE_PATH(path);
  const auto model = Model::load(path);
  TraceRecorder rec(model->config(), {"x"});
  Session s(*model, {16, 16, 1});
  s.set_observer(&rec);
  EXPECT_THROW(s.eval({1, 2, 3}), Error);  // no begin_window()
  EXPECT_THROW(rec.begin_window(1), Error);  // no such domain
  const std::string dense = fixtures_dir() + "/gguf/tiny-dense-f32.gguf";
  REQUIRE_PATH(dense);
  EXPECT_THROW(TraceRecorder(Model::load(dense)->config(), {"x"}), Error);
}

// ---- the trace file ----

TEST(RoutingTrace, FileRoundTripsAndRejectsDamage) {
  Synthetic s(8, 2);
  s.t.n_layers = 1;
  s.t.domains = {"prose", "code ünïcode"};
  s.window({{0, 1}, {7, 6}, {3, 4}}, 0);
  s.window({{5, 2}, {5, 1}}, 1);
  s.t.weights[1] = 0.25f;
  const std::string dir = temp_dir("trace");
  const std::string path = dir + "/trace.bin";
  write_trace(path, s.t);
  EXPECT_EQ(fs::file_size(path), 36u + (4 + 5) + (4 + 14) + 5u * (16 + 6 * 2));
  EXPECT_EQ(read_trace(path), s.t);

  const std::string bytes = slurp(path);
  auto damaged = [&](const std::string& b) {
    std::ofstream(dir + "/bad.bin", std::ios::binary) << b;
    return dir + "/bad.bin";
  };
  EXPECT_THROW(read_trace(damaged(bytes.substr(0, bytes.size() - 1))), Error);  // truncated
  EXPECT_THROW(read_trace(damaged(bytes + "x")), Error);                         // trailing bytes
  EXPECT_THROW(read_trace(damaged("NOTATRACE" + bytes.substr(9))), Error);       // magic
  std::string bad_expert = bytes;
  bad_expert[bytes.size() - 28 + 16] = char(9);  // the last record's first expert: 9 ≥ 8 experts
  EXPECT_THROW(read_trace(damaged(bad_expert)), Error);
  EXPECT_THROW(read_trace(dir + "/missing.bin"), Error);
}

// ---- the command end to end ----

TEST(RoutingCli, WritesEveryOutputOnATinyCorpus) {
  const std::string model = fixtures_dir() + "/gguf/tiny-f32.gguf";
  REQUIRE_PATH(model);
  const std::string dir = temp_dir("cli");
  fs::create_directories(dir + "/code");
  std::ofstream(dir + "/prose.txt") << "The cat sat on the mat. It was a sunny day, and the birds sang.\n";
  std::ofstream(dir + "/code/a.py") << "def f(self, x):\n    return self.y + x\n\nclass A:\n    pass\n";
  std::ofstream(dir + "/code/b.py") << "import os\nfor i in range(10):\n    print(i, os.sep)\n";
  const std::string out = dir + "/out";
  const std::string cmd = "timeout 120 '" + mixtral_bin() + "' routes -m '" + model + "' --corpus prose='" + dir +
                          "/prose.txt' --corpus code='" + dir + "/code' --window 8 --layers 0,1 -t 2 --out '" + out +
                          "' >'" + dir + "/stdout' 2>'" + dir + "/stderr'";
  const int raw = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(raw) && WEXITSTATUS(raw) == 0) << slurp(dir + "/stderr");
  EXPECT_NE(slurp(dir + "/stderr").find("tok/s"), std::string::npos);  // the progress line

  for (const char* f : {"stats.json", "routing.md", "routing.html", "experts_layer0.svg", "experts_layer1.svg",
                        "repeats_first.svg", "repeats_first_or_second.svg", "trace.bin"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  const auto j = nlohmann::json::parse(slurp(out + "/stats.json"));
  EXPECT_EQ(j["n_experts"], 8);
  EXPECT_EQ(j["k"], 2);
  EXPECT_DOUBLE_EQ(j["uniform_baseline"]["first"].get<double>(), 0.125);
  ASSERT_EQ(j["domains"].size(), 2u);
  EXPECT_EQ(j["domains"][0]["name"], "prose");
  EXPECT_EQ(j["domains"][1]["sources"].size(), 2u);  // both files of the directory
  ASSERT_EQ(j["layers"].size(), 2u);

  // The trace holds every evaluated token (text + one BOS per window of 8); the statistics
  // recomputed from it agree with stats.json.
  const RouteTrace t = read_trace(out + "/trace.bin");
  const int64_t prose = j["domains"][0]["tokens"], code = j["domains"][1]["tokens"];
  EXPECT_GT(prose, 10);
  EXPECT_EQ(t.rows(), prose + code + (prose + 6) / 7 + (code + 6) / 7);
  const RoutingStats st = compute_stats(t, 1);
  EXPECT_EQ(st.pooled(0).tokens, prose + code);
  EXPECT_DOUBLE_EQ(j["layers"][1]["all"]["repeat"]["first"].get<double>(), repeat_rates(st.pooled(1)).first);

  const std::string md = slurp(out + "/routing.md"), html = slurp(out + "/routing.html");
  EXPECT_NE(md.find("| domain | tokens | First choice L0 | L1 | First or second L0 | L1 |"), std::string::npos);
  EXPECT_NE(md.find("| uniform random |  | 12.5 | 12.5 | 46.4 | 46.4 |"), std::string::npos);
  EXPECT_NE(html.find("<span class=\"e"), std::string::npos);
  EXPECT_NE(html.find("self"), std::string::npos);
  EXPECT_EQ(slurp(out + "/experts_layer0.svg").rfind("<svg", 0), 0u);
}

TEST(RoutingCli, BadArgumentsFailWithOneLine) {
  const std::string model = fixtures_dir() + "/gguf/tiny-f32.gguf";
  REQUIRE_PATH(model);
  const std::string dir = temp_dir("cli-bad");
  std::ofstream(dir + "/t.txt") << "hello\n";
  std::ofstream(dir + "/latin1.txt") << "caf\xe9\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--corpus nonsense", "NAME=PATH"},
      {"--corpus a=" + dir + "/missing", "missing"},
      {"--corpus a=" + dir + "/t.txt --layers 2", "--layers"},
      {"--corpus a=" + dir + "/t.txt --window 1", "--window"},
      {"--corpus a=" + dir + "/latin1.txt", "latin1.txt"},
  };
  for (const auto& [args, needle] : cases) {
    const std::string cmd = "timeout 60 '" + mixtral_bin() + "' routes -m '" + model + "' --out '" + dir + "/o' " +
                            args + " >/dev/null 2>'" + dir + "/err'";
    const int raw = std::system(cmd.c_str());
    EXPECT_TRUE(WIFEXITED(raw) && WEXITSTATUS(raw) == 1) << args;
    const std::string err = slurp(dir + "/err");
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << args << ": " << err;
    EXPECT_NE(err.find(needle), std::string::npos) << args << ": " << err;
  }
}

// The per-layer LRU replay that predicts an expert cache's hit rate, on a sequence worked by hand.
TEST(RoutingStats, LruHitRateReplaysAPerLayerCache) {
  analysis::RouteTrace t;
  t.n_layers = 2;
  t.n_experts = 4;
  t.k = 1;
  // layer 0: 0 1 0 1 2 0    layer 1: always expert 3
  const uint16_t l0[] = {0, 1, 0, 1, 2, 0};
  for (int i = 0; i < 6; ++i) {
    t.window.push_back(0);
    t.token.push_back(i);
    t.pos.push_back(i);
    t.domain.push_back(0);
    t.experts.push_back(l0[i]);
    t.experts.push_back(3);
    t.weights.push_back(1.f);
    t.weights.push_back(1.f);
  }
  // 2 slots: layer 0 hits at uses 3 and 4 (2 of 6); layer 1 hits 5 of 6.
  EXPECT_DOUBLE_EQ(analysis::lru_hit_rate(t, 2), 7.0 / 12);
  // 3 slots: layer 0 also keeps 0 when 2 arrives: 3 of 6.
  EXPECT_DOUBLE_EQ(analysis::lru_hit_rate(t, 3), 8.0 / 12);
  EXPECT_DOUBLE_EQ(analysis::lru_hit_rate(t, 1), 5.0 / 12);  // layer 0 never repeats back to back
}
