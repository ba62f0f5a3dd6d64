#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "text/sentencepiece_model.h"
#include "train/data.h"
#include "train/tokenizer_trainer.h"
#include "train/train_model.h"

namespace mixtral::train {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::string hms(double s) {
  const int64_t t = int64_t(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60),
                (long long)(t % 60));
  return buf;
}

// The CSV log. A resumed run keeps the rows up to its checkpoint's step and appends.
class CsvLog {
 public:
  CsvLog(const std::string& path, const std::string& previous, int64_t keep_until_step) {
    std::vector<std::string> rows;
    if (!previous.empty()) {
      std::ifstream in(previous);
      std::string line;
      std::getline(in, line);  // header
      while (std::getline(in, line))
        if (!line.empty() && std::stoll(line.substr(0, line.find(','))) <= keep_until_step) rows.push_back(line);
    }
    out_.open(path, std::ios::trunc);
    if (!out_) fail(path, "cannot open for writing");
    out_ << "step,lr,loss,ce,aux,z,grad_norm,tokens,tokens_per_s,elapsed_s,eval_loss,eval_ppl\n";
    for (const auto& r : rows) out_ << r << "\n";
    out_.flush();
  }
  void row(int64_t step, double lr, const Losses& l, double gnorm, int64_t tokens, double tps, double elapsed,
           double eval_loss) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%lld,%.6g,%.6f,%.6f,%.6f,%.6f,%.5g,%lld,%.1f,%.1f", (long long)step, lr, l.total(),
                  l.ce, l.aux, l.z, gnorm, (long long)tokens, tps, elapsed);
    out_ << buf;
    if (eval_loss > 0) {
      std::snprintf(buf, sizeof buf, ",%.6f,%.4f", eval_loss, std::exp(eval_loss));
      out_ << buf << "\n";
    } else {
      out_ << ",,\n";
    }
    out_.flush();
  }

 private:
  std::ofstream out_;
};

}  // namespace

