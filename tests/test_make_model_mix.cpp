// `mixtral make-model --type FILE_TYPE`: each tensor gets the type llama-quantize gives it in
// that file type (model/quant_mix.h's rule, through random_model_plan), general.file_type is
// recorded, and the file loads and runs. The real 8x7B shape is checked as a plan only (no file);
// files are written for the tiny-q shape (rows of 256, so the K types need no fallback), whose
// llama-quantize tables ../shared/fixtures/refs/tiny-q-<type>/info.json records.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "engine/session.h"
#include "io/gguf.h"
#include "model/model.h"
#include "model/quant_mix.h"
#include "model/random_model.h"
#include "reference_data.h"
#include "text/sentencepiece_model.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::testing;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string tokenizer_path() { return shared_dir() + "/tokenizers/tokenizer.model.v1"; }

std::string temp_file(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/mixtral-make-model-mix-" + std::to_string(::getpid());
  fs::create_directories(dir);
  return dir + "/" + name;
}

std::map<std::string, std::string> plan_by_name(const std::vector<PlannedTensor>& plan) {
  std::map<std::string, std::string> m;
  for (const PlannedTensor& p : plan) m[p.tensor.name] = dtype_name(p.type);
  return m;
}

// "F32 5, Q3_K 7, ...": the per-type counts as `info` prints them.
std::string counts(const std::vector<PlannedTensor>& plan) {
  std::map<std::string, int> n;
  for (const PlannedTensor& p : plan) ++n[dtype_name(p.type)];
  std::string s;
  for (const auto& [name, k] : n) s += (s.empty() ? "" : ", ") + name + " " + std::to_string(k);
  return s;
}

constexpr FileType kMixes[] = {FileType::Q3_K_M, FileType::Q4_K_M, FileType::Q5_K_S};

}  // namespace

// llama-quantize's table (llama-quant.cpp, llama_tensor_get_type at c392e509) for the first
// layer of the 8x7B shape (32 layers, 8 experts, 32/8 heads), stated here rather than derived:
// 8 experts put attn_k/attn_v in Q8_0 and (for Q3_K_M, Q4_K_M, not Q5_K_S) attn_output in
// Q5_K; ffn_down gets Q5_K in the first sixteenth (Q3_K_M) / Q6_K in the use_more_bits layers
// (Q4_K_M); output.weight is Q6_K.
TEST(MakeModelMix, RealShapeIsLlamaQuantizesTable) {
  const Config c = random_model_preset("mixtral-8x7b").config;
  const std::map<FileType, std::map<std::string, std::string>> want = {
      {FileType::Q3_K_M,
       {{"token_embd.weight", "Q3_K"}, {"output.weight", "Q6_K"}, {"output_norm.weight", "F32"},
        {"blk.0.attn_q.weight", "Q3_K"}, {"blk.0.attn_k.weight", "Q8_0"}, {"blk.0.attn_v.weight", "Q8_0"},
        {"blk.0.attn_output.weight", "Q5_K"}, {"blk.0.ffn_gate_inp.weight", "F32"},
        {"blk.0.ffn_gate_exps.weight", "Q3_K"}, {"blk.0.ffn_up_exps.weight", "Q3_K"},
        {"blk.0.ffn_down_exps.weight", "Q5_K"}, {"blk.1.ffn_down_exps.weight", "Q5_K"},
        {"blk.2.ffn_down_exps.weight", "Q4_K"}, {"blk.31.ffn_down_exps.weight", "Q4_K"}}},
      {FileType::Q4_K_M,
       {{"token_embd.weight", "Q4_K"}, {"output.weight", "Q6_K"}, {"blk.0.attn_q.weight", "Q4_K"},
        {"blk.0.attn_k.weight", "Q8_0"}, {"blk.0.attn_v.weight", "Q8_0"}, {"blk.0.attn_output.weight", "Q5_K"},
        {"blk.0.ffn_gate_exps.weight", "Q4_K"}, {"blk.0.ffn_up_exps.weight", "Q4_K"},
        {"blk.0.ffn_down_exps.weight", "Q6_K"}, {"blk.4.ffn_down_exps.weight", "Q4_K"},
        {"blk.6.ffn_down_exps.weight", "Q6_K"}, {"blk.28.ffn_down_exps.weight", "Q6_K"}}},
      {FileType::Q5_K_S,
       {{"token_embd.weight", "Q5_K"}, {"output.weight", "Q6_K"}, {"blk.0.attn_q.weight", "Q5_K"},
        {"blk.0.attn_k.weight", "Q8_0"}, {"blk.0.attn_v.weight", "Q8_0"}, {"blk.0.attn_output.weight", "Q5_K"},
        {"blk.0.ffn_gate_exps.weight", "Q5_K"}, {"blk.0.ffn_up_exps.weight", "Q5_K"},
        {"blk.0.ffn_down_exps.weight", "Q5_K"}}},
  };
  for (const auto& [ft, table] : want) {
    SCOPED_TRACE(file_type_info(ft).name);
    const std::vector<PlannedTensor> plan = random_model_plan(c, ft);
    ASSERT_EQ(plan.size(), 3u + 32u * 10u);
    const auto got = plan_by_name(plan);
    for (const auto& [name, type] : table) EXPECT_EQ(got.at(name), type) << name;
    for (const PlannedTensor& p : plan) EXPECT_FALSE(p.fallback) << p.tensor.name;
  }
  // The whole Q3_K_M: 1 + 3·32 Q3_K, 2·32 Q8_0, 32 + 2 Q5_K, 30 Q4_K, 1 Q6_K, 1 + 3·32 F32.
  EXPECT_EQ(counts(random_model_plan(c, FileType::Q3_K_M)), "F32 97, Q3_K 97, Q4_K 30, Q5_K 34, Q6_K 1, Q8_0 64");
}

