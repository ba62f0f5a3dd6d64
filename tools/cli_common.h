// Pieces shared by the `mixtral` subcommands: the flags that load a model, read a prompt and
// configure sampling, and the registry through which each tools/cmd_*.cpp adds its command.
#pragma once
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/memory.h"
#include "engine/session.h"
#include "model/model.h"
#include "model/transformer.h"
#include "sample/sampler.h"

namespace mixtral::cli {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A one-line progress bar on stderr for the commands that make billions of parameters
// (quantize, convert, make-model): "LABEL [####----] 42%  1.23B / 46.70B parameters  12 s".
inline std::function<void(int64_t, int64_t)> parameter_progress(const std::string& label, Clock::time_point t0) {
  return [label, t0](int64_t done, int64_t total) {
    const int width = 24, filled = int(double(done) / double(total) * width);
    std::fprintf(stderr, "\r%s [%s%s] %3d%%  %.2fB / %.2fB parameters  %.0f s", label.c_str(),
                 std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), '-').c_str(),
                 int(100.0 * double(done) / double(total)), double(done) / 1e9, double(total) / 1e9, seconds_since(t0));
  };
}

// A subcommand and what runs when it is chosen. Each tools/cmd_NAME.cpp defines
// `void add_NAME_command(CLI::App& app, Commands& commands)` and is listed in mixtral.cpp.
using Commands = std::vector<std::pair<CLI::App*, std::function<int()>>>;

// The embedded default model (models/default: the project's trained small SMoE), looked up
// from the working directory and from the binary's location; "" when there is none.
inline std::string default_model_path() {
  namespace fs = std::filesystem;
  std::vector<fs::path> candidates = {"models/default"};
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path() / ".." / "models" / "default");
    candidates.push_back(exe.parent_path() / "models" / "default");
  }
  for (const auto& c : candidates)
    if (fs::exists(c / "config.json", ec)) return fs::weakly_canonical(c, ec).string();
  return "";
}

// -m MODEL, defaulting to the embedded model when it is there (required otherwise).
inline void add_model_option(CLI::App* app, std::string& model) {
  model = default_model_path();
  auto* o = app->add_option("-m,--model", model, "Hugging Face directory or .gguf file" +
                                                     (model.empty() ? std::string() : " (default: " + model + ")"));
  if (model.empty()) o->required();
}

// Flags shared by the commands that load a model.
struct ModelFlags {
  std::string model;
  int threads = 0;
  int64_t ctx = 0;  // 0: min(4096, the model's context)
  int64_t batch = 512;
  int64_t experts_per_token = 0;
  bool preload = false;
  bool no_mmap = false;
  bool no_tiles = false;
  std::string memory_budget;  // "" = offload only what does not fit in available memory
  std::string cache_policy = "lfu", prefetch = "router";
  int io_threads = 2;
  int64_t expert_slots = 0;  // caps the cache's slots (experiments: "a quarter of the experts")
  int64_t kv_sequences = 1;  // sequences the command keeps in its KV cache (serve: --parallel)

  // --memory-budget and the expert cache's knobs (every command that runs a model).
  void add_memory_flags(CLI::App* app) {
    app->add_option("--memory-budget", memory_budget,
                    "memory the process may use, e.g. 20G or 300M: experts beyond it stay on disk and are read "
                    "into a cache of expert slots (default: offload only when the model does not fit in available memory)");
    app->add_option("--cache-policy", cache_policy, "expert cache replacement: lfu (decaying use counts) or lru")
        ->check(CLI::IsMember({"lfu", "lru"}));
    app->add_option("--prefetch", prefetch,
                    "expert prefetch: router (next layer's router on the current state), previous (last token's experts), "
                    "both, none")
        ->check(CLI::IsMember({"router", "previous", "both", "none"}));
    app->add_option("--io-threads", io_threads, "threads reading experts from disk")->check(CLI::Range(1, 16));
    app->add_option("--expert-slots", expert_slots,
                    "at most this many experts in memory (with --memory-budget; default: what the budget holds)")
        ->check(CLI::PositiveNumber);
  }

  void add_no_tiles_flag(CLI::App* app) {
    app->add_flag("--no-tiles", no_tiles,
                  "keep quantized weights in file order instead of tiling them for the int8 kernels when they are in "
                  "memory (--no-mmap, offloading); for A/B benchmarks");
  }

