// mixtral: the command-line frontend. Each subcommand is a thin layer over the engine:
// parse flags, load the model, call the library, print. Errors from anywhere below arrive as
// mixtral::Error and leave as one line on stderr with exit status 1.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_common.h"
#include "quantize_files.h"
#include "core/error.h"
#include "engine/session.h"
#include "model/export_gguf.h"
#include "model/model.h"
#include "sample/sampler.h"
#include "text/chat.h"
#include "text/tokenizer.h"


using namespace mixtral;
using namespace mixtral::cli;

namespace {

std::string json_ids(const std::vector<int32_t>& ids) { return nlohmann::json(ids).dump(); }

int cmd_tokenize(const ModelFlags& mf, const PromptFlags& pf, bool no_bos, bool pieces) {
  const auto model = mf.load();
  const Tokenizer& tok = model->tokenizer();
  const auto ids = tok.encode(pf.get(), !no_bos);
  if (pieces) {
    nlohmann::json j = nlohmann::json::array();
    for (int32_t id : ids) j.push_back({{"id", id}, {"piece", tok.piece(id)}});
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << json_ids(ids) << "\n";
  }
  return 0;
}

int cmd_logits(const ModelFlags& mf, const PromptFlags& pf, const std::string& out_path) {
  const auto model = mf.load();
  const auto ids = model->tokenizer().encode(pf.get(), true);
  // One pass over the whole prompt, as the reference logits were computed.
  ModelFlags one = mf;
  one.batch = std::max<int64_t>(int64_t(ids.size()), 1);
  const int64_t n_ctx = std::max<int64_t>(mf.context(*model), int64_t(ids.size()));
  if (n_ctx > model->config().max_context)
    fail("prompt", std::to_string(ids.size()) + " tokens exceed the model's context of " +
                       std::to_string(model->config().max_context));
  Session session(*model, one.session(n_ctx));
  const auto& logits = session.eval(ids, /*all_logits=*/true);
  std::ofstream out(out_path, std::ios::binary);
  if (!out) fail(out_path, "cannot open for writing");
  out.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * sizeof(float)));
  if (!out) fail(out_path, "write failed");
  std::cerr << "wrote " << ids.size() << " x " << model->config().vocab_size << " float32 logits to " << out_path << "\n";
  return 0;
}

int cmd_generate(const ModelFlags& mf, const PromptFlags& pf, const SampleFlags& sf, int64_t n_predict, bool ids_out,
                 bool ignore_eos, bool verbose) {
  const auto model = mf.load();
  const Tokenizer& tok = model->tokenizer();
  const auto prompt = tok.encode(pf.get(), true);
  const int64_t n_ctx = mf.context(*model);
  if (int64_t(prompt.size()) >= n_ctx)
    fail("prompt", std::to_string(prompt.size()) + " tokens do not fit in the context of " + std::to_string(n_ctx) +
                       " (raise --ctx-size)");
  Session session(*model, mf.session(n_ctx));
  Sampler sampler(sf.p);
  std::vector<int32_t> history = prompt, generated;
  StreamDecoder text(tok);

  const auto t0 = Clock::now();
  std::vector<float> logits = session.eval(prompt);
  const double t_prompt = seconds_since(t0);
  const auto t1 = Clock::now();
  for (int64_t i = 0; i < n_predict && session.n_past() < n_ctx; ++i) {
    const int32_t id = sampler.sample(logits.data(), model->config().vocab_size, history);
    if (id == tok.eos() && !ignore_eos) break;
    history.push_back(id);
    generated.push_back(id);
    if (!ids_out) {
      std::cout << text.feed(id) << std::flush;
    }
    if (i + 1 < n_predict && session.n_past() < n_ctx) logits = session.eval({id});
  }
  if (ids_out) {
    std::cout << json_ids(generated) << "\n";
  } else {
    std::cout << text.flush() << std::endl;  // before the timings on stderr
  }
  const double t_gen = seconds_since(t1);
  if (verbose)
    std::fprintf(stderr, "prompt: %zu tokens in %.2f s (%.1f tok/s); generated: %zu tokens in %.2f s (%.2f tok/s)\n",
                 prompt.size(), t_prompt, double(prompt.size()) / t_prompt, generated.size(), t_gen,
                 generated.empty() ? 0.0 : double(generated.size()) / t_gen);
  if (verbose && model->expert_cache()) std::fprintf(stderr, "%s\n", cache_summary(*model).c_str());
  return 0;
}

