// `mixtral train` (src/train: train a Mixtral-architecture model from scratch on text files)
// and `mixtral perplexity` (score a text with any model the engine loads, llama-perplexity's way).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>

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

// llama-perplexity's method: the text (with <s> first) is cut into non-overlapping windows of
// n_ctx tokens; each window starts with <s> and is evaluated from an empty cache; only the
// predictions of its second half are scored (each then has at least n_ctx/2 tokens of context).
int cmd_perplexity(const ModelFlags& mf, const std::string& file) {
  const auto model = mf.load();
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file, "cannot read");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  const Tokenizer& tok = model->tokenizer();
  std::vector<int32_t> ids = tok.encode(text, true);
  const int64_t n_ctx = mf.ctx > 0 ? mf.context(*model) : std::min<int64_t>(512, model->config().max_context);
  const int64_t n_chunks = int64_t(ids.size()) / n_ctx;
  if (n_chunks < 1)
    fail(file, std::to_string(ids.size()) + " tokens are fewer than one window of " + std::to_string(n_ctx) +
                   " (lower -c)");
  ModelFlags one = mf;
  one.batch = n_ctx;
  Session session(*model, one.session(n_ctx));
  const int64_t V = model->config().vocab_size, first = n_ctx / 2;
  double nll = 0, nll2 = 0;
  int64_t count = 0;
  const auto t0 = Clock::now();
  std::fprintf(stderr, "perplexity: %zu tokens, %lld windows of %lld (scoring the second half of each)\n", ids.size(),
               (long long)n_chunks, (long long)n_ctx);
  for (int64_t c = 0; c < n_chunks; ++c) {
    std::vector<int32_t> w(ids.begin() + c * n_ctx, ids.begin() + (c + 1) * n_ctx);
    w[0] = tok.bos();
    session.reset();
    const std::vector<float>& logits = session.eval(w, /*all_logits=*/true);  // [n_ctx][V]
    for (int64_t j = first; j < n_ctx - 1; ++j) {
      const float* z = logits.data() + j * V;
      double mx = z[0], sum = 0;
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(z[v]));
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(z[v]) - mx);
      const double l = mx + std::log(sum) - double(z[w[size_t(j + 1)]]);
      nll += l;
      nll2 += l * l;
      ++count;
    }
    std::fprintf(stderr, "[%lld]%.4f ", (long long)(c + 1), std::exp(nll / double(count)));
  }
  const double mean = nll / double(count), var = nll2 / double(count) - mean * mean;
  const double ppl = std::exp(mean), err = ppl * std::sqrt(std::max(0.0, var) / double(count));
  std::fprintf(stderr, "\n%lld tokens scored in %.1f s\n", (long long)count, seconds_since(t0));
  std::printf("Final estimate: PPL = %.4f +/- %.5f\n", ppl, err);
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

void add_perplexity_command(CLI::App& app, Commands& commands) {
  auto* sub = app.add_subcommand("perplexity", "perplexity of a text file (non-overlapping windows, second half of each scored)");
  auto mf = std::make_shared<ModelFlags>();
  auto file = std::make_shared<std::string>();
  mf->add(sub);
  sub->add_option("-f,--file", *file, "the text to score")->required();
  commands.emplace_back(sub, [mf, file] { return cmd_perplexity(*mf, *file); });
}

}  // namespace mixtral::cli
