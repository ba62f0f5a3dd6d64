// `mixtral quantize IN OUT --type NAME [--imatrix F] [-t N]` in llama.cpp's file types, and the
// file-type lines of `mixtral info`, on tiny-q-f32.gguf (QUANTS.md).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "reference_data.h"
#include "sha256.h"
#include "test_util.h"

using namespace mixtral::testing;

namespace {

using Result = CliResult;
std::string scratch(const std::string& name) { return scratch_path(name); }
Result run(const std::vector<std::string>& args) { return run_mixtral(args, 120); }

std::string ref_sha(const std::string& type) {
  return nlohmann::json::parse(read_file(shared_dir() + "/fixtures/refs/tiny-q-" + type + "/info.json"))["gguf_sha256"];
}

TEST(QuantFilesCli, AnyCaseAnyThreadCountGivesLlamaCppsFile) {
  const std::string src = fixture("gguf/tiny-q-f32.gguf");
  REQUIRE_PATH(src);
  REQUIRE_PATH(shared_dir() + "/fixtures/refs/tiny-q-q4_0/info.json");
  for (const auto& [type, threads] : {std::pair{"q4_0", "1"}, std::pair{"Q4_0", "3"}}) {
    const std::string out = scratch(std::string("t") + threads + ".gguf");
    const Result r = run({"quantize", src, out, "--type", type, "-t", threads});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(sha256_file(out), ref_sha("q4_0")) << type << " -t " << threads;
    EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));
  }
}

TEST(QuantFilesCli, RefusesVeryLowBitTypesWithoutImatrix) {
  const std::string src = fixture("gguf/tiny-q-f32.gguf");
  REQUIRE_PATH(src);
  for (const char* type : {"IQ2_XXS", "iq2_xs", "IQ2_S", "IQ1_S", "IQ1_M"}) {
    const std::string out = scratch("refused.gguf");
    const Result r = run({"quantize", src, out, "--type", type});
    EXPECT_EQ(r.status, 1) << type;
    EXPECT_NE(r.err.find("Please do not use IQ1_S, IQ1_M, IQ2_S, IQ2_XXS, IQ2_XS or Q2_K_S quantization without an importance matrix"),
              std::string::npos) << type << ": " << r.err;
    EXPECT_FALSE(std::filesystem::exists(out));
  }
}

TEST(QuantFilesCli, UnwritableOutputFailsBeforeAnyWork) {
  const std::string src = fixture("gguf/tiny-q-f32.gguf");
  REQUIRE_PATH(src);
  const Result r = run({"quantize", src, scratch("no/such/dir/out.gguf"), "--type", "Q8_0"});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("cannot be written"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("quantize ["), std::string::npos) << "no tensor was to be converted: " << r.err;
  const Result same = run({"quantize", src, src, "--type", "Q8_0"});
  EXPECT_EQ(same.status, 1);
  EXPECT_NE(same.err.find("is the input file"), std::string::npos) << same.err;
}

TEST(QuantFilesCli, InfoPrintsFileTypeBitsPerWeightAndTensorTypes) {
  const std::string src = fixture("gguf/tiny-q-f32.gguf");
  REQUIRE_PATH(src);
  const std::string out = scratch("q8.gguf");
  ASSERT_EQ(run({"quantize", src, out, "--type", "q8_0"}).status, 0);
  const Result r = run({"info", "-m", out});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("file type:        Q8_0\n"), std::string::npos) << r.out;
  // 23,068,672 values in Q8_0 (8.5 bits) and 5,376 in F32 (norms, routers): 24,531,968 bytes.
  EXPECT_NE(r.out.find("bits per weight:  8.51 (24531968 bytes of tensors, 23074048 values)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tensor types:     F32 7, Q8_0 16\n"), std::string::npos) << r.out;
}

}  // namespace
