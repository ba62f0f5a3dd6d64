// `mixtral make-model`: a random-weight model of a published shape (full depth by default),
// quantized and written as GGUF one tensor at a time (src/model/random_model.h), so anyone can
// make the 26 GB Mixtral 8x7B Q4_0 of the offloading benchmark without the real weights.
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>

#include "cli_common.h"
#include "quant/quantize.h"
#include "model/quant_mix.h"
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
  bool uniform = false;
};

std::string upper(std::string s) {
  for (char& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// Whether llama-quantize makes file type `ft` of a Mixtral without an importance matrix: not
// when the file type needs one, nor when its mix puts a tensor in a type that does (IQ3_XXS and
// IQ2_M give attn_q IQ2_S). Asked of quant_mix's rules for the tiny-q shape (no quantizer runs).
bool without_imatrix(const FileTypeInfo& ft) {
  if (ft.needs_imatrix) return false;
  const Config c = random_model_preset("tiny-q").config;
  const std::vector<TensorDesc> tensors = llama_quantize_order(random_model_tensors(c));
  const MixModel m{int(c.n_layers), int(c.n_experts), int(c.n_heads), int(c.n_kv_heads), false};
  for (const PlannedTensor& p : plan_quant_types(ft.id, m, tensors, std::vector<DType>(tensors.size(), DType::F32)))
    if (tensor_needs_imatrix(ft.id, p.tensor.name, p.type)) return false;
  return true;
}

// The file types make-model writes.
std::string file_type_names() {
  std::string s;
  for (const FileTypeInfo& i : all_file_types())
    if (without_imatrix(i)) s += std::string(s.empty() ? "" : ", ") + i.name;
  return s;
}

// The tensor types --uniform takes (those ggml quantizes without an importance matrix).
std::string tensor_type_names() {
  std::string s;
  for (DType t : kAllDTypes)
    if (!quantize_requires_imatrix(t)) s += std::string(s.empty() ? "" : ", ") + dtype_name(t);
  return s;
}

// --type: the exact name of a llama.cpp file type means llama-quantize's mix of it, as in
// `mixtral quantize`; any other tensor type name (Q3_K, Q4_K and Q5_K, which llama-quantize
// reads as the _M mixes, included, as quantize keeps them), or --uniform, means that type for
// every matrix.
void parse_type(const MakeModelFlags& f, RandomModelOptions& o) {
  const std::optional<FileType> ft = file_type_from_name(f.type);
  if (ft && upper(f.type) == file_type_info(*ft).name && !f.uniform) {
    o.file_type = *ft;
    return;
  }
  const auto type = dtype_from_name(f.type);
  if (!type)
    fail("--type", "unknown type \"" + f.type + "\": a file type (" + file_type_names() +
                       ") or, for every matrix, a tensor type (" + tensor_type_names() + ")" +
                       (ft ? "; --uniform takes tensor types only" : ""));
  if (quantize_requires_imatrix(*type))
    fail("--type", std::string(dtype_name(*type)) + " needs an importance matrix: make an F32/F16 model, then `mixtral quantize --imatrix`");
  o.type = *type;
}

// The tensors of each type, as `info` counts them: "Q3_K 97, Q5_K 34, ...".
std::string type_counts(const std::vector<PlannedTensor>& plan) {
  std::map<std::string, int> n;
  for (const PlannedTensor& p : plan) ++n[dtype_name(p.type)];
  std::string s;
  for (const auto& [name, count] : n) s += (s.empty() ? "" : ", ") + name + " " + std::to_string(count);
  return s;
}

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
  parse_type(f, o);
  // Refusals (importance matrix, missing quantizer) before the tokenizer is read.
  std::vector<PlannedTensor> plan;
  if (o.file_type) {
    try {
      plan = random_model_plan(c, *o.file_type);
    } catch (const Error& e) {
      const auto same = dtype_from_name(f.type);
      if (!same || quantize_requires_imatrix(*same)) throw;
      throw Error(std::string(e.what()) + " (--uniform: every matrix " + dtype_name(*same) + ")");
    }
  }
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
  const std::string what = o.file_type ? std::string(file_type_info(*o.file_type).name) + " (" + type_counts(plan) + ")"
                                       : std::string(dtype_name(o.type));
  std::fprintf(stderr, "\nwrote %s: %s, %lld layers, %lld experts, %.2fB parameters, %.2f GB, in %.1f s\n", f.out.c_str(),
               what.c_str(), (long long)c.n_layers, (long long)c.n_experts, double(c.params_total()) / 1e9,
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
      "them; the tokenizer is embedded.\n"
      "--type takes a llama.cpp file type (each tensor gets the type llama-quantize gives it for this\n"
      "shape, as `mixtral quantize` does; general.file_type is recorded):\n  " + file_type_names() + "\n"
      "or a tensor type for every matrix (also with --uniform, for a name that is both):\n  " + tensor_type_names() + "\n"
      "The others need an importance matrix (IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M, Q2_K_S; on Mixtral also\n"
      "IQ2_M and IQ3_XXS, which put attn_q in IQ2_S) and are refused. The K quantizers are ggml's reference\n"
      "ones: much slower than Q4_0 (all-Q4_K 8x7B: ~1.5 h on 2 cores).\n"
      "Examples (the offloading benchmark's all-Q4_0 model: 26.3 GB, ~2.5 min on 2 cores; llama-quantize's\n"
      "Q3_K_M mix of the 8x7B shape: 22.55 GB, 3.86 bits per weight, ~18 min on 2 shared cores):\n"
      "  mixtral make-model --preset mixtral-8x7b --uniform --type q4_0 -o mixtral-8x7b-q4_0.gguf\n"
      "  mixtral make-model --preset mixtral-8x7b --type q3_k_m -o mixtral-8x7b-q3_k_m.gguf");
  auto f = std::make_shared<MakeModelFlags>();
  cmd->add_option("--preset", f->preset, "mixtral-8x7b, mixtral-8x22b, mistral-7b, tiny (the test fixtures' shape) or tiny-q (../shared's tiny-q shape: rows of 256)")->capture_default_str();
  cmd->add_option("--type", f->type, "a llama.cpp file type (q3_k_m, q4_k_m, q5_k_s, iq4_xs, ...: llama-quantize's per-tensor mix) or a tensor type for every matrix (q5_k, bf16, ...); norms and routers stay F32")
      ->capture_default_str();
  cmd->add_flag("--uniform", f->uniform, "--type is a tensor type for every matrix even where it names a file type (q4_0: all Q4_0, not llama-quantize's mix)");
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
