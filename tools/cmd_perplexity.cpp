// `mixtral perplexity`: score a text with any model the engine loads, llama-perplexity's way
// (analysis/perplexity.h); with --kl-divergence-base FILE also save the model's log-probabilities
// in llama-perplexity's base file, and with --kl-divergence compare another model against such a
// file (analysis/kl_divergence.h): Δppl, KL-divergence statistics, same top token.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "analysis/kl_divergence.h"
#include "analysis/perplexity.h"
#include "cli_common.h"

using namespace mixtral;
using namespace mixtral::cli;
using analysis::KldAccumulator;

namespace {

struct PerplexityFlags {
  std::string file, kld_base, output = "text";
  bool kld = false;
  int64_t chunks = -1;
};

std::vector<int32_t> read_tokens(const Tokenizer& tok, const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file, "cannot read");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  return tok.encode(text, true);
}

int64_t window_count(int64_t n_tokens, int64_t n_ctx, int64_t chunks, const std::string& file) {
  int64_t n = n_tokens / n_ctx;
  if (n < 1)
    fail(file, std::to_string(n_tokens) + " tokens are fewer than one window of " + std::to_string(n_ctx) + " (lower -c)");
  return chunks > 0 ? std::min(n, chunks) : n;
}

// Plain perplexity; with a base path also the base file of these windows.
int run_perplexity(const ModelFlags& mf, const PerplexityFlags& f) {
  if (f.file.empty()) fail("perplexity", "-f FILE is required (the text to score)");
  const auto model = mf.load();
  const Tokenizer& tok = model->tokenizer();
  const std::vector<int32_t> ids = read_tokens(tok, f.file);
  const int64_t n_ctx = mf.ctx > 0 ? mf.context(*model) : std::min<int64_t>(512, model->config().max_context);
  const int64_t n_chunks = window_count(int64_t(ids.size()), n_ctx, f.chunks, f.file);
  ModelFlags one = mf;
  one.batch = n_ctx;
  Session session(*model, one.session(n_ctx));
  analysis::PerplexityWindows windows(session, tok.bos(), n_ctx);
  const int64_t V = model->config().vocab_size, first = windows.first_scored();

  std::unique_ptr<analysis::KldBaseWriter> base;
  std::vector<uint16_t> rows;
  const int64_t words = analysis::kld_row_words(V);
  if (!f.kld_base.empty()) {
    analysis::KldBaseHeader h{int32_t(n_ctx), int32_t(V), int32_t(n_chunks),
                              std::vector<int32_t>(ids.begin(), ids.begin() + n_chunks * n_ctx)};
    base = std::make_unique<analysis::KldBaseWriter>(f.kld_base, h);
    rows.resize(size_t(analysis::kld_scored_per_window(n_ctx) * words));
  }
  analysis::NllSums nll;
  const auto t0 = Clock::now();
  std::fprintf(stderr, "perplexity: %zu tokens, %lld windows of %lld (scoring the second half of each)\n", ids.size(),
               (long long)n_chunks, (long long)n_ctx);
  for (int64_t c = 0; c < n_chunks; ++c) {
    const std::vector<float>& logits = windows.eval(ids, c);
    for (int64_t j = first; j < n_ctx - 1; ++j) {
      const float* z = logits.data() + j * V;
      const int32_t next = ids[size_t(c * n_ctx + j + 1)];
      nll.add(base ? analysis::encode_log_probs(z, V, next, rows.data() + (j - first) * words)
                   : analysis::token_nll(z, V, next));
    }
    if (base) base->write_window(rows);
    std::fprintf(stderr, "[%lld]%.4f ", (long long)(c + 1), nll.perplexity());
  }
  if (base) base->close();
  std::fprintf(stderr, "\n%lld tokens scored in %.1f s\n", (long long)nll.count, seconds_since(t0));
  if (base) std::fprintf(stderr, "wrote %s (KL-divergence base, llama-perplexity's format)\n", f.kld_base.c_str());
  if (f.output == "json") {
    nlohmann::json j = {{"model", mf.model},    {"file", f.file},       {"n_ctx", n_ctx},
                        {"windows", n_chunks},  {"tokens_scored", nll.count}, {"ppl", nll.perplexity()},
                        {"ppl_error", nll.perplexity_error()}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("Final estimate: PPL = %.4f +/- %.5f\n", nll.perplexity(), nll.perplexity_error());
  }
  return 0;
}

void print_kld_text(const KldAccumulator::Summary& s) {
  std::printf("====== Perplexity statistics ======\n");
  std::printf("Mean PPL(Q)                   : %10.6f ± %10.6f\n", s.ppl.mean, s.ppl.error);
  std::printf("Mean PPL(base)                : %10.6f ± %10.6f\n", s.ppl_base.mean, s.ppl_base.error);
  std::printf("Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%\n", 100 * s.ln_ppl_correlation);
  std::printf("Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", s.ln_ppl_ratio.mean, s.ln_ppl_ratio.error);
  std::printf("Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", s.ppl_ratio.mean, s.ppl_ratio.error);
  std::printf("Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f\n", s.ppl_diff.mean, s.ppl_diff.error);
  std::printf("\n====== KL divergence statistics ======\n");
  std::printf("Mean    KLD: %10.6f ± %10.6f\n", s.kld.mean, s.kld.error);
  std::printf("Maximum KLD: %10.6f\n", s.kld_max);
  std::printf("99.9%%   KLD: %10.6f\n", s.kld_p999);
  std::printf("99.0%%   KLD: %10.6f\n", s.kld_p99);
  std::printf("Median  KLD: %10.6f\n", s.kld_median);
  std::printf("10.0%%   KLD: %10.6f\n", s.kld_p10);
  std::printf(" 5.0%%   KLD: %10.6f\n", s.kld_p5);
  std::printf(" 1.0%%   KLD: %10.6f\n", s.kld_p1);
  std::printf("Minimum KLD: %10.6f\n", s.kld_min);
  std::printf("\n====== Token probability statistics ======\n");
  std::printf("Mean    Δp: %6.3f ± %5.3f %%\n", 100 * s.p_diff.mean, 100 * s.p_diff.error);
  std::printf("Maximum |Δp|: %6.3f%%\n", 100 * s.p_diff_max);
  std::printf("RMS Δp    : %6.3f ± %5.3f %%\n", 100 * s.p_diff_rms.mean, 100 * s.p_diff_rms.error);
  std::printf("Same top p: %6.3f ± %5.3f %%\n", 100 * s.same_top.mean, 100 * s.same_top.error);
}

nlohmann::json kld_json(const KldAccumulator::Summary& s) {
  auto me = [](const analysis::MeanError& m) { return nlohmann::json{{"value", m.mean}, {"error", m.error}}; };
  return {{"tokens_scored", s.count},
          {"ppl", me(s.ppl)},
          {"ppl_base", me(s.ppl_base)},
          {"ln_ppl_correlation", s.ln_ppl_correlation},
          {"ln_ppl_ratio", me(s.ln_ppl_ratio)},
          {"ppl_ratio", me(s.ppl_ratio)},
          {"ppl_diff", me(s.ppl_diff)},
          {"kld", {{"mean", s.kld.mean}, {"error", s.kld.error}, {"max", s.kld_max}, {"p99_9", s.kld_p999},
                   {"p99", s.kld_p99}, {"median", s.kld_median}, {"p10", s.kld_p10}, {"p5", s.kld_p5},
                   {"p1", s.kld_p1}, {"min", s.kld_min}}},
          {"p_diff", me(s.p_diff)},
          {"p_diff_rms", me(s.p_diff_rms)},
          {"p_diff_max", s.p_diff_max},
          {"same_top", me(s.same_top)}};
}

// The model under test over the base file's windows and tokens, against its log-probabilities.
int run_kl_divergence(const ModelFlags& mf, const PerplexityFlags& f) {
  if (f.kld_base.empty()) fail("--kl-divergence", "needs --kl-divergence-base FILE (the reference's saved log-probabilities)");
  analysis::KldBaseReader base(f.kld_base);
  const analysis::KldBaseHeader& h = base.header();
  const auto model = mf.load();
  const int64_t V = model->config().vocab_size, n_ctx = h.n_ctx;
  if (h.n_vocab != V)
    fail(f.kld_base, "the base was made with a vocabulary of " + std::to_string(h.n_vocab) + ", the model has " +
                         std::to_string(V));
  if (mf.ctx > 0 && mf.ctx != n_ctx)
    fail("--ctx-size", "the base file's windows are " + std::to_string(n_ctx) + " tokens (leave -c out)");
  if (n_ctx > model->config().max_context)
    fail(f.kld_base, "windows of " + std::to_string(n_ctx) + " exceed the model's context of " +
                         std::to_string(model->config().max_context));
  const Tokenizer& tok = model->tokenizer();
  if (!f.file.empty()) {
    const std::vector<int32_t> ids = read_tokens(tok, f.file);
    if (ids.size() < h.tokens.size() || !std::equal(h.tokens.begin(), h.tokens.end(), ids.begin()))
      fail(f.file, "does not tokenize to the base file's " + std::to_string(h.tokens.size()) +
                       " tokens (another text, tokenizer or -c)");
  }
  const int64_t n_chunks = f.chunks > 0 ? std::min<int64_t>(f.chunks, h.n_chunks) : h.n_chunks;
  ModelFlags one = mf;
  one.batch = n_ctx;
  Session session(*model, one.session(n_ctx));
  analysis::PerplexityWindows windows(session, tok.bos(), n_ctx);
  const int64_t first = windows.first_scored(), words = analysis::kld_row_words(V);
  KldAccumulator acc;
  std::vector<uint16_t> rows;
  const auto t0 = Clock::now();
  std::fprintf(stderr, "kl-divergence: %lld windows of %lld from %s\n", (long long)n_chunks, (long long)n_ctx,
               f.kld_base.c_str());
  for (int32_t c = 0; c < int32_t(n_chunks); ++c) {
    base.read_window(c, rows);
    const std::vector<float>& logits = windows.eval(h.tokens, c);
    for (int64_t j = first; j < n_ctx - 1; ++j)
      acc.add(logits.data() + j * V, rows.data() + (j - first) * words, V, h.tokens[size_t(c * n_ctx + j + 1)]);
    const auto s = acc.summary();
    std::fprintf(stderr, "[%d] ppl %.4f, KLD %.6f, same top %.2f%%\n", c + 1, s.ppl.mean, s.kld.mean,
                 100 * s.same_top.mean);
  }
  std::fprintf(stderr, "%lld tokens scored in %.1f s\n", (long long)acc.count(), seconds_since(t0));
  const auto s = acc.summary();
  if (f.output == "json") {
    nlohmann::json j = kld_json(s);
    j["model"] = mf.model;
    j["base"] = f.kld_base;
    j["n_ctx"] = n_ctx;
    j["windows"] = n_chunks;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    print_kld_text(s);
  }
  return 0;
}

}  // namespace

