// `mixtral make-model`: a random-weight model of a published shape (full depth by default),
// quantized and written as GGUF one tensor at a time (src/model/random_model.h), so anyone can
// make the 26 GB Mixtral 8x7B Q4_0 of the offloading benchmark without the real weights.
#include <cstdio>
#include <filesystem>

#include "cli_common.h"
#include "quant/quantize.h"
#include "model/random_model.h"
#include "text/sentencepiece_model.h"

using namespace mixtral;
using namespace mixtral::cli;

namespace {

struct MakeModelFlags {
  std::string preset = "mixtral-8x7b", type = "q4_0", tokenizer, out;
  int64_t layers = 0, experts = 0;
  uint64_t seed = 1;
  int threads = 0;
};

// Mistral's 32000-piece tokenizer.model as ../shared keeps it, next to the checkout (looked up
// from the working directory and from the binary, build/mixtral); "" when absent.
std::string default_tokenizer() {
  namespace fs = std::filesystem;
  const fs::path rel = fs::path("shared") / "tokenizers" / "tokenizer.model.v1";
  std::vector<fs::path> candidates = {fs::path("..") / rel};
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) candidates.push_back(exe.parent_path() / ".." / ".." / rel);
  for (const auto& c : candidates)
    if (fs::is_regular_file(c, ec)) return fs::weakly_canonical(c, ec).string();
  return "";
}

int run_make_model(const MakeModelFlags& f) {
  RandomPreset preset = random_model_preset(f.preset);
  Config& c = preset.config;
  if (f.layers < 0 || f.experts < 0) fail("make-model", "--layers and --experts must be positive");
  if (f.layers > 0) c.n_layers = f.layers;
  if (f.experts > 0) {
    if (!c.is_moe()) fail("--experts", "preset " + f.preset + " is dense (no experts)");
    c.n_experts = f.experts;
    c.n_experts_used = std::min(c.n_experts_used, c.n_experts);
  }
  c.validate("make-model");
  RandomModelOptions o;
  const auto type = dtype_from_name(f.type);
  if (!type) fail("--type", "unknown type \"" + f.type + "\" (a tensor type such as q4_0, q5_k, iq4_xs, or bf16, f16, f32)");
  if (quantize_requires_imatrix(*type))
    fail("--type", std::string(dtype_name(*type)) + " needs an importance matrix: make an F32/F16 model, then `mixtral quantize --imatrix`");
  o.type = *type;
  o.seed = f.seed;
  o.threads = f.threads;
  o.std_qk = preset.std_qk;
  o.name = "random " + f.preset + " (seed " + std::to_string(f.seed) + ")";
  const std::string tok = f.tokenizer.empty() ? default_tokenizer() : f.tokenizer;
  if (tok.empty())
    fail("--tokenizer", "no tokenizer found (looked for ../shared/tokenizers/tokenizer.model.v1): give the path of a "
                        "SentencePiece tokenizer.model with " + std::to_string(c.vocab_size) + " pieces");
  const Vocab vocab = load_sentencepiece_model(tok);

  const auto t0 = Clock::now();
  o.progress = parameter_progress("make-model", t0);
  make_random_gguf(c, vocab, f.out, o);
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(f.out, ec);
  std::fprintf(stderr, "\nwrote %s: %s, %lld layers, %lld experts, %.2fB parameters, %.2f GB, in %.1f s\n", f.out.c_str(),
               dtype_name(o.type), (long long)c.n_layers, (long long)c.n_experts, double(c.params_total()) / 1e9,
               double(bytes) / 1e9, seconds_since(t0));
  return 0;
}

}  // namespace

namespace mixtral::cli {

void add_make_model_command(CLI::App& app, Commands& commands) {
  auto* cmd = app.add_subcommand(
      "make-model",
      "write a random-weight model of a published shape as GGUF, one tensor at a time (memory: one tensor)");
  cmd->footer(
      "Weights: uniform draws with the stds of ../shared/fixtures/gen_mixtral.py (0.02 for matrices,\n"
      "1 + 0.05x for norms, router logits of std ~5.66) from a counter-based hash of (seed, tensor, row,\n"
      "column): the same bytes for a seed whatever the thread count; fewer --layers/--experts give the\n"
      "first layers/experts of the full model. Experts are stacked (blk.N.ffn_*_exps) as llama.cpp writes\n"
      "them; the tokenizer is embedded. q4_k uses ggml's reference quantizer: ~35x slower (~1.5 h for 8x7B).\n"
      "Example (the offloading benchmark's model: 26.3 GB, ~2.5 min on 2 cores):\n"
      "  mixtral make-model --preset mixtral-8x7b --type q4_0 -o mixtral-8x7b-q4_0.gguf");
  auto f = std::make_shared<MakeModelFlags>();
  cmd->add_option("--preset", f->preset, "mixtral-8x7b, mixtral-8x22b, mistral-7b, or tiny (the test fixtures' shape)")->capture_default_str();
  cmd->add_option("--type", f->type, "weight type: any tensor type with a quantizer (q4_0, q5_k, iq4_xs, ...; not iq2_xxs/iq2_xs/iq1_s, which need an imatrix), bf16, f16, f32 (norms and routers stay F32)")
      ->capture_default_str();
  cmd->add_option("--layers", f->layers, "layers (default: the preset's)");
  cmd->add_option("--experts", f->experts, "experts per layer (default: the preset's; top-k stays at most this)");
  cmd->add_option("--seed", f->seed, "random seed (same seed, same bytes)")->capture_default_str();
  cmd->add_option("--tokenizer", f->tokenizer,
                  "SentencePiece tokenizer.model to embed (default: ../shared/tokenizers/tokenizer.model.v1)");
  cmd->add_option("-t,--threads", f->threads, "threads (default: all cores; the output does not depend on it)");
  cmd->add_option("-o,--output", f->out, "the .gguf file to write")->required();
  commands.emplace_back(cmd, [f] { return run_make_model(*f); });
}

}  // namespace mixtral::cli