int cmd_chat(const ModelFlags& mf, const SampleFlags& sf, const std::string& system, int64_t n_predict) {
  const auto model = mf.load();
  const Tokenizer& tok = model->tokenizer();
  Session session(*model, mf.session(mf.context(*model)));
  Sampler sampler(sf.p);
  std::vector<ChatMessage> messages;
  std::vector<int32_t> cached;  // the tokens in the KV cache
  std::optional<std::string> sys = system.empty() ? std::nullopt : std::optional<std::string>(system);
  std::cerr << "mixtral chat: " << to_string(model->config()) << "\n"
            << "Type a message and press Enter; an empty line or Ctrl-D ends the chat.\n";
  std::string line;
  while (true) {
    std::cout << "\n> " << std::flush;
    if (!std::getline(std::cin, line) || line.empty()) break;
    messages.push_back({"user", line});
    std::vector<int32_t> ids;
    try {
      ids = encode_chat_v1(tok, messages, sys);
    } catch (const Error& e) {
      std::cerr << "error: " << e.what() << "\n";
      messages.pop_back();
      continue;
    }
    // Each message is encoded on its own, so the conversation so far is a prefix of the new
    // encoding: only the new tokens need a forward pass.
    size_t common = 0;
    while (common < cached.size() && common < ids.size() && cached[common] == ids[common]) ++common;
    if (common == ids.size()) common = ids.size() - 1;  // always evaluate at least one token
    if (int64_t(ids.size()) + 1 >= session.n_ctx()) {
      std::cerr << "error: the conversation no longer fits in the context of " << session.n_ctx() << " tokens\n";
      break;
    }
    session.truncate(int64_t(common));
    std::vector<float> logits = session.eval(std::vector<int32_t>(ids.begin() + common, ids.end()));
    cached = ids;
    StreamDecoder text(tok);
    std::vector<int32_t> answer;
    std::vector<int32_t> history = ids;
    for (int64_t i = 0; i < n_predict && session.n_past() < session.n_ctx(); ++i) {
      const int32_t id = sampler.sample(logits.data(), model->config().vocab_size, history);
      if (id == tok.eos()) break;
      answer.push_back(id);
      history.push_back(id);
      cached.push_back(id);
      std::cout << text.feed(id) << std::flush;
      if (session.n_past() < session.n_ctx()) logits = session.eval({id});
    }
    std::cout << text.flush() << std::endl;  // before the timings on stderr
    messages.push_back({"assistant", tok.decode(answer)});
  }
  return 0;
}

std::string human(int64_t n) {
  char buf[32];
  if (n >= 1000000000) std::snprintf(buf, sizeof buf, "%.1fB", double(n) / 1e9);
  else if (n >= 1000000) std::snprintf(buf, sizeof buf, "%.1fM", double(n) / 1e6);
  else std::snprintf(buf, sizeof buf, "%.1fK", double(n) / 1e3);
  return buf;
}

void print_config(const Config& c) {
  std::cout << "architecture:     " << c.arch << (c.is_moe() ? " (sparse mixture of experts)" : " (dense)") << "\n"
            << "hidden size:      " << c.dim << "\n"
            << "layers:           " << c.n_layers << "\n"
            << "attention heads:  " << c.n_heads << " query, " << c.n_kv_heads << " key/value, head dim " << c.head_dim << "\n"
            << "ffn size:         " << c.ffn_dim << (c.is_moe() ? " per expert" : "") << "\n";
  if (c.is_moe()) std::cout << "experts:          " << c.n_experts << ", top-" << c.n_experts_used << " per token\n";
  std::cout << "vocabulary:       " << c.vocab_size << "\n"
            << "context:          " << c.max_context << (c.sliding_window ? ", sliding window " + std::to_string(c.sliding_window) : "") << "\n"
            << "rope theta:       " << c.rope_theta << "\n"
            << "rms norm eps:     " << c.norm_eps << "\n"
            << "parameters:       " << human(c.params_total()) << " total (" << c.params_total() << "), "
            << human(c.params_active()) << " active per token (" << c.params_active() << ")\n";
}

