#include "analysis/routing_stats.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace mixtral::analysis {

namespace {

bool share_one(const uint16_t* a, const uint16_t* b, int64_t j) {
  for (int64_t x = 0; x < j; ++x)
    for (int64_t y = 0; y < j; ++y)
      if (a[x] == b[y]) return true;
  return false;
}

void add_counts(std::vector<int64_t>& to, const std::vector<int64_t>& from) {
  for (size_t i = 0; i < to.size(); ++i) to[i] += from[i];
}

double ratio(int64_t num, int64_t den) { return den > 0 ? double(num) / double(den) : kNaN; }

}  // namespace

RoutingStats compute_stats(const RouteTrace& t, int32_t skip_token) {
  RoutingStats s;
  s.n_layers = t.n_layers;
  s.n_experts = t.n_experts;
  s.k = t.k;
  s.domains = t.domains;
  const int64_t L = t.n_layers, n = t.n_experts, k = t.k, D = s.n_domains();
  const int64_t j2 = std::min<int64_t>(k, 2);  // size of the "first or second" set
  s.cells.resize(size_t((D + 1) * L));
  for (Cell& c : s.cells) {
    c.first_counts.assign(size_t(n), 0);
    c.top2_counts.assign(size_t(n), 0);
    c.chosen_counts.assign(size_t(n), 0);
    for (auto& h : c.chosen_by_half) h.assign(size_t(n), 0);
  }
  auto cell = [&](int64_t d, int64_t l) -> Cell& { return s.cells[size_t(d * L + l)]; };

  for (int64_t r = 0; r < t.rows(); ++r) {
    if (t.token[size_t(r)] == skip_token) continue;
    const int64_t d = t.domain[size_t(r)];
    if (d >= D) fail("routing stats", "domain index out of range");
    // The next row is t+1 of the same window only if the position advances by one.
    const bool paired = r + 1 < t.rows() && t.window[size_t(r + 1)] == t.window[size_t(r)] &&
                        t.pos[size_t(r + 1)] == t.pos[size_t(r)] + 1 && t.token[size_t(r + 1)] != skip_token;
    for (int64_t l = 0; l < L; ++l) {
      Cell& c = cell(d, l);
      const uint16_t* e = t.experts_at(r, l);
      ++c.tokens;
      ++c.first_counts[e[0]];
      for (int64_t x = 0; x < j2; ++x) ++c.top2_counts[e[x]];
      for (int64_t x = 0; x < k; ++x) {
        ++c.chosen_counts[e[x]];
        ++c.chosen_by_half[t.window[size_t(r)] % 2][e[x]];
      }
      if (j2 == 2) {
        const uint32_t a = std::min(e[0], e[1]), b = std::max(e[0], e[1]);
        ++c.top2_sets[a * uint32_t(n) + b];
      }
      if (paired) {
        const uint16_t* f = t.experts_at(r + 1, l);
        ++c.pairs;
        c.repeat_first += e[0] == f[0];
        c.repeat_first_or_second += share_one(e, f, j2);
        c.repeat_top_k += share_one(e, f, k);
      }
    }
  }
  // The pooled row: every domain's counts added.
  for (int64_t l = 0; l < L; ++l) {
    Cell& p = cell(D, l);
    for (int64_t d = 0; d < D; ++d) {
      const Cell& c = cell(d, l);
      p.tokens += c.tokens;
      p.pairs += c.pairs;
      p.repeat_first += c.repeat_first;
      p.repeat_first_or_second += c.repeat_first_or_second;
      p.repeat_top_k += c.repeat_top_k;
      add_counts(p.first_counts, c.first_counts);
      add_counts(p.top2_counts, c.top2_counts);
      add_counts(p.chosen_counts, c.chosen_counts);
      for (int h = 0; h < 2; ++h) add_counts(p.chosen_by_half[size_t(h)], c.chosen_by_half[size_t(h)]);
      for (const auto& [key, count] : c.top2_sets) p.top2_sets[key] += count;
    }
  }
  return s;
}

Rates repeat_rates(const Cell& c) {
  return {ratio(c.repeat_first, c.pairs), ratio(c.repeat_first_or_second, c.pairs), ratio(c.repeat_top_k, c.pairs)};
}

