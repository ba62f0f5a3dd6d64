// `mixtral routes`: the routing analysis of §5 of the Mixtral paper on any model. Corpora are
// read as text, tokenized, and evaluated window by window (BOS + up to window−1 tokens, KV cache
// reset per window) with a TraceRecorder attached; then the trace, the statistics and the report
// are written (src/analysis). docs/ROUTING.md describes every output and the definitions.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "analysis/routing_report.h"
#include "analysis/routing_stats.h"
#include "analysis/routing_trace.h"
#include "cli_common.h"
#include "core/error.h"

namespace mixtral::cli {
namespace {

namespace fs = std::filesystem;

struct RoutesFlags {
  ModelFlags mf;
  std::vector<std::string> corpora;  // NAME=PATH
  std::string out;
  int64_t max_tokens = 20000;  // per domain
  std::string layers;          // "0,15,31"; empty: default_layers()
  int64_t window = 512;
  int64_t python_stdlib = 0;   // files of the Python standard library as a "python-stdlib" domain
  int64_t html_tokens = 256;
  bool no_trace = false;
};

struct Corpus {
  std::string name;
  std::vector<std::string> files;
};

// A file, or the regular non-hidden files directly inside a directory, sorted by name.
std::vector<std::string> corpus_files(const std::string& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return {path};
  if (!fs::is_directory(path, ec)) fail(path, "no such corpus file or directory");
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(path, ec))
    if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path().string());
  if (ec) fail(path, "cannot list directory: " + ec.message());
  if (files.empty()) fail(path, "directory has no files");
  std::sort(files.begin(), files.end());
  return files;
}

// NAME=PATH specs in order of first appearance; a name given twice collects both paths.
std::vector<Corpus> parse_corpora(const std::vector<std::string>& specs) {
  std::vector<Corpus> out;
  for (const auto& spec : specs) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      fail("--corpus", "expected NAME=PATH, got \"" + spec + "\"");
    const std::string name = spec.substr(0, eq);
    auto it = std::find_if(out.begin(), out.end(), [&](const Corpus& c) { return c.name == name; });
    if (it == out.end()) it = out.insert(out.end(), Corpus{name, {}});
    for (auto& f : corpus_files(spec.substr(eq + 1))) it->files.push_back(f);
  }
  return out;
}

// N files spread evenly over the sorted *.py of the newest /usr/lib/python3.X (top level only:
// the library's own modules, not its tests or vendored packages). Stands in for GitHub code.
Corpus python_stdlib(int64_t n) {
  fs::path best;
  int best_minor = -1;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/usr/lib", ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("python3.", 0) != 0) continue;
    const int minor = std::atoi(name.c_str() + 8);
    if (minor > best_minor) best_minor = minor, best = e.path();
  }
  std::vector<std::string> py;
  if (!best.empty())
    for (const auto& e : fs::directory_iterator(best, ec))
      if (e.is_regular_file() && e.path().extension() == ".py") py.push_back(e.path().string());
  if (py.empty()) fail("--python-stdlib", "no /usr/lib/python3.*/ with .py files on this machine");
  std::sort(py.begin(), py.end());
  Corpus c{"python-stdlib", {}};
  const int64_t m = int64_t(py.size()), take = std::min(n, m);
  for (int64_t i = 0; i < take; ++i) c.files.push_back(py[size_t(i * m / take)]);
  return c;
}

// Up to `budget` tokens of a file (no BOS). The file is read and encoded in ~64 KB pieces cut
// after a newline, so a large file costs only what is used; each piece gets SentencePiece's
// dummy-prefix space, i.e. one extra "▁" per 64 KB of text. Text that is not UTF-8 is an error,
// or with `skip_bad` an empty result and *bad set.
std::vector<int32_t> read_tokens(const Tokenizer& tok, const std::string& path, int64_t budget, bool skip_bad,
                                 bool* bad) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot read corpus file");
  std::vector<int32_t> ids;
  std::string buf;
  bool first = true;
  while (int64_t(ids.size()) < budget) {
    char block[1 << 16];
    in.read(block, sizeof block);
    buf.append(block, size_t(in.gcount()));
    const bool eof = !in;
    if (first && buf.rfind("\xEF\xBB\xBF", 0) == 0) buf.erase(0, 3);  // a byte-order mark is not text
    first = false;
    const size_t cut = eof ? buf.size() : buf.rfind('\n');
    if (cut == std::string::npos && !eof) continue;  // a line longer than the block: read on
    const std::string piece = buf.substr(0, eof ? buf.size() : cut + 1);
    buf.erase(0, piece.size());
    if (!piece.empty()) {
      try {
        for (int32_t id : tok.encode(piece, false)) ids.push_back(id);
      } catch (const Error& e) {
        if (!skip_bad) fail(path, e.what());
        *bad = true;
        return {};
      }
    }
    if (eof) break;
  }
  if (int64_t(ids.size()) > budget) ids.resize(size_t(budget));
  return ids;
}