TrainResult run_training(const TrainConfig* given, const TrainOptions& o) {
  if (o.out_dir.empty()) fail("--out", "an output folder is required");
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) fail(o.out_dir, "cannot create folder: " + ec.message());

  // ---- config, parameters and optimizer state: fresh or from a checkpoint
  LoadedCheckpoint ck;
  if (!o.resume.empty()) {
    ck = load_checkpoint(o.resume);
    if (given) {
      if (given->hf_config("").dump() != ck.config.hf_config("").dump())
        fail("--config", "its model differs from the checkpoint's in " + o.resume);
      ck.config.train = given->train;
    }
  } else if (!given) {
    fail("--config", "a training config is required (or --resume)");
  } else {
    ck.config = *given;
  }
  TrainConfig& cfg = ck.config;
  const TrainHyper& h = cfg.train;
  const int threads = h.threads > 0 ? h.threads : ThreadPool::default_threads();
  ThreadPool pool(threads);

  // ---- tokenizer
  const auto files = list_data_files(o.data);
  std::string tok_path = o.tokenizer;
  if (tok_path.empty() && !o.resume.empty()) tok_path = o.resume + "/tokenizer.model";
  if (tok_path.empty()) {
    tok_path = o.out_dir + "/tokenizer.model";
    std::fprintf(stderr, "training a %lld-piece BPE tokenizer on %zu files...\n", (long long)cfg.model.vocab_size,
                 files.size());
    train_sentencepiece(files, cfg.model.vocab_size, tok_path);
  }
  const Tokenizer tok(load_sentencepiece_model(tok_path));
  if (tok.n_vocab() != cfg.model.vocab_size)
    fail(tok_path, "has " + std::to_string(tok.n_vocab()) + " pieces but the config's vocab_size is " +
                       std::to_string(cfg.model.vocab_size));
  if (tok.bos() != cfg.model.bos_id || tok.eos() != cfg.model.eos_id)
    fail(tok_path, "its <s>/</s> ids differ from the config's bos_token_id/eos_token_id");

  // ---- data
  const Corpus corpus = build_corpus(files, tok, h.eval_fraction, pool);
  std::fprintf(stderr, "data: %lld files, %lld bytes -> %zu training tokens, %zu held-out tokens\n",
               (long long)corpus.files, (long long)corpus.bytes, corpus.train.size(), corpus.eval.size());
  {  // the baseline a language model must beat: token frequencies of the training split (add-one)
    std::vector<double> count(size_t(cfg.model.vocab_size), 1.0);
    for (int32_t t : corpus.train) count[size_t(t)] += 1.0;
    const double total = double(corpus.train.size()) + double(cfg.model.vocab_size);
    double nll = 0;
    for (int32_t t : corpus.eval) nll -= std::log(count[size_t(t)] / total);
    std::fprintf(stderr, "unigram baseline on the held-out split: loss %.4f, perplexity %.1f\n",
                 nll / double(corpus.eval.size()), std::exp(nll / double(corpus.eval.size())));
  }

  // ---- model
  TrainModel model(cfg, h.batch_size, h.seq_len, pool);
  const ParamLayout& layout = model.layout();
  std::vector<float> params, grads(layout.size());
  AdamW opt(layout.size());
  TrainProgress prog = ck.progress;
  if (o.resume.empty()) {
    params.resize(layout.size());
    init_params(layout, h.seed, params.data());
  } else {
    params = std::move(ck.params);
    opt.m() = std::move(ck.adam_m);
    opt.v() = std::move(ck.adam_v);
    opt.set_steps(prog.step);
  }
  std::fprintf(stderr, "model: %s, %.2fM parameters (%.2fM active per token); %lld threads\n",
               to_string(cfg.model).c_str(), double(layout.size()) / 1e6,
               double(cfg.model.params_active() - (cfg.tie_embeddings ? cfg.model.vocab_size * cfg.model.dim : 0)) / 1e6,
               (long long)threads);

  const int64_t tokens_per_step = h.batch_size * h.seq_len * h.grad_accum;
  std::vector<int32_t> tokens(size_t(h.batch_size * h.seq_len)), targets(tokens.size());
  auto evaluate = [&] {
    double sum = 0;
    for (int64_t i = 0; i < h.eval_batches; ++i) {
      eval_batch(corpus.eval, h.batch_size, h.seq_len, i, tokens.data(), targets.data());
      sum += model.forward(params.data(), tokens.data(), targets.data()).ce;
    }
    return sum / double(h.eval_batches);
  };

  const std::string log_path = o.out_dir + "/train_log.csv";
  const std::string prev_log = o.resume.empty() ? "" : o.resume + "/train_log.csv";
  std::string prev_copy;
  if (!prev_log.empty() && fs::exists(prev_log)) {  // read before the new log truncates it (same folder)
    prev_copy = o.out_dir + "/train_log.csv.prev";
    fs::copy_file(prev_log, prev_copy, fs::copy_options::overwrite_existing);
  }
  CsvLog log(log_path, prev_copy, prog.step);
  if (!prev_copy.empty()) fs::remove(prev_copy, ec);

  const bool tty = o.progress_bar && isatty(2);
  TrainResult result;
  const auto t0 = Clock::now();
  const double elapsed0 = prog.elapsed_s;
  const int64_t first = prog.step;
  const int64_t last = o.stop_after > 0 ? std::min(h.steps, first + o.stop_after) : h.steps;
  for (int64_t step = first; step < last; ++step) {
    // ---- one optimizer step: accumulate the gradient of grad_accum micro-batches
    std::fill(grads.begin(), grads.end(), 0.0f);
    Losses loss;
    for (int64_t micro = 0; micro < h.grad_accum; ++micro) {
      sample_batch(corpus.train, h.batch_size, h.seq_len, h.seed, step, micro, tokens.data(), targets.data());
      const Losses l = model.forward(params.data(), tokens.data(), targets.data());
      model.backward(params.data(), grads.data(), 1.0f / float(h.grad_accum));
      loss.ce += l.ce / double(h.grad_accum);
      loss.aux += l.aux / double(h.grad_accum);
      loss.z += l.z / double(h.grad_accum);
    }
    const double gnorm = global_norm(grads.data(), grads.size(), pool);
    if (h.grad_clip > 0 && gnorm > h.grad_clip) scale_in_place(grads.data(), grads.size(), float(h.grad_clip / gnorm), pool);
    const double lr = learning_rate(h, step);
    opt.step(layout, params.data(), grads.data(), h, lr, pool);
    if (!std::isfinite(loss.total())) fail("training", "the loss diverged at step " + std::to_string(step + 1));

    prog.step = step + 1;
    prog.tokens_seen += tokens_per_step;
    const double run_s = std::chrono::duration<double>(Clock::now() - t0).count();
    prog.elapsed_s = elapsed0 + run_s;
    result.losses.push_back(loss.total());
    const double tps = double((step + 1 - first) * tokens_per_step) / std::max(run_s, 1e-9);

    const bool at_end = prog.step == last;
    double eval_loss = 0;
    if (at_end || (h.eval_every > 0 && prog.step % h.eval_every == 0)) {
      eval_loss = evaluate();
      prog.eval_loss = eval_loss;
    }
    log.row(prog.step, lr, loss, gnorm, prog.tokens_seen, tps, prog.elapsed_s, eval_loss);

    // ---- progress: step, loss, tokens/s, ETA
    const double eta = run_s / double(step + 1 - first) * double(last - step - 1);
    if (o.progress_bar) {
      char bar[21];
      const int filled = int(20 * prog.step / h.steps);
      for (int i = 0; i < 20; ++i) bar[i] = i < filled ? '#' : '.';
      bar[20] = 0;
      if (tty || eval_loss > 0 || prog.step % 50 == 0 || at_end)
        std::fprintf(stderr, "%sstep %lld/%lld [%s] loss %.4f (aux %.4f) | %.0f tok/s | ETA %s   %s",
                     tty ? "\r" : "", (long long)prog.step, (long long)h.steps, bar, loss.total(), loss.aux, tps,
                     hms(eta).c_str(), tty ? "" : "\n");
      if (eval_loss > 0)
        std::fprintf(stderr, "%sheld-out: loss %.4f, perplexity %.2f (after %lld tokens, %s)\n", tty ? "\n" : "",
                     eval_loss, std::exp(eval_loss), (long long)prog.tokens_seen, hms(prog.elapsed_s).c_str());
    }
    if (at_end || (h.save_every > 0 && prog.step % h.save_every == 0))
      save_checkpoint(o.out_dir, cfg, layout, params.data(), opt, prog, tok_path);
  }
  if (first >= last) save_checkpoint(o.out_dir, cfg, layout, params.data(), opt, prog, tok_path);
  result.eval_loss = prog.eval_loss;
  result.progress = prog;
  return result;
}

}  // namespace mixtral::train
