// `mixtral bench`: prompt processing (ppN) and generation (tgN) speed, like llama-bench.
//
// Prompts are random token ids drawn (seeded) from the vocabulary's normal pieces, not one token
// repeated: a repeated token routes to the same experts every time and flatters an MoE model.
// Each test runs -r times on a fresh KV cache; mean ± stddev of tokens/s is reported with the
// weight traffic (decode, GB/s) or arithmetic rate (prefill, GFLOP/s) it implies, and the peak
// resident memory. --measure-limits adds the machine's read bandwidth, so decode speed comes with
// its ratio to the memory-bandwidth ceiling: probed before and after the tests (a VM's bandwidth
// moves with its neighbours), the higher of the two taken as the ceiling; and, for decode, probed
// right before and after each repetition too, whose share of that (higher) figure is the ratio
// the "% of the bandwidth around each run" reports (median over the repetitions).

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "cli_common.h"
#include "core/thread_pool.h"

namespace mixtral::cli {
namespace {

std::vector<int64_t> parse_list(const std::string& s, const char* flag) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      const int64_t v = std::stoll(item, &used);
      if (used != item.size() || v < 0) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      fail(flag, "\"" + s + "\" is not a comma-separated list of non-negative integers");
    }
  }
  return out;
}

std::vector<int32_t> random_tokens(const Tokenizer& tok, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, tok.n_vocab() - 1);
  std::vector<int32_t> out;
  while (int64_t(out.size()) < n) {
    const int32_t id = pick(rng);
    if (!tok.is_control(id) && !tok.is_byte(id)) out.push_back(id);
  }
  return out;
}

// n tokens of `text` (tokenized once), starting at a different place for each seed; the text
// is read cyclically when it is shorter than needed (a BOS-free run of real tokens).
std::vector<int32_t> text_tokens(const std::vector<int32_t>& text, int64_t n, uint64_t seed) {
  std::vector<int32_t> out;
  const size_t start = size_t(seed * 7919) % text.size();
  for (int64_t i = 0; i < n; ++i) out.push_back(text[(start + size_t(i)) % text.size()]);
  return out;
}

double peak_rss_gib() { return double(peak_resident_bytes()) / double(1 << 30); }

// Bytes of weights one decoded token reads: everything but the experts, plus k experts a layer.
double bytes_per_token(const Model& m) {
  const Config& c = m.config();
  const Weights& w = m.weights();
  double b = double(w.output.bytes()) + double(w.token_embd.row_bytes());
  for (const auto& L : w.layers) {
    b += double(L.wq.bytes() + L.wk.bytes() + L.wv.bytes() + L.wo.bytes() + L.router.bytes());
    const auto& e = L.experts[0];
    b += double(e.w1.bytes() + e.w3.bytes() + e.w2.bytes()) * double(c.is_moe() ? c.n_experts_used : 1);
  }
  return b;
}

// Multiply-adds × 2 per prompt token through the active weights (attention scores excluded).
// The embedding is a lookup, and the LM head runs for the last prompt token only.
double flops_per_token(const Model& m) {
  const Config& c = m.config();
  return 2.0 * double(c.params_active() - (c.tied_embeddings ? 1 : 2) * c.vocab_size * c.dim);
}

// Read bandwidth of `threads` threads summing a buffer of 2^log2_doubles doubles (default 1 GiB;
// best of 3).
double measure_read_gbs(int threads, int log2_doubles = 27) {
  const size_t n = size_t(1) << log2_doubles;
  std::vector<double> buf(n, 1.0);
  ThreadPool pool(threads);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<double> partial(size_t(threads), 0);
    const auto t0 = Clock::now();
    pool.run([&](int t, int nt) {
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      const size_t b = n * size_t(t) / size_t(nt), e = n * size_t(t + 1) / size_t(nt);
      for (size_t i = b; i + 4 <= e; i += 4) {
        s0 += buf[i];
        s1 += buf[i + 1];
        s2 += buf[i + 2];
        s3 += buf[i + 3];
      }
      partial[size_t(t)] = s0 + s1 + s2 + s3;
    });
    const double dt = seconds_since(t0);
    double sum = 0;
    for (double p : partial) sum += p;
    if (sum < 0) std::fprintf(stderr, "?");  // keeps the reads
    best = std::max(best, double(n * sizeof(double)) / dt / 1e9);
  }
  return best;
}

