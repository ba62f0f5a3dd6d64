// io/imatrix: llama.cpp's importance-matrix file (../shared/fixtures/imatrix/tiny-q.imatrix, made
// by llama-imatrix) read, written back byte for byte, and refused when damaged.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "io/imatrix.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::testing;

namespace {

std::string read_all(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(Imatrix, ReadsLlamaCppsFileAndWritesItBack) {
  const std::string path = shared_dir() + "/fixtures/imatrix/tiny-q.imatrix";
  REQUIRE_PATH(path);
  const Imatrix m = read_imatrix(path);
  ASSERT_EQ(m.entries.size(), 16u);  // QUANTS.md section 2
  const ImatrixEntry* up = m.find("blk.0.ffn_up_exps.weight");
  ASSERT_NE(up, nullptr);
  EXPECT_EQ(up->values.size(), 8u * 256u);
  ASSERT_NE(m.find("blk.1.ffn_down_exps.weight"), nullptr);
  EXPECT_EQ(m.find("blk.1.ffn_down_exps.weight")->values.size(), 8u * 512u);
  EXPECT_EQ(m.find("blk.0.attn_q.weight")->values.size(), 256u);
  EXPECT_EQ(m.find("token_embd.weight"), nullptr);
  EXPECT_EQ(m.find("output.weight"), nullptr);
  EXPECT_GT(m.last_call, 0);
  const std::string out = (std::filesystem::temp_directory_path() / "mixtral-imatrix-roundtrip.imatrix").string();
  write_imatrix(m, out);
  EXPECT_EQ(read_all(out), read_all(path));
  std::filesystem::remove(out);
}

TEST(Imatrix, TruncatedOrHostileFilesAreRefused) {
  const std::string path = shared_dir() + "/fixtures/imatrix/tiny-q.imatrix";
  REQUIRE_PATH(path);
  const std::string good = read_all(path);
  const std::string bad = (std::filesystem::temp_directory_path() / "mixtral-imatrix-bad.imatrix").string();
  auto refused = [&](const std::string& bytes) {
    std::ofstream(bad, std::ios::binary | std::ios::trunc) << bytes;
    try {
      read_imatrix(bad);
    } catch (const Error& e) {
      return std::string(e.what()).find(bad) != std::string::npos;
    }
    return false;
  };
  for (size_t n : {size_t(0), size_t(3), size_t(40), good.size() / 2}) EXPECT_TRUE(refused(good.substr(0, n))) << n;
  std::string huge = good;
  const int32_t big = 0x7fffffff;
  std::memcpy(huge.data(), &big, 4);
  EXPECT_TRUE(refused(huge));
  std::filesystem::remove(bad);
}

}  // namespace
