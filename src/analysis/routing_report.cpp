#include "analysis/routing_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace mixtral::analysis {

namespace {

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}
// A percentage with one decimal, or an en dash where the value is undefined.
std::string pct(double x) { return std::isnan(x) ? "–" : fmt("%.1f", 100 * x); }
std::string num(double x, const char* f = "%.4f") { return std::isnan(x) ? "–" : fmt(f, x); }

std::string escape(std::string_view s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

// Ten well-separated colours (Tableau 10) for domains; past ten, evenly spaced hues.
std::string domain_colour(int64_t d, int64_t n) {
  static const char* kTab10[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                 "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
  if (n <= 10) return kTab10[d];
  return "hsl(" + std::to_string(int(360.0 * double(d) / double(n))) + ",60%,50%)";
}
// Light backgrounds, one hue per expert, so that black text stays readable on every colour.
std::string expert_colour(int64_t e, int64_t n) {
  return "hsl(" + std::to_string(int(360.0 * double(e) / double(n))) + ",75%,78%)";
}

nlohmann::json rates_json(const Rates& r, bool with_top_k = true) {
  nlohmann::json j = {{"first", r.first}, {"first_or_second", r.first_or_second}};
  if (with_top_k) j["top_k"] = r.top_k;
  return j;  // NaN becomes null
}

nlohmann::json cell_json(const Cell& c, int64_t n) {
  return {{"tokens", c.tokens},
          {"pairs", c.pairs},
          {"repeat", rates_json(repeat_rates(c))},
          {"independent", rates_json(independent_rates(c, n), false)},
          {"share_top_k", shares(c.chosen_counts)},
          {"share_first", shares(c.first_counts)}};
}

// Appends " value |": a markdown table cell. (Built by appending: GCC 12 at -O3 raises a false
// -Wrestrict on `"literal" + std::string&&`.)
void cell(std::string& md, const std::string& value) {
  md += ' ';
  md += value;
  md += " |";
}

std::string layer_list(const std::vector<int64_t>& layers) {
  std::string s;
  for (int64_t l : layers) s += (s.empty() ? "" : ", ") + std::to_string(l);
  return s;
}

// One row per domain, columns `stat` at each chosen layer: the layout of Table 5.
void table5(std::string& md, const RoutingStats& s, const ReportInfo& info, const std::vector<std::string>& stats) {
  const Rates uniform = uniform_baselines(s.n_experts, s.k);
  auto get = [](const Rates& r, const std::string& st) {
    return st == "first" ? r.first : st == "first_or_second" ? r.first_or_second : r.top_k;
  };
  md += "| domain | tokens |";
  std::string rule = "|---|---:|";
  for (const auto& st : stats)
    for (size_t i = 0; i < info.layers.size(); ++i) {
      const std::string head = st == "first" ? "First choice" : st == "first_or_second" ? "First or second" : "Any of top-k";
      cell(md, (i == 0 ? head + " L" : std::string("L")) + std::to_string(info.layers[i]));
      rule += "---:|";
    }
  md += "\n" + rule + "\n";
  auto row = [&](const std::string& name, const std::string& tokens, auto&& value) {
    md += "|";
    cell(md, name);
    cell(md, tokens);
    for (const auto& st : stats)
      for (int64_t l : info.layers) cell(md, pct(value(st, l)));
    md += "\n";
  };
  for (int64_t d = 0; d <= s.n_domains(); ++d) {
    const bool all = d == s.n_domains();
    row(all ? "**all domains**" : escape(s.domains[size_t(d)]), std::to_string(s.at(d, 0).tokens),
        [&](const std::string& st, int64_t l) { return get(repeat_rates(s.at(d, l)), st); });
  }
  row("independent tokens (all domains)", "", [&](const std::string& st, int64_t l) {
    return get(pooled_independent_rates(s, l), st);
  });
  row("uniform random", "", [&](const std::string& st, int64_t) { return get(uniform, st); });
}

// Rows = layers, columns = domains, for one statistic.
void every_layer(std::string& md, const RoutingStats& s, bool first_or_second) {
  const Rates uniform = uniform_baselines(s.n_experts, s.k);
  md += "| layer |";
  std::string rule = "|---:|";
  for (const auto& d : s.domains) {
    md += " " + escape(d) + " |";
    rule += "---:|";
  }
  md += " all | independent | uniform |\n" + rule + "---:|---:|---:|\n";
  for (int64_t l = 0; l < s.n_layers; ++l) {
    md += "| " + std::to_string(l) + " |";
    for (int64_t d = 0; d <= s.n_domains(); ++d) {
      const Rates r = repeat_rates(s.at(d, l));
      cell(md, pct(first_or_second ? r.first_or_second : r.first));
    }
    const Rates ind = pooled_independent_rates(s, l);
    md += " " + pct(first_or_second ? ind.first_or_second : ind.first) + " | " +
          pct(first_or_second ? uniform.first_or_second : uniform.first) + " |\n";
  }
}

}  // namespace

std::vector<int64_t> default_layers(int64_t n_layers) {
  std::vector<int64_t> l = {0, (n_layers - 1) / 2, n_layers - 1};
  l.erase(std::unique(l.begin(), l.end()), l.end());
  return l;
}

nlohmann::json stats_json(const RoutingStats& s, const ReportInfo& info) {
  nlohmann::json j;
  j["format"] = "mixtral-routes-stats-1";
  j["model"] = info.model;
  j["n_layers"] = s.n_layers;
  j["n_experts"] = s.n_experts;
  j["k"] = s.k;
  j["window"] = info.window;
  j["layers_shown"] = info.layers;
  j["definitions"] = {
      {"pair", "tokens t and t+1 of one window; the BOS opening each window is not counted"},
      {"first", "t+1's first-choice expert equals t's"},
      {"first_or_second", "the sets of the first two choices of t and t+1 share an expert (Table 5)"},
      {"top_k", "the full top-k sets of t and t+1 share an expert"},
      {"uniform", "every token's top-k an independent uniformly random ordered k-subset"},
      {"independent", "tokens independent, drawn from the cell's observed routing distribution; for 'all' the "
                      "domains' values weighted by their pairs"},
      {"share_top_k", "count(e in top-k) / (k * tokens); uniform 1/n"},
      {"divergence", "Jensen-Shannon divergence in bits of share_top_k"}};
  j["uniform_baseline"] = rates_json(uniform_baselines(s.n_experts, s.k));
  if (info.seconds > 0)
    j["run"] = {{"seconds", info.seconds},
                {"tokens_per_second", double(s.pooled(0).tokens) / info.seconds},
                {"threads", info.threads}};
  j["domains"] = nlohmann::json::array();
  for (int64_t d = 0; d < s.n_domains(); ++d) {
    nlohmann::json dj = {{"name", s.domains[size_t(d)]}, {"tokens", s.domain_tokens(d)}};
    if (size_t(d) < info.sources.size()) dj["sources"] = info.sources[size_t(d)];
    j["domains"].push_back(dj);
  }
  j["layers"] = nlohmann::json::array();
  for (int64_t l = 0; l < s.n_layers; ++l) {
    const LayerDivergence div = layer_divergence(s, l);
    nlohmann::json lj = {{"layer", l}, {"domains", nlohmann::json::array()}, {"all", cell_json(s.pooled(l), s.n_experts)}};
    lj["all"]["independent"] = rates_json(pooled_independent_rates(s, l), false);  // the within-domain null
    for (int64_t d = 0; d < s.n_domains(); ++d) {
      nlohmann::json cj = cell_json(s.at(d, l), s.n_experts);
      cj["name"] = s.domains[size_t(d)];
      cj["js_vs_pooled"] = div.vs_pooled[size_t(d)];
      cj["js_split_half"] = div.split_half[size_t(d)];
      lj["domains"].push_back(cj);
    }
    lj["js_max_pairwise"] = {{"value", div.max_pairwise},
                             {"domains", div.pair_a < 0 ? nlohmann::json(nullptr)
                                                        : nlohmann::json({s.domains[size_t(div.pair_a)],
                                                                          s.domains[size_t(div.pair_b)]})}};
    j["layers"].push_back(lj);
  }
  return j;
}

std::string markdown_report(const RoutingStats& s, const ReportInfo& info) {
  const Rates uniform = uniform_baselines(s.n_experts, s.k);
  std::string md = "# Routing analysis: " + escape(info.model) + "\n\n";
  md += std::to_string(s.n_experts) + " experts, top-" + std::to_string(s.k) + ", " + std::to_string(s.n_layers) +
        " layers; " + std::to_string(s.pooled(0).tokens) + " tokens in " + std::to_string(s.n_domains()) +
        " domains, evaluated in windows of " + std::to_string(info.window) +
        " tokens (KV cache reset per window; the BOS opening each window is evaluated, not counted).\n\n";
  md += "Percentages of consecutive-token pairs (t, t+1 in one window) whose expert repeats. **First choice**: "
        "the same first-choice expert. **First or second**: the two tokens' sets of first two choices share an "
        "expert (the definition behind the paper's random value 1 − (6/8)(5/7) ≈ 46 %). **Uniform random**: "
        "independent uniformly random top-" + std::to_string(s.k) + " sets of " + std::to_string(s.n_experts) +
        " experts (" + pct(uniform.first) + " % and " + pct(uniform.first_or_second) +
        " %). **Independent tokens**: each token drawn independently from the observed routing distribution "
        "(load imbalance kept, order destroyed).\n\n";
  md += "## Expert repetition, layout of Table 5 (layers " + layer_list(info.layers) + ")\n\n";
  table5(md, s, info, {"first", "first_or_second"});
  if (s.k > 2 && uniform.top_k >= 1) {
    md += "\nWith top-" + std::to_string(s.k) + " of " + std::to_string(s.n_experts) +
          " experts any two top-k sets share an expert, so the any-of-top-k rate is 100 % by construction.\n";
  } else if (s.k > 2) {
    md += "\nWith top-" + std::to_string(s.k) + ", the full top-k sets of t and t+1 sharing an expert (uniform: " +
          pct(uniform.top_k) + " %):\n\n";
    table5(md, s, info, {"top_k"});
  }
  md += "\n## Every layer: first choice (%)\n\n";
  every_layer(md, s, false);
  md += "\n## Every layer: first or second choice (%)\n\n";
  every_layer(md, s, true);
  md += "\n## Expert distribution (Figure 7): divergence between domains\n\n"
        "Jensen–Shannon divergence (bits; 0 = same distribution, 1 = disjoint experts) of the share of top-k "
        "assignments per expert. The split-half column is each domain's even windows against its odd windows: "
        "the divergence that sampling noise alone produces at this many tokens. Between-domain values near it "
        "mean no measurable topic specialisation.\n\n"
        "| layer | largest JSD vs pooled | largest pairwise JSD | largest split-half JSD (noise) |\n"
        "|---:|---|---|---:|\n";
  for (int64_t l = 0; l < s.n_layers; ++l) {
    const LayerDivergence d = layer_divergence(s, l);
    int64_t worst = -1;
    double split = kNaN;
    for (int64_t a = 0; a < s.n_domains(); ++a) {
      const double v = d.vs_pooled[size_t(a)];
      if (!std::isnan(v) && (worst < 0 || v > d.vs_pooled[size_t(worst)])) worst = a;
      const double h = d.split_half[size_t(a)];
      if (!std::isnan(h) && (std::isnan(split) || h > split)) split = h;
    }
    md += "| " + std::to_string(l) + " | " +
          (worst < 0 ? "–" : num(d.vs_pooled[size_t(worst)]) + " (" + escape(s.domains[size_t(worst)]) + ")") + " | " +
          (d.pair_a < 0 ? "–"
                        : num(d.max_pairwise) + " (" + escape(s.domains[size_t(d.pair_a)]) + " vs " +
                              escape(s.domains[size_t(d.pair_b)]) + ")") +
          " | " + num(split) + " |\n";
  }
  for (int64_t l : info.layers) {
    md += "\n### Layer " + std::to_string(l) + ": share of top-k assignments per expert (%; uniform " +
          pct(1.0 / double(s.n_experts)) + ")\n\n";
    if (s.n_experts > 64) {
      md += "(" + std::to_string(s.n_experts) + " experts: see stats.json and experts_layer" + std::to_string(l) +
            ".svg)\n";
      continue;
    }
    md += "| domain |";
    std::string rule = "|---|";
    for (int64_t e = 0; e < s.n_experts; ++e) {
      md += " e" + std::to_string(e) + " |";
      rule += "---:|";
    }
    md += "\n" + rule + "\n";
    for (int64_t d = 0; d <= s.n_domains(); ++d) {
      md += "| " + (d == s.n_domains() ? std::string("**all domains**") : escape(s.domains[size_t(d)])) + " |";
      for (double v : shares(s.at(d, l).chosen_counts)) cell(md, pct(v));
      md += "\n";
    }
  }
  return md;
}

std::string html_page(const RouteTrace& t, const Tokenizer& tok, const ReportInfo& info) {
  const int64_t n = t.n_experts;
  std::string h = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Routing: " + escape(info.model) +
                  "</title>\n<style>\n"
                  "body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}\n"
                  ".text{font-family:monospace;white-space:pre-wrap;line-height:1.7;border:1px solid #ccc;"
                  "padding:.6em;word-break:break-all}\n"
                  ".text span{border-radius:2px}\n.legend span{padding:.1em .5em;margin-right:.3em;"
                  "font-family:monospace}\n";
  for (int64_t e = 0; e < n; ++e) h += ".e" + std::to_string(e) + "{background:" + expert_colour(e, n) + "}\n";
  h += "</style></head><body>\n<h1>First-choice experts: " + escape(info.model) + "</h1>\n";
  h += "<p>Each token's background is the colour of the expert its router ranked first at that layer (the "
       "paper's Figure 8). Hover over a token for its piece and all " +
       std::to_string(t.k) + " chosen experts with their weights. Text: the first window of each domain, up to " +
       std::to_string(info.html_tokens) + " tokens.</p>\n<p class=\"legend\">Experts: ";
  for (int64_t e = 0; e < n; ++e) h += "<span class=\"e" + std::to_string(e) + "\">" + std::to_string(e) + "</span>";
  h += "</p>\n";
  for (size_t d = 0; d < t.domains.size(); ++d) {
    // Rows of the domain's first window.
    int64_t begin = -1, end = -1;
    for (int64_t r = 0; r < t.rows(); ++r) {
      if (t.domain[size_t(r)] != d) continue;
      if (begin < 0) begin = r;
      if (t.window[size_t(r)] != t.window[size_t(begin)] || r - begin >= info.html_tokens) break;
      end = r + 1;
    }
    if (begin < 0) continue;
    h += "<h2>" + escape(t.domains[d]) + "</h2>\n";
    for (int64_t l : info.layers) {
      h += "<h3>Layer " + std::to_string(l) + "</h3>\n<div class=\"text\">";
      // A stream decoder gives each token exactly the text it completes, so the spans concatenate
      // to the decoded text (a multi-byte character split over byte pieces goes to its last piece).
      StreamDecoder dec(tok);
      for (int64_t r = begin; r < end; ++r) {
        const int32_t id = t.token[size_t(r)];
        if (tok.is_control(id)) continue;
        const std::string text = dec.feed(id);
        if (text.empty()) continue;
        const uint16_t* e = t.experts_at(r, l);
        const float* w = t.weights_at(r, l);
        std::string title = std::to_string(id) + " " + tok.piece(id) + " →";
        for (int64_t x = 0; x < t.k; ++x) title += fmt(" %.0f", e[x]) + fmt(" (%.2f)", w[x]);
        h += "<span class=\"e" + std::to_string(e[0]) + "\" title=\"" + escape(title) + "\">" + escape(text) + "</span>";
      }
      h += escape(dec.flush()) + "</div>\n";
    }
  }
  h += "</body></html>\n";
  return h;
}

std::string expert_share_svg(const RoutingStats& s, int64_t layer) {
  const int64_t D = s.n_domains(), n = s.n_experts;
  const double bw = std::clamp(120.0 / double(std::max<int64_t>(D, 1)), 2.0, 12.0), gap = 10;
  const double group = double(D) * bw + gap, left = 60, top = 40, ph = 240, legend = 190;
  const double pw = double(n) * group;
  const double W = left + pw + 20 + legend, H = std::max(top + ph + 50, top + 18.0 * double(D) + 30);
  double ymax = 1.0 / double(n);
  for (int64_t d = 0; d < D; ++d)
    for (double v : shares(s.at(d, layer).chosen_counts))
      if (!std::isnan(v)) ymax = std::max(ymax, v);
  const double step = ymax > 0.5 ? 0.1 : 0.05;
  ymax = std::ceil(ymax / step + 1e-9) * step;
  auto y = [&](double v) { return top + ph - v / ymax * ph; };
  std::string o = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fmt("%.0f", W) + "\" height=\"" +
                  fmt("%.0f", H) + "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o += "<text x=\"" + fmt("%.0f", left) + "\" y=\"20\" font-size=\"14\">Layer " + std::to_string(layer) +
       ": share of top-" + std::to_string(s.k) + " assignments per expert, by domain</text>\n";
  for (double v = 0; v <= ymax + 1e-9; v += step) {
    o += "<line x1=\"" + fmt("%.1f", left) + "\" x2=\"" + fmt("%.1f", left + pw) + "\" y1=\"" + fmt("%.1f", y(v)) +
         "\" y2=\"" + fmt("%.1f", y(v)) + "\" stroke=\"#ddd\"/>\n";
    o += "<text x=\"" + fmt("%.1f", left - 5) + "\" y=\"" + fmt("%.1f", y(v) + 4) + "\" text-anchor=\"end\">" +
         fmt("%.0f%%", 100 * v) + "</text>\n";
  }
  for (int64_t d = 0; d < D; ++d) {
    const auto p = shares(s.at(d, layer).chosen_counts);
    for (int64_t e = 0; e < n; ++e) {
      if (std::isnan(p[size_t(e)])) continue;
      const double x = left + double(e) * group + gap / 2 + double(d) * bw;
      o += "<rect x=\"" + fmt("%.1f", x) + "\" y=\"" + fmt("%.1f", y(p[size_t(e)])) + "\" width=\"" + fmt("%.1f", bw) +
           "\" height=\"" + fmt("%.1f", top + ph - y(p[size_t(e)])) + "\" fill=\"" + domain_colour(d, D) + "\"><title>" +
           escape(s.domains[size_t(d)]) + ", expert " + std::to_string(e) + ": " + pct(p[size_t(e)]) +
           " %</title></rect>\n";
    }
  }
  for (int64_t e = 0; e < n; ++e)
    o += "<text x=\"" + fmt("%.1f", left + (double(e) + 0.5) * group) + "\" y=\"" + fmt("%.1f", top + ph + 15) +
         "\" text-anchor=\"middle\">" + std::to_string(e) + "</text>\n";
  o += "<text x=\"" + fmt("%.1f", left + pw / 2) + "\" y=\"" + fmt("%.1f", top + ph + 32) +
       "\" text-anchor=\"middle\">expert</text>\n";
  o += "<line x1=\"" + fmt("%.1f", left) + "\" x2=\"" + fmt("%.1f", left + pw) + "\" y1=\"" +
       fmt("%.1f", y(1.0 / double(n))) + "\" y2=\"" + fmt("%.1f", y(1.0 / double(n))) +
       "\" stroke=\"#555\" stroke-dasharray=\"5,4\"><title>uniform 1/n</title></line>\n";
  for (int64_t d = 0; d < D; ++d) {
    const double ly = top + 18.0 * double(d);
    o += "<rect x=\"" + fmt("%.1f", left + pw + 20) + "\" y=\"" + fmt("%.1f", ly) +
         "\" width=\"12\" height=\"12\" fill=\"" + domain_colour(d, D) + "\"/><text x=\"" +
         fmt("%.1f", left + pw + 38) + "\" y=\"" + fmt("%.1f", ly + 10) + "\">" + escape(s.domains[size_t(d)]) +
         "</text>\n";
  }
  return o + "</svg>\n";
}

std::string repeats_svg(const RoutingStats& s, bool first_or_second) {
  const int64_t D = s.n_domains(), L = s.n_layers;
  const double left = 60, top = 40, ph = 240, legend = 190;
  const double pw = std::max(300.0, 18.0 * double(L));
  const double W = left + pw + 30 + legend, H = std::max(top + ph + 50, top + 18.0 * double(D + 2) + 30);
  auto x = [&](int64_t l) { return L == 1 ? left + pw / 2 : left + pw * double(l) / double(L - 1); };
  auto y = [&](double v) { return top + ph - v * ph; };
  auto value = [&](const Rates& r) { return first_or_second ? r.first_or_second : r.first; };
  std::string o = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fmt("%.0f", W) + "\" height=\"" +
                  fmt("%.0f", H) + "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o += "<text x=\"" + fmt("%.0f", left) + "\" y=\"20\" font-size=\"14\">Consecutive tokens sharing the " +
       std::string(first_or_second ? "first-or-second" : "first-choice") + " expert, per layer</text>\n";
  for (int v = 0; v <= 100; v += 10) {
    o += "<line x1=\"" + fmt("%.1f", left) + "\" x2=\"" + fmt("%.1f", left + pw) + "\" y1=\"" +
         fmt("%.1f", y(v / 100.0)) + "\" y2=\"" + fmt("%.1f", y(v / 100.0)) + "\" stroke=\"#eee\"/>\n<text x=\"" +
         fmt("%.1f", left - 5) + "\" y=\"" + fmt("%.1f", y(v / 100.0) + 4) + "\" text-anchor=\"end\">" +
         std::to_string(v) + "%</text>\n";
  }
  for (int64_t l = 0; l < L; l += std::max<int64_t>(1, L / 16))
    o += "<text x=\"" + fmt("%.1f", x(l)) + "\" y=\"" + fmt("%.1f", top + ph + 15) + "\" text-anchor=\"middle\">" +
         std::to_string(l) + "</text>\n";
  o += "<text x=\"" + fmt("%.1f", left + pw / 2) + "\" y=\"" + fmt("%.1f", top + ph + 32) +
       "\" text-anchor=\"middle\">layer</text>\n";
  const double base = value(uniform_baselines(s.n_experts, s.k));
  o += "<line x1=\"" + fmt("%.1f", left) + "\" x2=\"" + fmt("%.1f", left + pw) + "\" y1=\"" + fmt("%.1f", y(base)) +
       "\" y2=\"" + fmt("%.1f", y(base)) + "\" stroke=\"#555\" stroke-dasharray=\"5,4\"/>\n";
  // Domains in colour; all domains pooled in black, drawn last so that it stays on top.
  for (int64_t d = 0; d <= D; ++d) {
    const std::string colour = d == D ? "black" : domain_colour(d, D);
    std::string pts;
    for (int64_t l = 0; l < L; ++l) {
      const double v = value(repeat_rates(s.at(d, l)));
      if (std::isnan(v)) continue;
      pts += fmt("%.1f,", x(l)) + fmt("%.1f ", y(v));
      o += "<circle cx=\"" + fmt("%.1f", x(l)) + "\" cy=\"" + fmt("%.1f", y(v)) + "\" r=\"2.5\" fill=\"" + colour +
           "\"/>\n";
    }
    o += "<polyline fill=\"none\" stroke=\"" + colour + "\" stroke-width=\"" + (d == D ? "2.5" : "1.5") +
         "\" points=\"" + pts + "\"/>\n";
  }
  for (int64_t d = 0; d <= D + 1; ++d) {
    const double ly = top + 18.0 * double(d), lx = left + pw + 30;
    const std::string name = d < D ? escape(s.domains[size_t(d)]) : d == D ? "all domains" : "uniform random";
    if (d <= D)
      o += "<rect x=\"" + fmt("%.1f", lx) + "\" y=\"" + fmt("%.1f", ly) + "\" width=\"12\" height=\"12\" fill=\"" +
           (d == D ? std::string("black") : domain_colour(d, D)) + "\"/>";
    else
      o += "<line x1=\"" + fmt("%.1f", lx) + "\" x2=\"" + fmt("%.1f", lx + 12) + "\" y1=\"" + fmt("%.1f", ly + 6) +
           "\" y2=\"" + fmt("%.1f", ly + 6) + "\" stroke=\"#555\" stroke-dasharray=\"3,2\"/>";
    o += "<text x=\"" + fmt("%.1f", lx + 18) + "\" y=\"" + fmt("%.1f", ly + 10) + "\">" + name + "</text>\n";
  }
  return o + "</svg>\n";
}

std::vector<std::string> write_report(const std::string& dir, const RouteTrace& t, const RoutingStats& s,
                                      const Tokenizer& tok, const ReportInfo& info) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail(dir, "cannot create output directory: " + ec.message());
  std::vector<std::string> written;
  auto put = [&](const std::string& name, const std::string& text) {
    const std::string path = (std::filesystem::path(dir) / name).string();
    std::ofstream out(path, std::ios::binary);
    if (!out || !(out << text) || !out.flush()) fail(path, "cannot write");
    written.push_back(path);
  };
  put("stats.json", stats_json(s, info).dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  put("routing.md", markdown_report(s, info));
  put("routing.html", html_page(t, tok, info));
  for (int64_t l : info.layers) put("experts_layer" + std::to_string(l) + ".svg", expert_share_svg(s, l));
  put("repeats_first.svg", repeats_svg(s, false));
  put("repeats_first_or_second.svg", repeats_svg(s, true));
  return written;
}

}  // namespace mixtral::analysis
