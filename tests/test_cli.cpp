// The command line as outside checks use it (tokenize, logits, generate, info; -p/-f) and what
// it does with bad input: every class of broken file or prompt gives exit status 1 and one line
// on stderr naming the file and the problem; never a crash, a hang or silent garbage.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include "reference_data.h"
#include "test_util.h"

using namespace mixtral::testing;
namespace fs = std::filesystem;

namespace {

struct Result {
  int status = -1;  // exit status; 128 + signal when killed
  std::string out, err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// This test process's scratch directory (its files reach ~80 MB: truncated and hostile model
// copies), removed when the process ends.
struct ScratchDir {
  const std::string path = ::testing::TempDir() + "/mixtral-cli-" + std::to_string(::getpid());
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string temp_path(const std::string& name) {
  static const ScratchDir dir;
  fs::create_directories(dir.path);
  return dir.path + "/" + name;
}

// Runs `mixtral ARGS...` with a time limit; captures stdout and stderr.
Result run(const std::vector<std::string>& args, const std::string& stdin_text = "") {
  const std::string out = temp_path("stdout"), err = temp_path("stderr"), in = temp_path("stdin");
  std::ofstream(in, std::ios::binary) << stdin_text;
  std::string cmd = "timeout 120 " + quote(mixtral_bin());
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " <" + quote(in) + " >" + quote(out) + " 2>" + quote(err);
  const int raw = std::system(cmd.c_str());
  Result r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

// A clean failure: status 1, exactly one line on stderr that contains every `needle`.
void expect_clean_error(const Result& r, const std::vector<std::string>& needles) {
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  for (const auto& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "missing '" << n << "' in: " << r.err;
}


std::string copy_dir(const std::string& rel, const std::string& name) {
  const std::string dst = temp_path(name);
  fs::remove_all(dst);
  fs::copy(fixture(rel), dst);
  return dst;
}

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& f) {
  nlohmann::json j = nlohmann::json::parse(read_file(dir + "/config.json"));
  f(j);
  std::ofstream(dir + "/config.json") << j.dump(1);
}

std::string write_bytes(const std::string& name, const std::string& bytes) {
  const std::string p = temp_path(name);
  std::ofstream(p, std::ios::binary) << bytes;
  return p;
}

TEST(Cli, HelpOnEveryCommand) {
  for (const char* c : {"generate", "chat", "tokenize", "logits", "info", "quantize", "convert", "bench", "serve", "routes", "train", "perplexity", "make-model"}) {
    const Result r = run({c, "--help"});
    EXPECT_EQ(r.status, 0) << c;
    EXPECT_NE(r.out.find("--"), std::string::npos) << c;
  }
  EXPECT_EQ(run({"--help"}).status, 0);
}

TEST(Cli, TokenizeMatchesReference) {
  REQUIRE_PATH(fixture("gguf/tiny-f32.gguf"));
  const RefData refs = load_refs(shared_dir() + "/fixtures/refs/tiny-f32");
  for (const auto& p : refs.prompts) {
    // -f reads the prompt byte for byte (the code prompt ends with a newline).
    const std::string file = write_bytes("prompt.txt", p.text);
    for (const std::string& model : {fixture("gguf/tiny-f32.gguf"), fixture("hf/tiny")}) {
      const Result r = run({"tokenize", "-m", model, "-f", file});
      ASSERT_EQ(r.status, 0) << r.err;
      EXPECT_EQ(nlohmann::json::parse(r.out).get<std::vector<int32_t>>(), p.tokens) << p.name;
    }
  }
  const Result nb = run({"tokenize", "-m", fixture("gguf/tiny-f32.gguf"), "-p", "Hello", "--no-bos"});
  ASSERT_EQ(nb.status, 0);
  EXPECT_EQ(nlohmann::json::parse(nb.out), nlohmann::json::parse("[22557]"));
}

TEST(Cli, LogitsFileMatchesReference) {
  REQUIRE_PATH(fixture("gguf/tiny-f32.gguf"));
  const RefData refs = load_refs(shared_dir() + "/fixtures/refs/tiny-f32");
  const auto& p = refs.prompts[1];  // fr
  const std::string out = temp_path("logits.f32");
  const Result r = run({"logits", "-m", fixture("hf/tiny"), "-p", p.text, "-o", out, "-t", "2"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto logits = read_records<float>(out);
  ASSERT_EQ(logits.size(), p.tokens.size() * 32000);
  for (size_t pos = 0; pos < p.tokens.size(); ++pos) {
    const Top40& ref = refs.top40[p.row_offset + pos];
    double num = 0, den = 0;
    for (int i = 0; i < 40; ++i) {
      const double d = logits[pos * 32000 + ref.ids[i]] - ref.values[i];
      num += d * d;
      den += double(ref.values[i]) * ref.values[i];
    }
    EXPECT_LE(std::sqrt(num / den), 1e-4) << pos;
  }
}

TEST(Cli, GreedyGenerateIds) {
  REQUIRE_PATH(fixture("gguf/tiny-f32.gguf"));
  const RefData refs = load_refs(shared_dir() + "/fixtures/refs/tiny-f32");
  const auto& p = refs.prompts[0];
  const Result r = run({"generate", "-m", fixture("gguf/tiny-f32.gguf"), "-p", p.text, "-n", "32", "--temp", "0",
                        "--ids", "--ignore-eos"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out).get<std::vector<int32_t>>(), p.greedy);
  // Text mode streams something printable and finishes.
  const Result t = run({"generate", "-m", fixture("hf/tiny"), "-p", "Once upon a time", "-n", "8", "--seed", "3"});
  EXPECT_EQ(t.status, 0) << t.err;
  EXPECT_FALSE(t.out.empty());
}

TEST(Cli, ChatAnswersAndEndsOnEmptyLine) {
  REQUIRE_PATH(fixture("gguf/tiny-f32.gguf"));
  const Result r = run({"chat", "-m", fixture("gguf/tiny-f32.gguf"), "-n", "4", "--temp", "0"}, "Hello!\nAnd again?\n\n");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_GE(std::count(r.out.begin(), r.out.end(), '>'), 2);
}

TEST(Cli, InfoPresetPrintsPublishedCounts) {
  const Result r = run({"info", "--preset", "mixtral-8x7b"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("46.7B"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("12.9B"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("14336"), std::string::npos);
}

TEST(Cli, InfoOnAModel) {
  REQUIRE_PATH(fixture("gguf/tiny-q4_0.gguf"));
  const Result r = run({"info", "-m", fixture("gguf/tiny-q4_0.gguf")});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("Q4_0"), std::string::npos);
  EXPECT_NE(r.out.find("9.9M total"), std::string::npos) << r.out;  // 9,865,856 parameters
}

// ---- bad input: one test per class --------------------------------------------------------

TEST(BadInput, MissingFile) {
  expect_clean_error(run({"generate", "-m", "/nonexistent/model.gguf", "-p", "x"}), {"/nonexistent/model.gguf", "no such"});
}

TEST(BadInput, TruncatedGguf) {
  REQUIRE_PATH(fixture("gguf/tiny-f32.gguf"));
  const std::string all = read_file(fixture("gguf/tiny-f32.gguf"));
  for (size_t len : {size_t(3), size_t(100), size_t(200000), all.size() / 2, all.size() - 1}) {
    const std::string p = write_bytes("trunc.gguf", all.substr(0, len));
    const Result r = run({"generate", "-m", p, "-p", "x", "-n", "1"});
    expect_clean_error(r, {p});
  }
}

TEST(BadInput, WrongMagic) {
  REQUIRE_PATH(fixture("gguf/tiny-f32.gguf"));
  std::string all = read_file(fixture("gguf/tiny-f32.gguf"));
  all[0] = 'X';
  const std::string p = write_bytes("magic.gguf", all);
  expect_clean_error(run({"info", "-m", p}), {p, "magic"});
}

TEST(BadInput, TensorDataPastEndOfFile) {
  REQUIRE_PATH(fixture("hf/tiny"));
  const std::string dir = copy_dir("hf/tiny", "short-st");
  const std::string st = read_file(dir + "/model.safetensors");
  std::ofstream(dir + "/model.safetensors", std::ios::binary) << st.substr(0, st.size() - 4096);
  expect_clean_error(run({"info", "-m", dir}), {"model.safetensors"});
}

TEST(BadInput, AbsurdDimensions) {
  REQUIRE_PATH(fixture("hf/tiny"));
  const std::string dir = copy_dir("hf/tiny", "absurd");
  edit_config(dir, [](nlohmann::json& j) { j["hidden_size"] = 1000000000; });
  expect_clean_error(run({"info", "-m", dir}), {"config.json", "hidden size"});
  edit_config(dir, [](nlohmann::json& j) { j["hidden_size"] = 128; j["num_key_value_heads"] = 3; });
  expect_clean_error(run({"info", "-m", dir}), {"config.json", "kv head"});
}

TEST(BadInput, MissingTensor) {
  REQUIRE_PATH(fixture("hf/tiny"));
  const std::string dir = copy_dir("hf/tiny", "missing");
  edit_config(dir, [](nlohmann::json& j) { j["num_hidden_layers"] = 3; });
  expect_clean_error(run({"info", "-m", dir}), {dir, "missing tensor model.layers.2."});
}

TEST(BadInput, MisShapedTensor) {
  REQUIRE_PATH(fixture("hf/tiny"));
  const std::string dir = copy_dir("hf/tiny", "misshaped");
  edit_config(dir, [](nlohmann::json& j) { j["intermediate_size"] = 320; });
  expect_clean_error(run({"info", "-m", dir}), {dir, "shape", "expected"});
}

TEST(BadInput, UnsupportedTensorType) {
  // A minimal GGUF v3: one KV, one 32x4 tensor of type 9 (Q8_1: ggml's activation type,
  // never a weight type in GGUF files), which this engine does not run.
  std::string f = "GGUF";
  auto u32 = [&](uint32_t v) { f.append(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [&](uint64_t v) { f.append(reinterpret_cast<const char*>(&v), 8); };
  auto str = [&](const std::string& s) { u64(s.size()); f += s; };
  u32(3);
  u64(1);
  u64(1);
  str("general.architecture");
  u32(8);
  str("llama");
  str("token_embd.weight");
  u32(2);
  u64(32);
  u64(4);
  u32(9);
  u64(0);
  f.resize((f.size() + 31) / 32 * 32, '\0');
  f.append(4 * 36, '\0');
  const std::string p = write_bytes("q8_1.gguf", f);
  expect_clean_error(run({"info", "-m", p}), {p, "token_embd.weight", "type"});
}

TEST(BadInput, PromptLongerThanContext) {
  REQUIRE_PATH(fixture("gguf/tiny-f32.gguf"));
  const Result r = run({"generate", "-m", fixture("gguf/tiny-f32.gguf"), "-c", "16", "-p",
                        "This prompt has clearly more than sixteen tokens in it, so it cannot fit at all."});
  expect_clean_error(r, {"context"});
  const Result l = run({"logits", "-m", fixture("gguf/tiny-f32.gguf"), "-c", "40000", "-p", "x", "-o", temp_path("x.f32")});
  expect_clean_error(l, {"ctx-size"});
}

TEST(BadInput, InvalidUtf8Prompt) {
  REQUIRE_PATH(fixture("gguf/tiny-f32.gguf"));
  const std::string p = write_bytes("bad.txt", std::string("caf\xc3(\xff", 6));
  expect_clean_error(run({"generate", "-m", fixture("gguf/tiny-f32.gguf"), "-f", p}), {"UTF-8"});
  expect_clean_error(run({"tokenize", "-m", fixture("gguf/tiny-f32.gguf"), "-f", p}), {"UTF-8"});
}

TEST(BadInput, NotAModelDirectory) {
  const std::string dir = temp_path("empty-dir");
  fs::create_directories(dir);
  expect_clean_error(run({"info", "-m", dir}), {dir});
}

}  // namespace

namespace {

TEST(Cli, BenchJsonForm) {
  REQUIRE_PATH(fixture("gguf/tiny-q8_0.gguf"));
  const Result r = run({"bench", "-m", fixture("gguf/tiny-q8_0.gguf"), "-p", "16", "-n", "4", "-t", "1,2", "-r", "2",
                        "-o", "json", "--no-mmap"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 4u);
  EXPECT_EQ(j[0]["test"], "pp16");
  EXPECT_EQ(j[1]["test"], "tg4");
  EXPECT_EQ(j[2]["threads"], 2);
  for (const auto& t : j) {
    EXPECT_GT(t["avg_ts"].get<double>(), 0);
    EXPECT_GE(t["stddev_ts"].get<double>(), 0);
    EXPECT_EQ(t["samples_ts"].size(), 2u);
    EXPECT_EQ(t["tiles"], true);  // read into memory: tiled
  }
  // --no-tiles, and a mapped model: in file order (the markdown form says so too).
  const Result nt = run({"bench", "-m", fixture("gguf/tiny-q8_0.gguf"), "-p", "0", "-n", "2", "-r", "1", "-o", "json",
                         "--no-mmap", "--no-tiles"});
  ASSERT_EQ(nt.status, 0) << nt.err;
  EXPECT_EQ(nlohmann::json::parse(nt.out)[0]["tiles"], false);
  const Result md = run({"bench", "-m", fixture("gguf/tiny-q8_0.gguf"), "-p", "0", "-n", "2", "-r", "1"});
  ASSERT_EQ(md.status, 0) << md.err;
  EXPECT_NE(md.out.find("memory-mapped; in file order"), std::string::npos) << md.out;
  expect_clean_error(run({"bench", "-m", fixture("gguf/tiny-q8_0.gguf"), "-p", "1,x"}), {"-p"});
  // -f: real text instead of random tokens.
  const std::string text = temp_path("bench.txt");
  std::ofstream(text) << "Alice was beginning to get very tired of sitting by her sister on the bank.";
  const Result t = run({"bench", "-m", fixture("gguf/tiny-q8_0.gguf"), "-p", "40", "-n", "4", "-r", "1", "-o", "json", "-f", text});
  ASSERT_EQ(t.status, 0) << t.err;
  EXPECT_EQ(nlohmann::json::parse(t.out)[0]["tokens"], text);
  // --measure-limits: the ceiling is the higher probe, and the probes' 1 GiB buffer stays out
  // of the peak RSS (the tiny model needs a few MB).
  const Result m = run({"bench", "-m", fixture("gguf/tiny-q8_0.gguf"), "-p", "0", "-n", "4", "-r", "1", "-o", "json",
                        "--measure-limits"});
  ASSERT_EQ(m.status, 0) << m.err;
  const auto lim = nlohmann::json::parse(m.out)[0];
  const double after = lim["read_bandwidth_after_gbs"].get<double>();
  const double before = lim.value("read_bandwidth_before_gbs", 0.0);
  EXPECT_GT(after, 0);
  EXPECT_EQ(lim["read_bandwidth_gbs"].get<double>(), std::max(before, after));
  EXPECT_LT(lim["peak_rss_gib"].get<double>(), 0.5);
  if (before > 0) {  // the probes around each decode repetition (where VmHWM can be reset)
    const auto reps = lim["rep_read_bandwidth_gbs"].get<std::vector<double>>();
    const auto share = lim["rep_bandwidth_share"].get<std::vector<double>>();
    ASSERT_EQ(reps.size(), 1u);
    ASSERT_EQ(share.size(), 1u);
    EXPECT_GT(reps[0], 0);
    EXPECT_NEAR(share[0], lim["weight_gbs"].get<double>() / reps[0], 1e-9 * share[0]);
    EXPECT_EQ(lim["bandwidth_share"].get<double>(), share[0]);
  }
}

// --memory-budget: the stable bench form carries the cache's figures; generate gives the same
// text; a budget too small, too large or malformed is one clean line.
TEST(Cli, MemoryBudgetBenchAndErrors) {
  const std::string model = fixture("gguf/tiny-q4_0.gguf");
  REQUIRE_PATH(model);
  const Result r = run({"bench", "-m", model, "-p", "0", "-n", "8", "-t", "2", "-r", "1", "--memory-budget", "200M",
                        "--expert-slots", "4", "-o", "json"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["test"], "tg8");
  EXPECT_EQ(j[0]["expert_slots"], 4);
  for (const char* key : {"cache_hit_rate", "bytes_read_per_token", "io_stall_s", "prefetch_accuracy"})
    EXPECT_TRUE(j[0].contains(key)) << key;
  EXPECT_LT(j[0]["cache_hit_rate"].get<double>(), 1.0);  // 4 of 16 experts: some uses must miss
  EXPECT_GT(j[0]["bytes_read_per_token"].get<double>(), 0.0);

  const std::vector<std::string> gen = {"generate", "-m", model, "-p", "Offloaded or not", "-n", "10", "--temp", "0"};
  auto with = gen;
  for (const char* a : {"--memory-budget", "200M", "--expert-slots", "2", "-v"}) with.push_back(a);
  const Result plain = run(gen), offloaded = run(with);
  ASSERT_EQ(offloaded.status, 0) << offloaded.err;
  EXPECT_EQ(plain.out, offloaded.out);
  EXPECT_NE(offloaded.err.find("expert cache: 2 slots"), std::string::npos) << offloaded.err;

  expect_clean_error(run({"generate", "-m", model, "-p", "x", "--memory-budget", "2M"}), {"--memory-budget", "too small"});
  expect_clean_error(run({"generate", "-m", model, "-p", "x", "--memory-budget", "100000G"}),
                     {"--memory-budget", "available"});
  expect_clean_error(run({"generate", "-m", model, "-p", "x", "--memory-budget", "12X"}), {"--memory-budget", "12X"});
  expect_clean_error(run({"generate", "-m", model, "-p", "x", "--expert-slots", "2"}), {"--expert-slots"});
}

TEST(Cli, NoMmapGivesTheSameLogits) {
  REQUIRE_PATH(fixture("gguf/tiny-q4_0.gguf"));
  for (const std::string& model : {fixture("gguf/tiny-q4_0.gguf"), fixture("hf/tiny")}) {
    const std::string a = temp_path("mmap.f32"), b = temp_path("nommap.f32");
    ASSERT_EQ(run({"logits", "-m", model, "-p", "Same bytes either way.", "-o", a}).status, 0);
    ASSERT_EQ(run({"logits", "-m", model, "-p", "Same bytes either way.", "-o", b, "--no-mmap"}).status, 0);
    EXPECT_EQ(read_file(a), read_file(b));
  }
}

}  // namespace

namespace {

// The embedded default model (models/default) is what -m defaults to.
TEST(Cli, DefaultModelGeneratesWithoutDashM) {
  const std::string repo_model = fs::path(mixtral_bin()).parent_path().string() + "/../models/default";
  REQUIRE_PATH(repo_model + "/config.json");
  const Result r = run({"generate", "-p", "ROMEO:", "-n", "12", "--temp", "0"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_GT(r.out.size(), 10u);
  const Result info = run({"info"});
  ASSERT_EQ(info.status, 0) << info.err;
  EXPECT_NE(info.out.find("experts:          8, top-2"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("9.7M total"), std::string::npos) << info.out;
}

}  // namespace

namespace {

TEST(Cli, ConvertHfToGgufKeepsTheLogits) {
  REQUIRE_PATH(fixture("hf/tiny"));
  const std::string out = temp_path("tiny-f16.gguf");
  const Result c = run({"convert", fixture("hf/tiny"), out});
  ASSERT_EQ(c.status, 0) << c.err;
  EXPECT_NE(c.err.find("100%"), std::string::npos) << c.err;  // the progress bar reached the end
  const Result info = run({"info", "-m", out});
  ASSERT_EQ(info.status, 0) << info.err;
  EXPECT_NE(info.out.find("F16"), std::string::npos);
  const std::string a = temp_path("hf.f32"), b = temp_path("gguf.f32");
  ASSERT_EQ(run({"logits", "-m", fixture("hf/tiny"), "-p", "Converted weights.", "-o", a}).status, 0);
  ASSERT_EQ(run({"logits", "-m", out, "-p", "Converted weights.", "-o", b}).status, 0);
  const auto x = read_records<float>(a), y = read_records<float>(b);
  ASSERT_EQ(x.size(), y.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    den += double(x[i]) * x[i];
  }
  EXPECT_LE(std::sqrt(num / den), 2e-3);  // F16 rounding of the weights only
}

TEST(Cli, MakeModelWritesALoadableModel) {
  REQUIRE_PATH(shared_dir() + "/tokenizers/tokenizer.model.v1");
  const std::string out = temp_path("made.gguf");
  const Result r = run({"make-model", "--preset", "tiny", "--layers", "1", "--experts", "4", "--type", "q8_0",
                        "--tokenizer", shared_dir() + "/tokenizers/tokenizer.model.v1", "-t", "1", "-o", out});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("100%"), std::string::npos) << r.err;  // the progress bar reached the end
  EXPECT_NE(r.err.find("wrote " + out), std::string::npos) << r.err;
  const Result info = run({"info", "-m", out});
  ASSERT_EQ(info.status, 0) << info.err;
  EXPECT_NE(info.out.find("layers:           1"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("experts:          4, top-2"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("Q8_0"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("32000 pieces"), std::string::npos) << info.out;
  const Result gen = run({"generate", "-m", out, "-p", "Hello", "-n", "4", "--temp", "0", "--ids", "--ignore-eos"});
  ASSERT_EQ(gen.status, 0) << gen.err;
  EXPECT_EQ(nlohmann::json::parse(gen.out).size(), 4u);
}

TEST(BadInput, MakeModelArguments) {
  const std::string tok = shared_dir() + "/tokenizers/tokenizer.model.v1";
  REQUIRE_PATH(tok);
  const std::string out = temp_path("never.gguf");
  auto make = [&](std::vector<std::string> args) {
    std::vector<std::string> a = {"make-model", "-o", out};
    a.insert(a.end(), args.begin(), args.end());
    return run(a);
  };
  expect_clean_error(make({"--preset", "mixtral-9x9b", "--tokenizer", tok}), {"--preset", "mixtral-9x9b"});
  expect_clean_error(make({"--preset", "tiny", "--type", "q9_x", "--tokenizer", tok}), {"--type", "q9_x"});
  // ggml's tensor types that need importance weights: refused up front, not from a worker thread.
  expect_clean_error(make({"--preset", "tiny", "--type", "iq2_xxs", "--tokenizer", tok}), {"--type", "IQ2_XXS", "importance"});
  // llama.cpp file types whose mix needs importance weights: the file type, or on Mixtral the
  // first tensor it puts in such a type (IQ3_XXS: attn_q in IQ2_S); --uniform is offered where the
  // name is also a tensor type ggml quantizes without them.
  expect_clean_error(make({"--preset", "tiny-q", "--type", "iq1_m", "--tokenizer", tok}),
                     {"--type", "IQ1_M", "importance", "--uniform"});
  expect_clean_error(make({"--preset", "tiny-q", "--type", "q2_k_s", "--tokenizer", tok}), {"--type", "Q2_K_S", "importance"});
  expect_clean_error(make({"--preset", "tiny-q", "--type", "iq3_xxs", "--tokenizer", tok}),
                     {"--type", "IQ3_XXS", "blk.0.attn_q.weight", "IQ2_S", "importance", "--uniform"});
  expect_clean_error(make({"--preset", "tiny-q", "--type", "iq2_m", "--tokenizer", tok}), {"--type", "IQ2_M", "IQ2_S", "importance"});
  expect_clean_error(make({"--preset", "tiny-q", "--uniform", "--type", "q3_k_m", "--tokenizer", tok}),
                     {"--type", "q3_k_m", "--uniform"});
  const Result unknown = make({"--preset", "tiny", "--type", "q4_k_x", "--tokenizer", tok});
  expect_clean_error(unknown, {"q4_k_x", "Q3_K_M", "Q5_K_S", "IQ4_XS", "Q5_K"});
  expect_clean_error(make({"--preset", "tiny", "--tokenizer", temp_path("no-such.model")}), {"no-such.model"});
  expect_clean_error(make({"--preset", "mistral-7b", "--experts", "4", "--tokenizer", tok}), {"--experts", "dense"});
  expect_clean_error(make({"--preset", "tiny", "--layers", "-1", "--tokenizer", tok}), {"--layers"});
  // mixtral-8x22b has 32768 pieces: the 32000-piece tokenizer does not fit (found before writing).
  expect_clean_error(make({"--preset", "mixtral-8x22b", "--layers", "1", "--tokenizer", tok}),
                     {"32000 pieces", "32768"});
  EXPECT_FALSE(fs::exists(out));
  EXPECT_NE(run({"make-model", "--preset", "tiny"}).status, 0);  // -o is required
}

}  // namespace
