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
#include "engine/session.h"
#include "model/model.h"
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

  void add(CLI::App* app, bool with_ctx = true) {
    add_model_option(app, model);
    app->add_option("-t,--threads", threads, "threads (default: all cores)");
    if (with_ctx) app->add_option("-c,--ctx-size", ctx, "context size in tokens (KV cache), at most the model's");
    app->add_option("-b,--batch-size", batch, "most tokens per forward pass during prompt processing");
    app->add_option("--experts-per-token", experts_per_token, "override the router's top-k");
    app->add_flag("--preload", preload, "touch every weight page before running (no page faults later)");
    app->add_flag("--no-mmap", no_mmap, "read the model into memory instead of mapping it (pages cannot be evicted)");
  }
  std::unique_ptr<Model> load() const {
    LoadOptions o;
    if (experts_per_token > 0) o.experts_per_token = experts_per_token;
    o.prefetch = preload;
    o.no_mmap = no_mmap;
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
