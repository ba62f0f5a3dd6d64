// What `mixtral routes` writes: stats.json, a markdown report in the layout of the paper's
// Table 5 (and every layer), an offline HTML page colouring text by first-choice expert
// (Figure 8), and hand-written SVG charts (Figure 7's expert shares, repetition per layer).
// Every output is a plain function of the trace and its statistics, so tests and other tools
// can produce any one of them alone.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "analysis/routing_stats.h"
#include "analysis/routing_trace.h"
#include "text/tokenizer.h"

namespace mixtral::analysis {

// What the report says about the run besides the statistics.
struct ReportInfo {
  std::string model;                              // path or name, printed in headers
  int64_t window = 0;                             // tokens per window (KV reset between windows)
  std::vector<int64_t> layers;                    // layers shown in the Table 5 layout, charts and HTML
  int64_t html_tokens = 256;                      // tokens of each domain's first window on the HTML page
  std::vector<std::vector<std::string>> sources;  // [domain] the files each domain was read from
  double seconds = 0;                             // evaluation time (0: not measured)
  int threads = 0;
};

// Layers 0, (L−1)/2 and L−1 without repeats: for 32 layers the paper's 0, 15, 31.
std::vector<int64_t> default_layers(int64_t n_layers);

nlohmann::json stats_json(const RoutingStats& s, const ReportInfo& info);
std::string markdown_report(const RoutingStats& s, const ReportInfo& info);
// Each domain's first window, one block per chosen layer, every token's background the colour
// of its first-choice expert; hovering shows the piece and all k experts with their weights.
std::string html_page(const RouteTrace& t, const Tokenizer& tok, const ReportInfo& info);
// Grouped bars: each expert's share of the top-k assignments per domain, with the uniform 1/n.
std::string expert_share_svg(const RoutingStats& s, int64_t layer);
// Lines over the layers: per-domain repetition rate with the uniform baseline dashed.
std::string repeats_svg(const RoutingStats& s, bool first_or_second);

// Writes stats.json, routing.md, routing.html, experts_layer<L>.svg for each chosen layer,
// repeats_first.svg and repeats_first_or_second.svg into `dir` (created if needed). Returns
// the paths written. Throws Error naming a path that cannot be written.
std::vector<std::string> write_report(const std::string& dir, const RouteTrace& t, const RoutingStats& s,
                                      const Tokenizer& tok, const ReportInfo& info);

}  // namespace mixtral::analysis