int cmd_info(std::string model_path, const std::string& preset, int64_t experts_per_token) {
  if (!preset.empty()) {
    Config c = Config::preset(preset);
    if (experts_per_token > 0) {
      if (experts_per_token > c.n_experts) fail("--experts-per-token", "more than the model's experts");
      c.n_experts_used = experts_per_token;
    }
    std::cout << "preset:           " << preset << "\n";
    print_config(c);
    return 0;
  }
  if (model_path.empty()) model_path = default_model_path();
  if (model_path.empty()) fail("info", "give -m MODEL or --preset NAME");
  LoadOptions o;
  if (experts_per_token > 0) o.experts_per_token = experts_per_token;
  print_gguf_file_summary(model_path);  // before loading: also for files this engine cannot run
  const auto model = Model::load(model_path, o);
  std::cout << "model:            " << model_path << " (" << model->format() << ")\n";
  print_config(model->config());
  std::cout << "weights:          " << model->dtype_summary() << "\n"
            << "weight bytes:     " << model->weight_bytes() << "\n"
            << "tokenizer:        " << (model->has_tokenizer() ? std::to_string(model->tokenizer().n_vocab()) + " pieces" : "none") << "\n";
  return 0;
}

int cmd_quantize(const std::string& in, const std::string& out, const std::string& type, bool per_expert,
                 const std::string& imatrix, int threads) {
  if (!per_expert && llama_quantize({in, out, type, imatrix, threads})) return 0;
  if (!imatrix.empty()) fail("--imatrix", "not with --per-expert");
  ExportOptions o;
  std::string t = type;
  for (char& ch : t) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (t == "q4_k_m") {
    o.type = DType::Q4_K;
    o.k_quant_mix = true;
  } else {
    const auto d = dtype_from_name(t);
    if (!d)
      fail("--type", "\"" + type + "\" is unknown: f32, f16, bf16, q8_0, q4_0, q4_k, q4_k_m, q6_k (or another tensor type); from an F32/F16/BF16 GGUF also llama.cpp's file types (" + llama_file_type_names() + ")");
    o.type = *d;
  }
  o.per_expert_layout = per_expert;
  const auto t0 = Clock::now();
  o.progress = parameter_progress("quantize", t0);
  LoadOptions lo;
  lo.tiles = false;  // (mapped files are never tiled anyway) export_gguf reads weights in file order
  const auto model = Model::load(in, lo);
  export_gguf(*model, out, o);
  std::fprintf(stderr, "\nwrote %s (%s) in %.1f s\n", out.c_str(), type.c_str(), seconds_since(t0));
  return 0;
}

}  // namespace

namespace mixtral::cli {
void add_bench_command(CLI::App& app, Commands& commands);
void add_serve_command(CLI::App& app, Commands& commands);
void add_train_command(CLI::App& app, Commands& commands);
void add_routes_command(CLI::App& app, Commands& commands);
void add_perplexity_command(CLI::App& app, Commands& commands);
void add_make_model_command(CLI::App& app, Commands& commands);
void add_imatrix_command(CLI::App& app, Commands& commands);
}  // namespace mixtral::cli