std::vector<int64_t> parse_layers(const std::string& s, int64_t n_layers) {
  std::vector<int64_t> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t comma = std::min(s.find(',', at), s.size());
    const std::string item = s.substr(at, comma - at);
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 0 || v >= n_layers)
      fail("--layers", "\"" + item + "\" is not a layer of this model (0.." + std::to_string(n_layers - 1) + ")");
    if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
    at = comma + 1;
  }
  return out;
}

// One line on stderr: redrawn in place on a terminal (at most 10 times a second), a new line
// every 10 % otherwise, so that logs stay short.
class Progress {
 public:
  explicit Progress(int64_t total) : total_(std::max<int64_t>(total, 1)), tty_(isatty(2)) {}
  void update(int64_t done, const std::string& label, bool final = false) {
    const double t = seconds_since(start_);
    const int decile = int(10 * done / total_);
    if (!final && (tty_ ? t - last_ < 0.1 : decile == last_decile_)) return;
    last_ = t;
    last_decile_ = decile;
    const double rate = t > 0 ? double(done) / t : 0, eta = rate > 0 ? double(total_ - done) / rate : 0;
    const int width = 24, filled = int(width * done / total_);
    char line[256];
    std::snprintf(line, sizeof line, "routes [%s%s] %3d%%  %lld/%lld tokens  %.0f tok/s  %s %d:%02d  %s",
                  std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), '-').c_str(),
                  int(100 * done / total_), (long long)done, (long long)total_, rate, final ? "took" : "ETA",
                  int(final ? t : eta) / 60, int(final ? t : eta) % 60, label.c_str());
    std::fprintf(stderr, tty_ ? "\r%s\033[K%s" : "%s%s", line, final || !tty_ ? "\n" : "");
    std::fflush(stderr);
  }

 private:
  int64_t total_;
  bool tty_;
  Clock::time_point start_ = Clock::now();
  double last_ = -1;
  int last_decile_ = -1;
};

