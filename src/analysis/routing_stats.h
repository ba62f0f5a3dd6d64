// The statistics of §5 of the Mixtral paper ("Routing analysis"), computed from a RouteTrace.
//
// Consecutive pairs: tokens t and t+1 of the same window (positions p and p+1). Pairs never
// cross a window boundary. Tokens equal to `skip_token` (the BOS that opens every window) are
// evaluated by the model but counted nowhere.
//
// Repetition rates (Table 5), per domain and layer, over the consecutive pairs:
//   first            t+1's first choice equals t's first choice.
//   first_or_second  the sets of the first two choices of t and of t+1 share at least one expert.
//                    This is the reading that gives the paper's random value 1 − (6/8)(5/7) ≈ 46 %
//                    for 8 experts, top-2: whatever t's pair is, a uniformly random pair for t+1
//                    avoids both of its experts with probability C(6,2)/C(8,2) = (6/8)(5/7). (The
//                    other reading, "t+1's first choice is one of t's two", would be 2/8 = 25 %.)
//                    With k = 1 the "set" is the first choice alone, so this equals `first`.
//   top_k            the whole top-k sets share an expert; the same as first_or_second when k ≤ 2.
//
// Baselines:
//   uniform      each token's top-k is an ordered, uniformly random k-subset of the n experts,
//                independent of every other token: first = 1/n; two random j-subsets intersect
//                with probability 1 − C(n−j, j)/C(n, j) = 1 − Π_{i<j} (n−j−i)/(n−i).
//   independent  tokens independent, each drawn from the cell's own observed routing
//                distribution (the model's load imbalance kept, temporal order destroyed):
//                first = Σ_e p_e²; first_or_second by inclusion–exclusion over S ∩ S′:
//                  P(S ∩ S′ ≠ ∅) = Σ_e m_e² − Σ_{a<b} m_ab²,
//                m_e = P(e ∈ S), m_ab = P(S = {a, b}), S the set of the first two choices.
//
// Expert distribution (Figure 7): each expert's share of the top-k assignments,
// count(e ∈ top-k) / (k · tokens) — uniform routing gives 1/n — and its first-choice share.
// Divergence between domains: Jensen–Shannon divergence, in bits (0 = same distribution,
// 1 = disjoint experts), of the top-k shares. Its sampling-noise floor is measured, not assumed:
// each domain's even-numbered windows against its odd-numbered windows ("split half").
#pragma once
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include "analysis/routing_trace.h"

namespace mixtral::analysis {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Rates {
  double first = kNaN, first_or_second = kNaN, top_k = kNaN;  // fractions in [0, 1]; NaN: undefined
};

// The counts of one (domain, layer) cell; the pooled cell sums all domains.
struct Cell {
  int64_t tokens = 0;
  int64_t pairs = 0;                  // consecutive pairs
  int64_t repeat_first = 0;           // pairs counted by each repetition rate
  int64_t repeat_first_or_second = 0;
  int64_t repeat_top_k = 0;
  std::vector<int64_t> first_counts;   // [n_experts] tokens whose first choice is e
  std::vector<int64_t> top2_counts;    // [n_experts] tokens with e among the first two choices
  std::vector<int64_t> chosen_counts;  // [n_experts] tokens with e among the top-k
  std::array<std::vector<int64_t>, 2> chosen_by_half;  // chosen_counts of even / odd windows
  std::unordered_map<uint32_t, int64_t> top2_sets;     // a·n + b (a < b) → tokens whose first two are {a, b}
};

struct RoutingStats {
  int64_t n_layers = 0, n_experts = 0, k = 0;
  std::vector<std::string> domains;
  std::vector<Cell> cells;  // [n_domains + 1][n_layers]; domain index n_domains = all pooled

  int64_t n_domains() const { return int64_t(domains.size()); }
  const Cell& at(int64_t domain, int64_t layer) const { return cells[size_t(domain * n_layers + layer)]; }
  const Cell& pooled(int64_t layer) const { return at(n_domains(), layer); }
  int64_t domain_tokens(int64_t domain) const { return at(domain, 0).tokens; }
};

// Counts everything in one pass over the trace. skip_token < 0 skips nothing.
RoutingStats compute_stats(const RouteTrace& trace, int32_t skip_token = -1);

Rates repeat_rates(const Cell& c);
Rates independent_rates(const Cell& c, int64_t n_experts);  // top_k is left NaN
// The null for the pooled repetition rate: each domain's independent rate weighted by its pairs
// (pairs never cross domains, so the pooled distribution's own rate would be too low).
Rates pooled_independent_rates(const RoutingStats& s, int64_t layer);
Rates uniform_baselines(int64_t n_experts, int64_t k);
// 1 − C(n−j, j)/C(n, j): two independent uniformly random j-subsets of n share an element.
double random_sets_intersect(int64_t n, int64_t j);

// What temporal locality predicts for an expert cache (--memory-budget): the hit rate of a
// per-layer LRU cache holding `slots_per_layer` experts of each layer, replaying the trace's
// decisions token by token in evaluation order (every top-k use is one access). Uniform,
// independent routing would give slots_per_layer / n_experts.
double lru_hit_rate(const RouteTrace& trace, int64_t slots_per_layer);

// counts / (sum of counts); all NaN when the sum is 0.
std::vector<double> shares(const std::vector<int64_t>& counts);
// Jensen–Shannon divergence in bits; NaN if either is NaN.
double js_divergence(const std::vector<double>& p, const std::vector<double>& q);

// How different the domains' expert distributions are at one layer.
struct LayerDivergence {
  std::vector<double> vs_pooled;   // [domains] JSD(domain, all domains pooled)
  std::vector<double> split_half;  // [domains] JSD(even windows, odd windows): the noise floor
  double max_pairwise = kNaN;      // largest JSD between two domains …
  int64_t pair_a = -1, pair_b = -1;  // … and which
};
LayerDivergence layer_divergence(const RoutingStats& s, int64_t layer);

}  // namespace mixtral::analysis