int main(int argc, char** argv) {
  CLI::App app{"mixtral: run, inspect and chat with Mixtral-family sparse mixture-of-experts models"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every command");

  ModelFlags mf;
  PromptFlags pf;
  SampleFlags sf;

  auto* gen = app.add_subcommand("generate", "continue a prompt, streaming the text");
  mf.add(gen);
  pf.add(gen);
  sf.add(gen);
  int64_t n_predict = 128;
  bool ids_out = false, ignore_eos = false, verbose = false;
  gen->add_option("-n,--n-predict", n_predict, "tokens to generate");
  gen->add_flag("--ids", ids_out, "print the generated ids as a JSON array instead of text");
  gen->add_flag("--ignore-eos", ignore_eos, "keep generating after the end-of-sequence token");
  gen->add_flag("-v,--verbose", verbose, "print timings to stderr");

  auto* chat = app.add_subcommand("chat", "interactive multi-turn chat in the Mixtral Instruct format");
  ModelFlags cmf;
  SampleFlags csf;
  std::string system;
  int64_t chat_n = 512;
  cmf.add(chat);
  csf.add(chat);
  chat->add_option("-s,--system", system, "system prompt (placed before the first user message)");
  chat->add_option("-n,--n-predict", chat_n, "most tokens per answer");

  auto* tokenize = app.add_subcommand("tokenize", "print the token ids of a text as a JSON array");
  ModelFlags tmf;
  PromptFlags tpf;
  bool no_bos = false, pieces = false;
  tmf.add(tokenize, false);
  tpf.add(tokenize);
  tokenize->add_flag("--no-bos", no_bos, "do not start with the BOS token");
  tokenize->add_flag("--pieces", pieces, "print {id, piece} objects");

  auto* logits = app.add_subcommand("logits", "write the float32 logits of every prompt position to a file");
  ModelFlags lmf;
  PromptFlags lpf;
  std::string out_path;
  lmf.add(logits);
  lpf.add(logits);
  logits->add_option("-o,--output", out_path, "output file: float32 little-endian [n_tokens][n_vocab]")->required();

  auto* info = app.add_subcommand("info", "architecture, dtypes and parameter counts of a model or preset");
  std::string info_model, preset;
  int64_t info_k = 0;
  info->add_option("-m,--model", info_model, "Hugging Face directory or .gguf file");
  info->add_option("--preset", preset, "a published configuration: mixtral-8x7b, mixtral-8x22b, mistral-7b");
  info->add_option("--experts-per-token", info_k, "override the router's top-k");

  // quantize and convert are one conversion; convert is its common use (HF -> GGUF, F16 by default).
  struct ConvertFlags {
    std::string in, out, type, imatrix;
    bool per_expert = false;
    int threads = 0;
  };
  auto add_conversion = [&](const char* name, const char* help, ConvertFlags& f) {
    auto* cmd = app.add_subcommand(name, help);
    cmd->add_option("input", f.in, "Hugging Face directory or .gguf file")->required();
    cmd->add_option("output", f.out, "the .gguf file to write")->required();
    cmd->add_option("--type", f.type,
                    "f32, f16, bf16, q8_0, q4_0, q4_k, q4_k_m (Q4_K with Q6_K for attn_v/ffn_down/output), q6_k; from an "
                    "F32/F16/BF16 GGUF: llama.cpp's file types, as llama-quantize makes them (case-insensitive: " +
                        llama_file_type_names() + ")");
    cmd->add_option("--imatrix", f.imatrix, "llama.cpp importance matrix (.imatrix) for llama.cpp file types; IQ1_S, IQ1_M, IQ2_S, IQ2_XXS, IQ2_XS need one");
    cmd->add_option("-t,--threads", f.threads, "threads for llama.cpp file types (default: all cores; the file does not depend on it)");
    cmd->add_flag("--per-expert", f.per_expert, "one tensor per expert (the early Mixtral GGUF layout)");
    return cmd;
  };
  ConvertFlags qf{"", "", "q8_0"}, cf{"", "", "f16"};
  auto* quantize = add_conversion("quantize", "convert a model (HF directory or GGUF) to a GGUF file of another type", qf);
  auto* convert = add_conversion("convert", "convert a Hugging Face checkpoint (or GGUF) to GGUF; quantize with --type f16 by default", cf);

  // Commands that live in their own tools/cmd_*.cpp files register here.
  Commands commands;
  add_bench_command(app, commands);
  add_serve_command(app, commands);
  add_train_command(app, commands);
  add_routes_command(app, commands);
  add_perplexity_command(app, commands);
  add_make_model_command(app, commands);
  add_imatrix_command(app, commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*gen) return cmd_generate(mf, pf, sf, n_predict, ids_out, ignore_eos, verbose);
    if (*chat) return cmd_chat(cmf, csf, system, chat_n);
    if (*tokenize) return cmd_tokenize(tmf, tpf, no_bos, pieces);
    if (*logits) return cmd_logits(lmf, lpf, out_path);
    if (*info) return cmd_info(info_model, preset, info_k);
    if (*quantize) return cmd_quantize(qf.in, qf.out, qf.type, qf.per_expert, qf.imatrix, qf.threads);
    if (*convert) return cmd_quantize(cf.in, cf.out, cf.type, cf.per_expert, cf.imatrix, cf.threads);
    for (auto& [sub, run] : commands)
      if (*sub) return run();
  } catch (const Error& e) {
    std::fprintf(stderr, "mixtral: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "mixtral: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mixtral: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