int cmd_routes(const RoutesFlags& f) {
  if (f.max_tokens < 1) fail("--max-tokens", "must be at least 1");
  if (f.window < 2) fail("--window", "must be at least 2");
  if (f.html_tokens < 0) fail("--html-tokens", "must not be negative");
  std::vector<Corpus> corpora = parse_corpora(f.corpora);
  if (f.python_stdlib > 0) corpora.push_back(python_stdlib(f.python_stdlib));
  if (corpora.empty()) fail("routes", "give at least one --corpus NAME=PATH (or --python-stdlib N)");

  const auto model = f.mf.load();
  const Config& c = model->config();
  if (!c.is_moe()) fail(f.mf.model, "is a dense model: there is no routing to analyse");
  if (f.window > c.max_context)
    fail("--window", std::to_string(f.window) + " exceeds the model's context of " + std::to_string(c.max_context));
  const std::vector<int64_t> layers = f.layers.empty() ? analysis::default_layers(c.n_layers)
                                                       : parse_layers(f.layers, c.n_layers);
  const Tokenizer& tok = model->tokenizer();

  // Tokenize: each domain's budget is shared evenly by its files; a file shorter than its share
  // leaves the rest to the files after it.
  std::vector<std::vector<int32_t>> text(corpora.size());
  std::vector<std::vector<std::string>> sources(corpora.size());
  int64_t total = 0;
  for (size_t d = 0; d < corpora.size(); ++d) {
    const auto& files = corpora[d].files;
    for (size_t i = 0; i < files.size() && int64_t(text[d].size()) < f.max_tokens; ++i) {
      const int64_t left = f.max_tokens - int64_t(text[d].size()), share = (left + int64_t(files.size() - i) - 1) /
                                                                          int64_t(files.size() - i);
      bool bad = false;
      const auto ids = read_tokens(tok, files[i], share, corpora[d].name == "python-stdlib", &bad);
      if (bad) std::fprintf(stderr, "routes: skipping %s (not UTF-8)\n", files[i].c_str());
      if (ids.empty()) continue;
      text[d].insert(text[d].end(), ids.begin(), ids.end());
      sources[d].push_back(files[i]);
    }
    if (text[d].empty()) fail("--corpus", corpora[d].name + ": no text");
    total += int64_t(text[d].size());
  }

  std::vector<std::string> names;
  for (const auto& cp : corpora) names.push_back(cp.name);
  analysis::TraceRecorder recorder(c, names);
  Session session(*model, f.mf.session(f.window));
  session.set_observer(&recorder);
  const bool bos = tok.bos() >= 0;
  const int64_t per_window = f.window - (bos ? 1 : 0);
  std::fprintf(stderr, "routes: %lld tokens in %zu domains, windows of %lld, %d threads\n", (long long)total,
               corpora.size(), (long long)f.window, session.pool().size());
  Progress progress(total);
  int64_t done = 0;
  const auto t0 = Clock::now();
  for (size_t d = 0; d < corpora.size(); ++d) {
    for (size_t at = 0; at < text[d].size(); at += size_t(per_window)) {
      const size_t end = std::min(text[d].size(), at + size_t(per_window));
      std::vector<int32_t> ids;
      ids.reserve(end - at + 1);
      if (bos) ids.push_back(tok.bos());
      for (size_t j = at; j < end; ++j) ids.push_back(text[d][j]);
      recorder.begin_window(int64_t(d));
      session.reset();
      session.eval(ids);
      done += int64_t(end - at);
      progress.update(done, corpora[d].name);
    }
  }
  const double seconds = seconds_since(t0);
  progress.update(done, "", true);

  const analysis::RouteTrace trace = recorder.take();
  const analysis::RoutingStats stats = analysis::compute_stats(trace, bos ? tok.bos() : -1);
  analysis::ReportInfo info;
  info.model = f.mf.model;
  info.window = f.window;
  info.layers = layers;
  info.html_tokens = f.html_tokens;
  info.sources = sources;
  info.seconds = seconds;
  info.threads = session.pool().size();
  auto written = analysis::write_report(f.out, trace, stats, tok, info);
  if (!f.no_trace) {
    const std::string path = (fs::path(f.out) / "trace.bin").string();
    analysis::write_trace(path, trace);
    written.push_back(path);
  }

  const analysis::Rates uniform = analysis::uniform_baselines(c.n_experts, c.n_experts_used);
  for (int64_t l : layers) {
    const analysis::Rates r = analysis::repeat_rates(stats.pooled(l));
    const analysis::LayerDivergence div = analysis::layer_divergence(stats, l);
    double noise = analysis::kNaN;
    for (double h : div.split_half)
      if (!std::isnan(h) && (std::isnan(noise) || h > noise)) noise = h;
    std::printf("layer %lld: first choice %.1f%% (uniform %.1f%%), first or second %.1f%% (uniform %.1f%%)",
                (long long)l, 100 * r.first, 100 * uniform.first, 100 * r.first_or_second,
                100 * uniform.first_or_second);
    if (!std::isnan(div.max_pairwise))
      std::printf(", largest JSD between domains %.4f (split-half noise %.4f)", div.max_pairwise, noise);
    std::printf("\n");
  }
  // Expert caching (--memory-budget): what the measured locality predicts for a per-layer LRU
  // cache, next to what the engine's cache did when one was in use.
  std::printf("expert cache predicted by temporal locality (per-layer LRU, this text):");
  for (int64_t m = 1; m < c.n_experts; ++m)
    std::printf(" %lld/%lld per layer: %.1f%%%s", (long long)m, (long long)c.n_experts,
                100 * analysis::lru_hit_rate(trace, m), m + 1 < c.n_experts ? "," : "\n");
  if (model->expert_cache()) std::printf("%s\n", cache_summary(*model).c_str());
  for (const auto& w : written) std::printf("wrote %s\n", w.c_str());
  return 0;
}

}  // namespace

// Declared in tools/mixtral.cpp, which calls it once to register the command.
void add_routes_command(CLI::App& app, Commands& commands) {
  auto f = std::make_shared<RoutesFlags>();
  auto* sub = app.add_subcommand("routes", "routing analysis (paper §5): expert repetition, distributions, traces");
  f->mf.add(sub, /*with_ctx=*/false);
  sub->add_option("--corpus", f->corpora, "NAME=PATH: a domain read from a file or all files of a directory; "
                                          "repeat for more domains (a repeated NAME adds files to it)");
  sub->add_option("--out", f->out, "output directory (created)")->required();
  sub->add_option("--max-tokens", f->max_tokens, "most tokens of text per domain, shared evenly by its files");
  sub->add_option("--layers", f->layers, "layers for the Table 5 layout, charts and HTML, e.g. 0,15,31 "
                                         "(default: first, middle, last)");
  sub->add_option("--window", f->window, "tokens per window, BOS included; the KV cache is reset per window");
  sub->add_option("--python-stdlib", f->python_stdlib, "add a 'python-stdlib' domain: N .py files spread over "
                                                       "the newest /usr/lib/python3.*/ (stands in for GitHub)");
  sub->add_option("--html-tokens", f->html_tokens, "tokens of each domain shown on routing.html");
  sub->add_flag("--no-trace", f->no_trace, "do not write trace.bin");
  commands.emplace_back(sub, [f] { return cmd_routes(*f); });
}

}  // namespace mixtral::cli