Rates independent_rates(const Cell& c, int64_t n) {
  Rates r;
  if (c.tokens == 0) return r;
  const double T = double(c.tokens);
  double first = 0, singles = 0, doubles = 0;
  for (int64_t e = 0; e < n; ++e) {
    const double p = double(c.first_counts[size_t(e)]) / T;  // P(first choice = e)
    const double m = double(c.top2_counts[size_t(e)]) / T;   // P(e among the first two)
    first += p * p;
    singles += m * m;
  }
  for (const auto& [key, count] : c.top2_sets) {
    const double m = double(count) / T;  // P(first two = {a, b})
    doubles += m * m;
  }
  r.first = first;
  r.first_or_second = singles - doubles;
  return r;
}

Rates pooled_independent_rates(const RoutingStats& s, int64_t layer) {
  Rates r;
  double first = 0, second = 0;
  int64_t pairs = 0;
  for (int64_t d = 0; d < s.n_domains(); ++d) {
    const Cell& c = s.at(d, layer);
    if (c.pairs == 0) continue;
    const Rates ind = independent_rates(c, s.n_experts);
    first += double(c.pairs) * ind.first;
    second += double(c.pairs) * ind.first_or_second;
    pairs += c.pairs;
  }
  if (pairs > 0) r.first = first / double(pairs), r.first_or_second = second / double(pairs);
  return r;
}

double random_sets_intersect(int64_t n, int64_t j) {
  if (j <= 0 || n <= 0) return 0;
  // C(n−j, j)/C(n, j) = Π_{i<j} (n−j−i)/(n−i); a factor ≤ 0 means two j-sets cannot be disjoint.
  double disjoint = 1;
  for (int64_t i = 0; i < j; ++i) disjoint *= std::max<double>(0, double(n - j - i)) / double(n - i);
  return 1 - disjoint;
}

Rates uniform_baselines(int64_t n, int64_t k) {
  return {1.0 / double(n), random_sets_intersect(n, std::min<int64_t>(k, 2)), random_sets_intersect(n, k)};
}

std::vector<double> shares(const std::vector<int64_t>& counts) {
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  std::vector<double> p(counts.size(), kNaN);
  if (total > 0)
    for (size_t i = 0; i < counts.size(); ++i) p[i] = double(counts[i]) / double(total);
  return p;
}

double js_divergence(const std::vector<double>& p, const std::vector<double>& q) {
  double js = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (std::isnan(p[i]) || std::isnan(q[i])) return kNaN;
    const double m = 0.5 * (p[i] + q[i]);
    if (p[i] > 0) js += 0.5 * p[i] * std::log2(p[i] / m);
    if (q[i] > 0) js += 0.5 * q[i] * std::log2(q[i] / m);
  }
  return std::max(0.0, js);  // rounding can leave −1e−17 for identical inputs
}

LayerDivergence layer_divergence(const RoutingStats& s, int64_t layer) {
  LayerDivergence d;
  const int64_t D = s.n_domains();
  const auto pooled = shares(s.pooled(layer).chosen_counts);
  std::vector<std::vector<double>> dist;
  for (int64_t a = 0; a < D; ++a) {
    const Cell& c = s.at(a, layer);
    dist.push_back(shares(c.chosen_counts));
    d.vs_pooled.push_back(js_divergence(dist.back(), pooled));
    d.split_half.push_back(js_divergence(shares(c.chosen_by_half[0]), shares(c.chosen_by_half[1])));
  }
  for (int64_t a = 0; a < D; ++a)
    for (int64_t b = a + 1; b < D; ++b) {
      const double js = js_divergence(dist[size_t(a)], dist[size_t(b)]);
      if (!std::isnan(js) && (std::isnan(d.max_pairwise) || js > d.max_pairwise)) {
        d.max_pairwise = js;
        d.pair_a = a;
        d.pair_b = b;
      }
    }
  return d;
}

double lru_hit_rate(const RouteTrace& trace, int64_t slots_per_layer) {
  if (trace.rows() == 0 || slots_per_layer <= 0) return 0;
  // Per layer, the cached experts, most recently used last.
  std::vector<std::vector<uint16_t>> cached(size_t(trace.n_layers));
  int64_t hits = 0, uses = 0;
  for (int64_t row = 0; row < trace.rows(); ++row)
    for (int64_t l = 0; l < trace.n_layers; ++l) {
      auto& c = cached[size_t(l)];
      const uint16_t* e = trace.experts_at(row, l);
      for (int64_t r = 0; r < trace.k; ++r) {
        ++uses;
        const auto it = std::find(c.begin(), c.end(), e[r]);
        if (it != c.end()) {
          ++hits;
          c.erase(it);
        } else if (int64_t(c.size()) == slots_per_layer) {
          c.erase(c.begin());
        }
        c.push_back(e[r]);
      }
    }
  return double(hits) / double(uses);
}

}  // namespace mixtral::analysis