namespace mixtral::cli {

void add_perplexity_command(CLI::App& app, Commands& commands) {
  auto* sub = app.add_subcommand("perplexity",
                                 "perplexity of a text file (non-overlapping windows, second half of each scored); "
                                 "KL-divergence against a reference model");
  auto mf = std::make_shared<ModelFlags>();
  auto f = std::make_shared<PerplexityFlags>();
  mf->add(sub);
  sub->add_option("-f,--file", f->file, "the text to score (with --kl-divergence optional: checked against the base's tokens)");
  sub->add_option("--chunks", f->chunks, "score at most this many windows (default: all)")->check(CLI::PositiveNumber);
  sub->add_option("--kl-divergence-base", f->kld_base,
                  "without --kl-divergence: also save this model's log-probabilities to FILE (llama-perplexity's "
                  "format); with it: the saved reference to compare against");
  sub->add_flag("--kl-divergence", f->kld,
                "compare the model against --kl-divergence-base over the base's own tokens and windows: ppl of both, "
                "KL-divergence, same top token");
  sub->add_option("-o,--output", f->output, "text or json")->check(CLI::IsMember({"text", "json"}));
  commands.emplace_back(sub, [mf, f] { return f->kld ? run_kl_divergence(*mf, *f) : run_perplexity(*mf, *f); });
}

}  // namespace mixtral::cli