// On the tiny-q shape the plan is the table llama-quantize wrote for ../shared's tiny-q (same
// shape, same names), the file holds exactly the planned types and general.file_type, and it
// loads and runs.
TEST(MakeModelMix, TinyQFilesHoldLlamaQuantizesTypesAndRun) {
  REQUIRE_PATH(tokenizer_path());
  const Vocab vocab = load_sentencepiece_model(tokenizer_path());
  const RandomPreset preset = random_model_preset("tiny-q");
  for (FileType ft : kMixes) {
    const std::string name = file_type_info(ft).name;
    SCOPED_TRACE(name);
    const std::vector<PlannedTensor> plan = random_model_plan(preset.config, ft);
    const auto planned = plan_by_name(plan);
    std::string lower = name;
    for (char& ch : lower) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    const std::string info = shared_dir() + "/fixtures/refs/tiny-q-" + lower + "/info.json";
    if (fs::exists(info) || in_ci()) {
      const json ref = json::parse(read_file(info));
      ASSERT_EQ(ref["tensor_table"].size(), plan.size());
      for (const auto& row : ref["tensor_table"])
        EXPECT_EQ(planned.at(row[0].get<std::string>()), row[1].get<std::string>()) << row[0];
    }

    RandomModelOptions o;
    o.file_type = ft;
    o.threads = 2;
    o.std_qk = preset.std_qk;
    const std::string path = temp_file(lower + ".gguf");
    make_random_gguf(preset.config, vocab, path, o);
    {
      const GgufFile g(path);
      EXPECT_EQ(g.get_int("general.file_type"), int64_t(ft));
      ASSERT_EQ(g.tensors().size(), plan.size());
      for (const RawTensor& t : g.tensors()) EXPECT_EQ(dtype_name(t.dtype), planned.at(t.name)) << t.name;
    }
    const auto model = Model::load(path);
    const auto ids = model->tokenizer().encode("The quick brown fox jumps over the lazy dog.", true);
    Session s(*model, {64, 64, 2});
    const std::vector<float> logits = s.eval(ids, /*all_logits=*/true);
    ASSERT_EQ(logits.size(), ids.size() * size_t(model->config().vocab_size));
    double sq = 0;
    for (float v : logits) {
      ASSERT_TRUE(std::isfinite(v));
      sq += double(v) * v;
    }
    EXPECT_GT(std::sqrt(sq / double(logits.size())), 0.1);
    fs::remove(path);
  }
}

// The command: `info` prints the file type and the planned per-type counts; the model
// generates; a plain tensor type still means that type for every matrix, without a file type.
TEST(MakeModelMix, CliWritesTheMixAndInfoCountsIt) {
  REQUIRE_PATH(tokenizer_path());
  const std::string out = scratch_path("tiny-q-q3_k_m.gguf");
  const CliResult r = run_mixtral({"make-model", "--preset", "tiny-q", "--type", "q3_k_m", "--tokenizer", tokenizer_path(),
                                   "-t", "2", "-o", out});
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string want = counts(random_model_plan(random_model_preset("tiny-q").config, FileType::Q3_K_M));
  EXPECT_NE(r.err.find("Q3_K_M (" + want + ")"), std::string::npos) << r.err;
  const CliResult info = run_mixtral({"info", "-m", out});
  ASSERT_EQ(info.status, 0) << info.err;
  EXPECT_NE(info.out.find("file type:        Q3_K_M"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("tensor types:     " + want + "\n"), std::string::npos) << info.out;
  const CliResult gen = run_mixtral({"generate", "-m", out, "-p", "Hello", "-n", "4", "--temp", "0", "--ids", "--ignore-eos"});
  ASSERT_EQ(gen.status, 0) << gen.err;
  EXPECT_EQ(json::parse(gen.out).size(), 4u);

  const std::string plain = scratch_path("tiny-q-q5_k.gguf");
  const CliResult p = run_mixtral({"make-model", "--preset", "tiny-q", "--layers", "1", "--type", "q5_k", "--tokenizer",
                                   tokenizer_path(), "-t", "2", "-o", plain});
  ASSERT_EQ(p.status, 0) << p.err;
  const CliResult pinfo = run_mixtral({"info", "-m", plain});
  EXPECT_NE(pinfo.out.find("file type:        not recorded"), std::string::npos) << pinfo.out;
  EXPECT_NE(pinfo.out.find("tensor types:     F32 4, Q5_K 9\n"), std::string::npos) << pinfo.out;

  const CliResult help = run_mixtral({"make-model", "--help"});
  for (const char* name : {"Q3_K_M", "Q4_K_M", "Q5_K_S", "IQ4_XS", "IQ3_M", "Q5_K", "--uniform"})
    EXPECT_NE(help.out.find(name), std::string::npos) << name;
}
