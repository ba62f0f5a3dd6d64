// `mixtral imatrix`: an importance matrix computed from a text, as llama-imatrix computes it
// (analysis/imatrix_collector.h), in its legacy .imatrix file for `quantize --imatrix`.
#include <cstdio>
#include <fstream>
#include <iterator>

#include "analysis/imatrix_collector.h"
#include "cli_common.h"
#include "io/imatrix.h"

using namespace mixtral;
using namespace mixtral::cli;

namespace {

struct ImatrixFlags {
  std::string text, out = "imatrix.dat";
  int64_t chunks = -1;
};

// llama-imatrix's windows: the text, with <s> first, is cut into non-overlapping chunks of
// n_ctx tokens (the tail that does not fill one is dropped); each chunk starts with <s> in
// place of its first token and is evaluated from an empty cache, every one of its tokens
// counting (the first-half/second-half split is only for perplexity, which this does not print).
// The forward passes are batches of at most -b tokens, like llama's ubatches (its ncall counts them).
int cmd_imatrix(const ModelFlags& mf, const ImatrixFlags& f) {
  const auto model = mf.load();
  std::ifstream in(f.text, std::ios::binary);
  if (!in) fail(f.text, "cannot read");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  const Tokenizer& tok = model->tokenizer();
  const std::vector<int32_t> ids = tok.encode(text, true);
  const int64_t n_ctx = mf.ctx > 0 ? mf.context(*model) : std::min<int64_t>(512, model->config().max_context);
  if (int64_t(ids.size()) < 2 * n_ctx)
    fail(f.text, std::to_string(ids.size()) + " tokens; llama-imatrix's method needs at least 2 x " +
                     std::to_string(n_ctx) + " (lower -c)");
  int64_t n_chunks = int64_t(ids.size()) / n_ctx;
  if (f.chunks > 0) n_chunks = std::min(n_chunks, f.chunks);
  ModelFlags one = mf;
  one.batch = std::min(mf.batch, n_ctx);
  Session session(*model, one.session(n_ctx));
  analysis::ImatrixCollector collector(model->config());
  session.set_activation_observer(&collector);
  const auto t0 = Clock::now();
  std::fprintf(stderr, "imatrix: %zu tokens, %lld chunks of %lld\n", ids.size(), (long long)n_chunks, (long long)n_ctx);
  for (int64_t c = 0; c < n_chunks; ++c) {
    std::vector<int32_t> w(ids.begin() + c * n_ctx, ids.begin() + (c + 1) * n_ctx);
    w[0] = tok.bos();
    session.reset();
    session.eval(w);
    std::fprintf(stderr, "\r[%lld/%lld] %.1f s", (long long)(c + 1), (long long)n_chunks, seconds_since(t0));
  }
  std::vector<std::string> skipped;
  const Imatrix m = collector.result(f.text, &skipped);
  for (const auto& name : skipped)
    std::fprintf(stderr, "\nwarning: %s: some expert saw no token of this text; entry left out (as llama-imatrix does)",
                 name.c_str());
  write_imatrix(m, f.out);
  std::fprintf(stderr, "\nwrote %s: %zu entries, %d forward passes (ncall), %lld tokens\n", f.out.c_str(),
               m.entries.size(), m.last_call, (long long)(n_chunks * n_ctx));
  return 0;
}

}  // namespace

namespace mixtral::cli {

void add_imatrix_command(CLI::App& app, Commands& commands) {
  auto* sub = app.add_subcommand("imatrix", "importance matrix of a text for quantize --imatrix (llama-imatrix's method and file)");
  auto mf = std::make_shared<ModelFlags>();
  auto f = std::make_shared<ImatrixFlags>();
  mf->add(sub);
  sub->add_option("-f,--file", f->text, "the calibration text")->required();
  sub->add_option("-o,--output", f->out, "the .imatrix file to write (default imatrix.dat)");
  sub->add_option("--chunks", f->chunks, "use at most this many chunks of -c tokens (default: all)");
  commands.emplace_back(sub, [mf, f] { return cmd_imatrix(*mf, *f); });
}

}  // namespace mixtral::cli
