// The same weights through every loading path: the tokenizer from GGUF metadata (all 283
// SentencePiece cases), sharded safetensors, the per-expert GGUF layout, HF→GGUF conversion
// with the q/k permutation, and the k-quant types (Q4_K, Q6_K, Q4_K_M's mix of both).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "engine/session.h"
#include "io/gguf.h"
#include "io/hf_checkpoint.h"
#include "io/safetensors_writer.h"
#include "kernels/dequant.h"
#include "kernels/matmul.h"
#include "kernels/matmul_q8.h"
#include "model/export_gguf.h"
#include "reference_data.h"
#include "reference_forward.h"
#include "sample/sampler.h"
#include "test_util.h"
#include "tokenizer_cases.h"

using namespace mixtral;
using namespace mixtral::testing;
namespace fs = std::filesystem;

namespace {

std::string temp(const std::string& name) { return ::testing::TempDir() + "/mixtral-formats-" + name; }

std::vector<float> all_logits(const Model& m, const std::vector<int32_t>& tokens) {
  Session s(m, {512, int64_t(tokens.size()), 2});
  return s.eval(tokens, true);
}

TEST(Formats, GgufTokenizerPassesAllCases) {
  REQUIRE_PATH(fixture("gguf/tiny-f32.gguf"));
  const auto model = Model::load(fixture("gguf/tiny-f32.gguf"));
  check_tokenizer_against_cases(model->tokenizer());
}

TEST(Formats, ShardedSafetensorsEqualOneFile) {
  REQUIRE_PATH(fixture("hf/tiny"));
  const std::string dir = temp("sharded");
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy(fixture("hf/tiny/config.json"), dir + "/config.json");
  fs::copy(fixture("hf/tiny/tokenizer.model"), dir + "/tokenizer.model");
  HfCheckpoint src(fixture("hf/tiny"));
  SafetensorsWriter shard[2];
  std::vector<std::pair<std::string, std::string>> map;
  uint64_t total = 0;
  int i = 0;
  for (const RawTensor* t : src.tensors()) {
    const int s = (i++ % 2);
    shard[s].add_tensor(t->name, t->dtype, t->shape, t->data, t->nbytes);
    map.emplace_back(t->name, "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors");
    total += t->nbytes;
  }
  for (int s = 0; s < 2; ++s) shard[s].write(dir + "/model-0000" + std::to_string(s + 1) + "-of-00002.safetensors");
  write_safetensors_index(dir + "/model.safetensors.index.json", map, total);

  const auto one = Model::load(fixture("hf/tiny"));
  const auto sharded = Model::load(dir);
  const auto tokens = one->tokenizer().encode("Sharded checkpoints load the same weights.", true);
  const auto a = all_logits(*one, tokens), b = all_logits(*sharded, tokens);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  fs::remove_all(dir);
}

// HF (half-split RoPE) → GGUF with permuted q/k rows (adjacent-pair RoPE), experts as one tensor
// each: must still match llama.cpp's logits for the original file.
TEST(Formats, ConvertedPerExpertGgufMatchesLlamaCpp) {
  REQUIRE_PATH(fixture("hf/tiny"));
  const auto hf = Model::load(fixture("hf/tiny"));
  ExportOptions o;
  o.type = DType::F32;
  o.per_expert_layout = true;
  const std::string out = temp("per-expert.gguf");
  export_gguf(*hf, out, o);
  GgufFile g(out);
  EXPECT_NE(g.find("blk.0.ffn_gate.7.weight"), nullptr);
  EXPECT_EQ(g.find("blk.0.ffn_gate_exps.weight"), nullptr);

  const auto model = Model::load(out);
  EXPECT_EQ(model->config().rope_style, RopeStyle::Interleaved);
  const RefData refs = load_refs(shared_dir() + "/fixtures/refs/tiny-f32");
  for (const auto& p : refs.prompts) {
    const auto logits = all_logits(*model, p.tokens);
    double worst = 0;
    for (size_t pos = 0; pos < p.tokens.size(); ++pos) {
      const Top40& r = refs.top40[p.row_offset + pos];
      double num = 0, den = 0;
      for (int i = 0; i < 40; ++i) {
        const double d = logits[pos * 32000 + r.ids[i]] - r.values[i];
        num += d * d;
        den += double(r.values[i]) * r.values[i];
      }
      worst = std::max(worst, std::sqrt(num / den));
    }
    EXPECT_LE(worst, 1e-4) << p.name;
  }
  fs::remove(out);
}

// Our Q8_0/Q4_0 quantizers against llama-quantize: converting the HF checkpoint must give, for
// every tensor, the bytes llama.cpp wrote into its GGUF files (q/k rows permuted alike).
TEST(Formats, QuantizedBytesMatchLlamaCpp) {
  REQUIRE_PATH(fixture("gguf/tiny-q4_0.gguf"));
  const auto hf = Model::load(fixture("hf/tiny"));
  for (const auto& [name, type] : {std::pair<std::string, DType>{"tiny-q8_0", DType::Q8_0}, {"tiny-q4_0", DType::Q4_0}}) {
    ExportOptions o;
    o.type = type;
    const std::string out = temp(name + ".gguf");
    export_gguf(*hf, out, o);
    GgufFile ours(out), theirs(fixture("gguf/" + name + ".gguf"));
    int compared = 0;
    for (const RawTensor& t : theirs.tensors()) {
      const RawTensor* mine = ours.find(t.name);
      ASSERT_NE(mine, nullptr) << t.name;
      EXPECT_EQ(mine->shape, t.shape) << t.name;
      if (mine->dtype != t.dtype) continue;  // llama-quantize's per-tensor choices (attn_k/v, output in Q8_0)
      ASSERT_EQ(mine->nbytes, t.nbytes) << t.name;
      EXPECT_EQ(0, std::memcmp(mine->data, t.data, t.nbytes)) << name << ": " << t.name;
      ++compared;
    }
    EXPECT_GE(compared, 16) << name;
    fs::remove(out);
  }
}

// Relative RMS difference between two matrices of the same shape, read through ref::dequantize_row.
double matrix_rel_error(const Matrix& a, const Matrix& b) {
  std::vector<float> ra(static_cast<size_t>(a.cols)), rb(static_cast<size_t>(b.cols));
  double num = 0, den = 0;
  for (int64_t r = 0; r < a.rows; ++r) {
    ref::dequantize_row(a.dtype, a.row(r), ra.data(), a.cols);
    ref::dequantize_row(b.dtype, b.row(r), rb.data(), b.cols);
    for (int64_t i = 0; i < a.cols; ++i) {
      num += (double(rb[i]) - ra[i]) * (double(rb[i]) - ra[i]);
      den += double(ra[i]) * ra[i];
    }
  }
  return std::sqrt(num / den);
}

struct QuantCase {
  DType type;
  bool mix;
  double max_weight_error;  // relative RMS error of the stored weights (the quantization itself)
  // Engine vs the float64 reference on the same weights. BF16 products round the activations to
  // bf16 (in both); a last-bit difference between the engine's float activations and the
  // reference's double ones flips a rounding now and then (about 1 in 2,000 values), and each
  // flip moves its product by up to 2^-8: 4.4e-4 measured where the other types give 3e-7.
  double max_ref_error = 1e-5;
};

// Every type through conversion and back: the stored weights are the F32 weights up to the
// type's rounding (a wrong block layout would give errors ~1), and the engine's output on the
// converted file equals the float64 reference forward on the same (dequantized) weights.
// (No llama.cpp-written k-quant file exists in ../shared; test_kernels checks the block
// layouts value by value against hand-built blocks.)
TEST(Formats, EveryWeightTypeConvertsAndRuns) {
  REQUIRE_PATH(fixture("hf/k256"));
  const auto f32 = Model::load(fixture("hf/k256"));
  const auto tokens = f32->tokenizer().encode("Quantized weights are a dtype, not a second engine.", true);
  const auto base = all_logits(*f32, tokens);
  const QuantCase cases[] = {{DType::Q8_0, false, 0.01}, {DType::Q6_K, false, 0.03}, {DType::Q4_K, false, 0.12},
                             {DType::Q4_K, true, 0.12},  {DType::Q4_0, false, 0.15}, {DType::BF16, false, 0.005, 2e-3},
                             {DType::F16, false, 0.001}};
  for (const QuantCase& qc : cases) {
    const std::string label = std::string(dtype_name(qc.type)) + (qc.mix ? " (Q4_K_M mix)" : "");
    SCOPED_TRACE(label);
    ExportOptions o;
    o.type = qc.type;
    o.k_quant_mix = qc.mix;
    const std::string out = temp("k256-" + std::to_string(int(qc.type)) + (qc.mix ? "-mix" : "") + ".gguf");
    export_gguf(*f32, out, o);
    const auto q = Model::load(out);
    const ExpertWeights& X = q->weights().layers[1].experts[3];
    EXPECT_EQ(X.w1.dtype, qc.type);
    EXPECT_EQ(X.w2.dtype, qc.mix ? DType::Q6_K : qc.type);
    double worst_weight = 0;
    for (int64_t l = 0; l < 2; ++l)
      for (int64_t e = 0; e < 4; ++e) {
        const ExpertWeights& A = f32->weights().layers[l].experts[e];
        const ExpertWeights& B = q->weights().layers[l].experts[e];
        worst_weight = std::max({worst_weight, matrix_rel_error(A.w1, B.w1), matrix_rel_error(A.w3, B.w3),
                                 matrix_rel_error(A.w2, B.w2)});
      }
    worst_weight = std::max(worst_weight, matrix_rel_error(f32->weights().layers[0].wo, q->weights().layers[0].wo));
    EXPECT_LE(worst_weight, qc.max_weight_error);

    // The engine's float path computes what the reference does; the int8-activation path
    // (quantized weights; matmul_q8.h) adds the rounding of x to int8 blocks: ~1.5e-2 here.
    set_int8_activations(false);
    const auto ours_float = all_logits(*q, tokens);
    set_int8_activations(true);
    const auto ours = all_logits(*q, tokens);
    const auto ref = reference_forward(*q, tokens);
    double worst_ref = 0, worst_ref_int8 = 0, num = 0, den = 0;
    for (size_t t = 0; t < tokens.size(); ++t) {
      double n2 = 0, n2_int8 = 0, d2 = 0;
      for (int64_t i = 0; i < 32000; ++i) {
        n2 += (ours_float[t * 32000 + i] - ref[t][i]) * (ours_float[t * 32000 + i] - ref[t][i]);
        n2_int8 += (ours[t * 32000 + i] - ref[t][i]) * (ours[t * 32000 + i] - ref[t][i]);
        d2 += ref[t][i] * ref[t][i];
        num += (double(ours[t * 32000 + i]) - base[t * 32000 + i]) * (double(ours[t * 32000 + i]) - base[t * 32000 + i]);
        den += double(base[t * 32000 + i]) * base[t * 32000 + i];
      }
      worst_ref = std::max(worst_ref, std::sqrt(n2 / d2));
      worst_ref_int8 = std::max(worst_ref_int8, std::sqrt(n2_int8 / d2));
    }
    EXPECT_LE(worst_ref, qc.max_ref_error);
    EXPECT_LE(worst_ref_int8, int8_activation_dtype(qc.type) ? 4e-2 : qc.max_ref_error);
    std::printf("  %-20s weights rel. error %.2e | engine vs float64 reference %.1e (int8 activations %.1e) | logits vs F32 model %.2e\n",
                label.c_str(), worst_weight, worst_ref, worst_ref_int8, std::sqrt(num / den));
    fs::remove(out);
  }
}

}  // namespace
