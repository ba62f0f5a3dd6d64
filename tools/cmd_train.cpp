// `mixtral train` (src/train: train a Mixtral-architecture model from scratch on text files).
#include <cmath>
#include <cstdio>

#include "cli_common.h"
#include "train/trainer.h"

using namespace mixtral;
using namespace mixtral::cli;

namespace {

struct TrainFlags {
  std::string config, out, tokenizer, resume;
  std::vector<std::string> data;
  int64_t steps = 0, stop_after = 0;
  int threads = 0;
  bool quiet = false;
};

int cmd_train(const TrainFlags& f) {
  std::optional<train::TrainConfig> cfg;
  if (!f.config.empty()) cfg = train::TrainConfig::load(f.config);
  if (cfg && f.steps > 0) cfg->train.steps = f.steps;
  if (cfg && f.threads > 0) cfg->train.threads = f.threads;
  if (!cfg && (f.steps > 0 || f.threads > 0)) fail("--steps/--threads", "need --config (the checkpoint's own is used otherwise)");
  train::TrainOptions o;
  o.data = f.data;
  o.out_dir = f.out;
  o.tokenizer = f.tokenizer;
  o.resume = f.resume;
  o.stop_after = f.stop_after;
  o.progress_bar = !f.quiet;
  const auto r = train::run_training(cfg ? &*cfg : nullptr, o);
  std::fprintf(stderr, "done: %lld steps, %lld tokens in %.0f s; held-out loss %.4f, perplexity %.2f; model in %s\n",
               (long long)r.progress.step, (long long)r.progress.tokens_seen, r.progress.elapsed_s, r.eval_loss,
               std::exp(r.eval_loss), f.out.c_str());
  return 0;
}

}  // namespace

namespace mixtral::cli {

void add_train_command(CLI::App& app, Commands& commands) {
  auto* sub = app.add_subcommand("train", "train a Mixtral-architecture model (MoE or dense) from scratch on text files");
  auto f = std::make_shared<TrainFlags>();
  sub->add_option("--config", f->config, "training config JSON: {\"model\": {HF config keys}, \"train\": {...}} (see configs/)");
  sub->add_option("--data", f->data, "text files or folders (every file under a folder)")->required()->expected(1, -1);
  sub->add_option("--out", f->out, "output folder: HF checkpoint (config.json, model.safetensors, tokenizer.model), train_log.csv")
      ->required();
  sub->add_option("--tokenizer", f->tokenizer, "use this tokenizer.model (default: train a BPE tokenizer on the data)");
  sub->add_option("--resume", f->resume, "continue the run saved in this checkpoint folder (bit-exact)");
  sub->add_option("--steps", f->steps, "override the config's number of steps");
  sub->add_option("--stop-after", f->stop_after, "stop and save after this many steps of this run");
  sub->add_option("-t,--threads", f->threads, "threads (default: the config's, else all cores)");
  sub->add_flag("-q,--quiet", f->quiet, "no progress output");
  commands.emplace_back(sub, [f] { return cmd_train(*f); });
}

}  // namespace mixtral::cli