struct Result {
  std::string test;
  int threads;
  int64_t n_prompt, n_gen;
  std::vector<double> ts;  // tokens/s of each repetition
  std::optional<ExpertCacheStats> cache;  // offloaded experts: over all repetitions of the test
  // Decode with --measure-limits: the read bandwidth probed right before and right after each
  // repetition (the higher of the two).
  std::vector<double> rep_read_gbs = {};
  // Each repetition's weight GB/s (bytes_per_token × tokens/s) as a share of its probe, and the
  // median of those.
  std::vector<double> shares(double bytes_per_token) const {
    std::vector<double> v;
    for (size_t i = 0; i < rep_read_gbs.size(); ++i) v.push_back(ts[i] * bytes_per_token / 1e9 / rep_read_gbs[i]);
    return v;
  }
  double median_share(double bytes_per_token) const {
    std::vector<double> v = shares(bytes_per_token);
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  }
  double mean() const {
    double s = 0;
    for (double v : ts) s += v;
    return s / double(ts.size());
  }
  double stddev() const {
    if (ts.size() < 2) return 0;
    const double m = mean();
    double s = 0;
    for (double v : ts) s += (v - m) * (v - m);
    return std::sqrt(s / double(ts.size() - 1));
  }
};

struct BenchFlags {
  ModelFlags model;
  std::string prompts = "512", gens = "32", threads = "2", output = "md";
  std::string text_file;  // -f: tokens of real text instead of random vocabulary tokens
  int reps = 3;
  bool limits = false;
};