  void add(CLI::App* app, bool with_ctx = true) {
    add_model_option(app, model);
    app->add_option("-t,--threads", threads, "threads (default: all cores)");
    if (with_ctx) app->add_option("-c,--ctx-size", ctx, "context size in tokens (KV cache), at most the model's");
    app->add_option("-b,--batch-size", batch, "most tokens per forward pass during prompt processing");
    app->add_option("--experts-per-token", experts_per_token, "override the router's top-k");
    app->add_flag("--preload", preload, "touch every weight page before running (no page faults later)");
    app->add_flag("--no-mmap", no_mmap, "read the model into memory instead of mapping it (pages cannot be evicted)");
    add_no_tiles_flag(app);
    add_memory_flags(app);
  }
  std::unique_ptr<Model> load() const {
    LoadOptions o;
    if (experts_per_token > 0) o.experts_per_token = experts_per_token;
    o.prefetch = preload;
    o.no_mmap = no_mmap;
    o.tiles = !no_tiles;
    if (!memory_budget.empty()) o.memory_budget = parse_size(memory_budget, "--memory-budget");
    else o.auto_budget = true;
    o.cache.policy = parse_cache_policy(cache_policy);
    o.cache.prefetch = parse_prefetch_mode(prefetch);
    o.cache.io_threads = io_threads;
    o.cache.n_slots = expert_slots;
    if (expert_slots > 0 && !o.memory_budget) fail("--expert-slots", "needs --memory-budget");
    o.runtime_bytes = [this](const Config& c) {
      const int64_t n_ctx = ctx > 0 ? std::min(ctx, c.max_context) : std::min<int64_t>(4096, c.max_context);
      return runtime_bytes_estimate(c, batch, n_ctx * kv_sequences, threads > 0 ? threads : ThreadPool::default_threads());
    };
    return Model::load(model, o);
  }
  // The context to allocate: -c when given (an error past the model's maximum), else 4096.
  int64_t context(const Model& m) const {
    const int64_t max = m.config().max_context;
    if (ctx < 0) fail("--ctx-size", "must be positive");
    if (ctx > max) fail("--ctx-size", std::to_string(ctx) + " exceeds the model's context of " + std::to_string(max));
    return ctx > 0 ? ctx : std::min<int64_t>(4096, max);
  }
  SessionOptions session(int64_t n_ctx) const { return {n_ctx, batch, threads}; }
};

// One line on the expert cache (offloaded models only): hit rate, disk traffic, I/O stalls.
inline std::string cache_summary(const Model& m) {
  const ExpertCache* c = m.expert_cache();
  if (!c) return "";
  const ExpertCacheStats s = c->stats();
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "expert cache: %lld slots (%s, %s, prefetch %s): hit rate %.1f%% of %llu expert uses, %.1f MB read per "
                "token, %.2f s stalled on I/O, prefetch accuracy %.1f%% of %llu",
                static_cast<long long>(c->n_slots()), format_size(c->pool_bytes()).c_str(), name(c->options().policy),
                name(c->options().prefetch), 100 * s.hit_rate(), static_cast<unsigned long long>(s.demanded),
                s.bytes_per_token() / 1e6, s.stall_s, 100 * s.prefetch_accuracy(),
                static_cast<unsigned long long>(s.prefetch_loads));
  return buf;
}

// -p TEXT or -f FILE (read byte for byte).
struct PromptFlags {
  std::string text, file;
  void add(CLI::App* app) {
    auto* p = app->add_option("-p,--prompt", text, "prompt text");
    auto* f = app->add_option("-f,--file", file, "read the prompt from FILE, byte for byte");
    p->excludes(f);
  }
  std::string get() const {
    if (file.empty()) return text;
    std::ifstream in(file, std::ios::binary);
    if (!in) fail(file, "cannot read prompt file");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
};

struct SampleFlags {
  SamplerParams p;
  void add(CLI::App* app) {
    app->add_option("--temp", p.temperature, "temperature; 0 = greedy");
    app->add_option("--top-k", p.top_k, "keep the k most likely tokens (0 = off)");
    app->add_option("--top-p", p.top_p, "nucleus sampling threshold (1 = off)");
    app->add_option("--min-p", p.min_p, "drop tokens below min-p × the most likely (0 = off)");
    app->add_option("--repeat-penalty", p.repeat_penalty, "penalise recent tokens (1 = off)");
    app->add_option("--repeat-last-n", p.repeat_last_n, "tokens the repeat penalty looks back over");
    app->add_option("--seed", p.seed, "random seed (same seed, same text)");
  }
};

}  // namespace mixtral::cli