int run_bench(const BenchFlags& f) {
  const auto pps = parse_list(f.prompts, "-p"), tgs = parse_list(f.gens, "-n"), ths = parse_list(f.threads, "-t");
  // What --memory-budget must leave room for: the largest test's KV cache and batch.
  ModelFlags mf = f.model;
  const auto largest = [](const std::vector<int64_t>& v) { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); };
  mf.ctx = std::max(largest(pps) + 1, largest(tgs) + 2);
  mf.batch = std::max<int64_t>(1, largest(pps));
  const auto t_load = Clock::now();
  const auto model = mf.load();
  const double load_s = seconds_since(t_load);
  const Config& c = model->config();
  const Tokenizer& tok = model->tokenizer();
  std::vector<int32_t> text;
  if (!f.text_file.empty()) {
    PromptFlags pf;
    pf.file = f.text_file;
    text = tok.encode(pf.get(), false);
    if (text.empty()) fail(f.text_file, "has no text to benchmark with");
  }
  if (f.reps < 1) fail("-r", "must be at least 1");
  const double bpt = bytes_per_token(*model), fpt = flops_per_token(*model);
  ExpertCache* cache = model->expert_cache();
  const int probe_threads = int(ths.empty() ? 1 : ths.back());
  // The probe before the tests only where its 1 GiB buffer can be left out of the peak RSS.
  const double read_before = f.limits && reset_peak_resident() ? measure_read_gbs(probe_threads) : 0;
  if (read_before > 0) reset_peak_resident();
  // Around each decode repetition, a short probe (256 MiB, 8x the L3): this host's bandwidth
  // moves within seconds, so a ceiling probed a minute away can be off by 1.5x. The peak RSS
  // is kept from before each probe and reset after it, so the probes stay out of it.
  const bool rep_probes = read_before > 0;
  double peak_gib = 0;
  auto probe = [&] {
    peak_gib = std::max(peak_gib, peak_rss_gib());
    const double gbs = measure_read_gbs(probe_threads, 25);
    reset_peak_resident();
    return gbs;
  };

  std::vector<Result> results;
  for (int64_t threads : ths) {
    if (threads < 1) fail("-t", "thread counts must be at least 1");
    for (int64_t p : pps) {
      if (p == 0) continue;
      Result r{"pp" + std::to_string(p), int(threads), p, 0, {}, {}};
      if (cache) cache->reset_stats();
      for (int rep = 0; rep < f.reps; ++rep) {
        Session s(*model, {p + 1, p, int(threads)});
        const auto tokens = text.empty() ? random_tokens(tok, p, uint64_t(rep) + 1) : text_tokens(text, p, uint64_t(rep) + 1);
        const auto t0 = Clock::now();
        s.eval(tokens);
        r.ts.push_back(double(p) / seconds_since(t0));
      }
      if (cache) r.cache = cache->stats();
      results.push_back(r);
    }
    for (int64_t n : tgs) {
      if (n == 0) continue;
      Result r{"tg" + std::to_string(n), int(threads), 0, n, {}, {}};
      for (int rep = 0; rep < f.reps; ++rep) {
        Session s(*model, {n + 2, 1, int(threads)});
        const auto tokens =
            text.empty() ? random_tokens(tok, n + 1, uint64_t(rep) + 100) : text_tokens(text, n + 1, uint64_t(rep) + 100);
        s.eval({tokens[0]});  // warm-up token, not timed
        if (cache && rep == 0) cache->reset_stats();  // the cache's figures cover the timed tokens
        const double probe_before = rep_probes ? probe() : 0;
        const auto t0 = Clock::now();
        for (int64_t i = 1; i <= n; ++i) s.eval({tokens[size_t(i)]});
        r.ts.push_back(double(n) / seconds_since(t0));
        if (rep_probes) r.rep_read_gbs.push_back(std::max(probe_before, probe()));
      }
      if (cache) r.cache = cache->stats();
      results.push_back(r);
    }
  }
  const double rss = std::max(peak_gib, peak_rss_gib());  // before the bandwidth probe allocates its buffer
  const double read_after = f.limits ? measure_read_gbs(probe_threads) : 0;
  const double read_gbs = std::max(read_before, read_after);

  if (f.output == "json") {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& r : results) {
      nlohmann::json j = {{"model", f.model.model}, {"test", r.test}, {"tokens", f.text_file.empty() ? "random" : f.text_file}, {"threads", r.threads}, {"n_prompt", r.n_prompt},
                          {"n_gen", r.n_gen}, {"avg_ts", r.mean()}, {"stddev_ts", r.stddev()}, {"samples_ts", r.ts},
                          {"mmap", !f.model.no_mmap}, {"tiles", model->tiled()}, {"peak_rss_gib", rss}};
      if (r.n_gen) j["weight_gbs"] = r.mean() * bpt / 1e9;
      if (!r.rep_read_gbs.empty()) {
        j["rep_read_bandwidth_gbs"] = r.rep_read_gbs;
        j["rep_bandwidth_share"] = r.shares(bpt);
        j["bandwidth_share"] = r.median_share(bpt);
      }
      if (r.n_prompt) j["gflops"] = r.mean() * fpt / 1e9;
      if (read_gbs > 0) {
        j["read_bandwidth_gbs"] = read_gbs;
        j["read_bandwidth_after_gbs"] = read_after;
        if (read_before > 0) j["read_bandwidth_before_gbs"] = read_before;
      }
      if (r.cache) {
        j["memory_budget"] = f.model.memory_budget.empty() ? "auto" : f.model.memory_budget;
        j["expert_slots"] = cache->n_slots();
        j["cache_policy"] = name(cache->options().policy);
        j["prefetch"] = name(cache->options().prefetch);
        j["cache_hit_rate"] = r.cache->hit_rate();
        j["bytes_read_per_token"] = r.cache->bytes_per_token();
        j["io_stall_s"] = r.cache->stall_s;
        j["prefetch_accuracy"] = r.cache->prefetch_accuracy();
        j["prefetch_loads"] = r.cache->prefetch_loads;
      }
      out.push_back(j);
    }
    std::printf("%s\n", out.dump(1).c_str());
    return 0;
  }
  std::printf("model: %s (%s; %s)\n", f.model.model.c_str(), model->format().c_str(), to_string(c).c_str());
  const std::string where = model->expert_cache()
                                ? "non-experts in memory (" + format_size(model->resident_weight_bytes()) +
                                      "), experts read from disk into the cache (--memory-budget " +
                                      (f.model.memory_budget.empty() ? "auto" : f.model.memory_budget) + ")"
                                : f.model.no_mmap ? "read into memory (--no-mmap)"
                                                  : "memory-mapped";
  char tiles[96];
  if (model->tiled()) std::snprintf(tiles, sizeof tiles, "; tiled for the int8 kernels (%.2f s)", model->tile_seconds());
  else std::snprintf(tiles, sizeof tiles, "; in file order%s", f.model.no_tiles ? " (--no-tiles)" : "");
  std::printf("weights: %s; %s%s, loaded in %.1f s\n", model->dtype_summary().c_str(), where.c_str(), tiles, load_s);
  std::printf("per decoded token: %.3f GB of weights read; per prompt token: %.2f GFLOP\n", bpt / 1e9, fpt / 1e9);
  std::printf("tokens: %s\n", f.text_file.empty() ? "random vocabulary tokens (seeded; no repeats to flatter the MoE)"
                                                   : ("the text of " + f.text_file + ", read cyclically").c_str());
  if (read_gbs > 0) {
    std::printf("measured read bandwidth: %.1f GB/s", read_gbs);
    if (read_before > 0) std::printf(" (the higher of %.1f before and %.1f after the tests)", read_before, read_after);
    std::printf(" -> decode ceiling %.1f tok/s\n", read_gbs * 1e9 / bpt);
  }
  std::printf("\n| test | threads | tokens/s | rate |\n|---|---|---|---|\n");
  for (const auto& r : results) {
    char rate[128];
    if (r.n_gen && !r.rep_read_gbs.empty())
      std::snprintf(rate, sizeof rate, "%.1f GB/s weights, %.0f %% of the bandwidth around each run", r.mean() * bpt / 1e9,
                    100 * r.median_share(bpt));
    else if (r.n_gen) std::snprintf(rate, sizeof rate, "%.1f GB/s weights", r.mean() * bpt / 1e9);
    else std::snprintf(rate, sizeof rate, "%.1f GFLOP/s", r.mean() * fpt / 1e9);
    std::printf("| %s | %d | %.2f ± %.2f | %s |\n", r.test.c_str(), r.threads, r.mean(), r.stddev(), rate);
  }
  if (cache) {
    std::printf("\nexpert cache: %lld slots, %s, policy %s, prefetch %s\n\n", static_cast<long long>(cache->n_slots()),
                format_size(cache->pool_bytes()).c_str(), name(cache->options().policy), name(cache->options().prefetch));
    std::printf("| test | hit rate | MB read/token | I/O stall s | prefetch accuracy |\n|---|---|---|---|---|\n");
    for (const auto& r : results)
      std::printf("| %s | %.1f%% | %.1f | %.2f | %.1f%% of %llu |\n", r.test.c_str(), 100 * r.cache->hit_rate(),
                  r.cache->bytes_per_token() / 1e6, r.cache->stall_s, 100 * r.cache->prefetch_accuracy(),
                  static_cast<unsigned long long>(r.cache->prefetch_loads));
  }
  std::printf("\npeak resident memory: %.2f GiB\n", rss);
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, Commands& commands) {
  auto* cmd = app.add_subcommand("bench", "measure prompt-processing and generation speed (like llama-bench)");
  auto f = std::make_shared<BenchFlags>();
  add_model_option(cmd, f->model.model);
  cmd->add_option("-p,--n-prompt", f->prompts, "prompt lengths, comma-separated (0 = none)");
  cmd->add_option("-n,--n-gen", f->gens, "generation lengths, comma-separated (0 = none)");
  cmd->add_option("-t,--threads", f->threads, "thread counts, comma-separated");
  cmd->add_option("-r,--repetitions", f->reps, "repetitions of each test");
  cmd->add_option("-o,--output", f->output, "md or json")->check(CLI::IsMember({"md", "json"}));
  cmd->add_option("--experts-per-token", f->model.experts_per_token, "override the router's top-k");
  cmd->add_flag("--no-mmap", f->model.no_mmap, "read the model into memory (recommended: this VM evicts idle mapped pages)");
  f->model.add_no_tiles_flag(cmd);
  cmd->add_flag("--measure-limits", f->limits, "also measure the machine's read bandwidth (before and after the tests; the higher is the ceiling)");
  cmd->add_option("-f,--file", f->text_file,
                  "tokens of this text file (read cyclically) instead of random vocabulary tokens")
      ->check(CLI::ExistingFile);
  f->model.add_memory_flags(cmd);
  commands.emplace_back(cmd, [f] { return run_bench(*f); });
}

}  // namespace mixtral::cli
