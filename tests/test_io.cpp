// Checkpoint formats: GGUF and safetensors readers on llama.cpp's / the generator's files,
// every class of hostile input (each must end in one mixtral::Error naming the file and the
// problem, never a crash), a seeded fuzz loop, and the writers (GGUF byte-identical to
// llama.cpp; safetensors shards + index read back through HfCheckpoint).
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/hf_checkpoint.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace mixtral;
using Bytes = std::vector<uint8_t>;

namespace {

std::string fx(const std::string& rel) { return mixtral::testing::fixtures_dir() + "/" + rel; }

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mixtral_test_io_XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (fs::path(path_) / name).string(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

void write_text(const std::string& path, const std::string& s) { write_bytes(path, Bytes(s.begin(), s.end())); }

template <typename T>
void poke(Bytes& b, size_t at, T v) {
  ASSERT_LE(at + sizeof(T), b.size());
  std::memcpy(b.data() + at, &v, sizeof(T));
}

template <typename T>
T peek(const Bytes& b, size_t at) {
  T v;
  std::memcpy(&v, b.data() + at, sizeof(T));
  return v;
}

// Offset just after the GGUF string `s` (u64 length + bytes) in `b`: for a key that is its
// value type, for a tensor name its n_dims. Fails the test when absent.
size_t after_string(const Bytes& b, const std::string& s) {
  Bytes needle(8);
  const uint64_t n = s.size();
  std::memcpy(needle.data(), &n, 8);
  needle.insert(needle.end(), s.begin(), s.end());
  const auto it = std::search(b.begin(), b.end(), needle.begin(), needle.end());
  EXPECT_NE(it, b.end()) << "string not found: " << s;
  return size_t(it - b.begin()) + needle.size();
}

// Field offsets of a tensor info: n_dims, ne[0], type, offset.
struct InfoAt {
  size_t n_dims, ne, type, offset;
};
InfoAt tensor_info(const Bytes& b, const std::string& name) {
  const size_t at = after_string(b, name);
  const uint32_t n_dims = peek<uint32_t>(b, at);
  return {at, at + 4, at + 4 + 8 * n_dims, at + 8 + 8 * n_dims};
}

// Runs `fn`, which must throw mixtral::Error whose message names `path` and contains `word`.
template <typename Fn>
void expect_error(Fn fn, const std::string& path, const std::string& word) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one naming " << path << " with '" << word << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    EXPECT_NE(msg.find(word), std::string::npos) << "message lacks '" << word << "': " << msg;
  }
}

void expect_gguf_error(const Bytes& b, const TempDir& dir, const std::string& word) {
  const std::string p = dir.file("bad.gguf");
  write_bytes(p, b);
  expect_error([&] { GgufFile f(p); }, p, word);
}

// Hand-built GGUF files, for what a real one never contains (every value type, nesting).
struct GgufBytes {
  Bytes b;
  template <typename T>
  GgufBytes& put(T v) {
    const size_t at = b.size();
    b.resize(at + sizeof(T));
    std::memcpy(b.data() + at, &v, sizeof(T));
    return *this;
  }
  GgufBytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  GgufBytes& header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return put(version).put(n_tensors).put(n_kv);
  }
  GgufBytes& key(const std::string& k, GgufType t) { return str(k).put(uint32_t(t)); }
  // One F32 tensor "t" of 32 values at offset 0, padded header, data.
  GgufBytes& one_tensor(uint32_t alignment = 32) {
    str("t").put<uint32_t>(1).put<int64_t>(32).put<uint32_t>(0).put<uint64_t>(0);
    b.resize((b.size() + alignment - 1) / alignment * alignment, 0);
    for (int i = 0; i < 32; ++i) put(float(i));
    return *this;
  }
};

}  // namespace

// ============================================================================================
// GGUF: reading llama.cpp's files
// ============================================================================================

TEST(GgufRead, TinyF32) {
  const std::string path = fx("gguf/tiny-f32.gguf");
  REQUIRE_PATH(path);
  const GgufFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset(), 719232u);
  EXPECT_EQ(f.keys().size(), 27u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.expert_count"), 8);
  EXPECT_EQ(f.get_int("llama.expert_used_count"), 2);
  EXPECT_EQ(f.get_int("llama.block_count"), 2);
  EXPECT_EQ(f.get_float("llama.rope.freq_base"), 1e6);
  EXPECT_FLOAT_EQ(float(*f.get_float("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  EXPECT_EQ(f.get_float("llama.embedding_length"), 128.0);  // integers read as floats too
  EXPECT_EQ(f.get_bool("tokenizer.ggml.add_bos_token"), true);
  EXPECT_EQ(f.get_bool("tokenizer.ggml.add_eos_token"), false);
  EXPECT_EQ(f.type("tokenizer.ggml.token_type"), GgufType::ARRAY);
  EXPECT_EQ(f.array_type("tokenizer.ggml.token_type"), GgufType::I32);
  EXPECT_FALSE(f.has("no.such.key"));
  EXPECT_EQ(f.get_int("no.such.key"), std::nullopt);
  EXPECT_EQ(f.get_string_array("no.such.key"), std::nullopt);

  const auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens);
  ASSERT_EQ(tokens->size(), 32000u);
  EXPECT_EQ((*tokens)[0], "<unk>");
  EXPECT_EQ((*tokens)[1], "<s>");
  EXPECT_EQ((*tokens)[2], "</s>");
  EXPECT_EQ((*tokens)[3], "<0x00>");
  const auto scores = f.get_float_array("tokenizer.ggml.scores");
  ASSERT_TRUE(scores);
  ASSERT_EQ(scores->size(), 32000u);
  EXPECT_EQ((*scores)[0], -1000.0f);
  const auto types = f.get_int_array("tokenizer.ggml.token_type");
  ASSERT_TRUE(types);
  ASSERT_EQ(types->size(), 32000u);
  EXPECT_EQ((*types)[0], 3);
  EXPECT_EQ((*types)[3], 6);
  EXPECT_EQ((*types)[31999], 1);

  ASSERT_EQ(f.tensors().size(), 23u);
  EXPECT_EQ(f.tensors().front().name, "token_embd.weight");
  EXPECT_EQ(f.tensors().back().name, "output.weight");
  const RawTensor* g = f.find("blk.0.ffn_gate_exps.weight");
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->shape, (std::vector<int64_t>{8, 256, 128}));
  EXPECT_EQ(g->dtype, DType::F32);
  EXPECT_EQ(g->nbytes, 8u * 256 * 128 * 4);
  EXPECT_EQ(g->data, f.file().data() + 719232 + 16585728);
  EXPECT_EQ(f.find("blk.0.ffn_down_exps.weight")->shape, (std::vector<int64_t>{8, 128, 256}));
  EXPECT_EQ(f.find("blk.0.attn_k.weight")->shape, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(f.find("blk.1.attn_norm.weight")->shape, (std::vector<int64_t>{128}));
  EXPECT_EQ(f.find("blk.0.ffn_gate_exps"), nullptr);
  for (const RawTensor& t : f.tensors()) {
    EXPECT_EQ(uintptr_t(t.data) % 32, 0u) << t.name;
    EXPECT_LE(t.data + t.nbytes, f.file().data() + f.file().size()) << t.name;
  }
}

TEST(GgufRead, WrongTypeNamesKeyAndTypes) {
  const std::string path = fx("gguf/tiny-f32.gguf");
  REQUIRE_PATH(path);
  const GgufFile f(path);
  try {
    f.get_int("general.name");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), path + ": key general.name has type string, expected integer");
  }
  expect_error([&] { f.get_string("llama.expert_count"); }, path, "has type uint32, expected string");
  expect_error([&] { f.get_bool("llama.expert_count"); }, path, "expected bool");
  expect_error([&] { f.get_float("tokenizer.ggml.model"); }, path, "expected float");
  expect_error([&] { f.get_string_array("tokenizer.ggml.scores"); }, path, "array[float32], expected array[string]");
  expect_error([&] { f.get_int_array("tokenizer.ggml.tokens"); }, path, "expected array of integers");
  expect_error([&] { f.get_float_array("tokenizer.ggml.tokens"); }, path, "expected array of numbers");
  expect_error([&] { f.get_string("tokenizer.ggml.tokens"); }, path, "has type array[string]");
}

TEST(GgufRead, QuantizedTypes) {
  const std::string q4 = fx("gguf/tiny-q4_0.gguf"), q8 = fx("gguf/tiny-q8_0.gguf");
  REQUIRE_PATH(q4);
  REQUIRE_PATH(q8);
  auto count = [](const GgufFile& f) {
    std::map<DType, int> n;
    for (const RawTensor& t : f.tensors()) ++n[t.dtype];
    return n;
  };
  const GgufFile f4(q4);
  ASSERT_EQ(f4.tensors().size(), 23u);
  EXPECT_EQ(count(f4), (std::map<DType, int>{{DType::Q4_0, 11}, {DType::Q8_0, 5}, {DType::F32, 7}}));
  for (const char* n : {"token_embd.weight", "blk.0.attn_q.weight", "blk.1.attn_output.weight",
                        "blk.0.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight", "blk.1.ffn_down_exps.weight"})
    EXPECT_EQ(f4.find(n)->dtype, DType::Q4_0) << n;
  for (const char* n : {"blk.0.attn_k.weight", "blk.1.attn_v.weight", "output.weight"})
    EXPECT_EQ(f4.find(n)->dtype, DType::Q8_0) << n;
  for (const char* n : {"blk.0.attn_norm.weight", "blk.0.ffn_gate_inp.weight", "output_norm.weight"})
    EXPECT_EQ(f4.find(n)->dtype, DType::F32) << n;
  EXPECT_EQ(f4.find("token_embd.weight")->nbytes, 32000u * 128 / 32 * 18);
  EXPECT_EQ(f4.find("blk.0.ffn_down_exps.weight")->shape, (std::vector<int64_t>{8, 128, 256}));

  const GgufFile f8(q8);
  EXPECT_EQ(count(f8), (std::map<DType, int>{{DType::Q8_0, 16}, {DType::F32, 7}}));
  EXPECT_EQ(f8.find("output.weight")->nbytes, 32000u * 128 / 32 * 34);
}

TEST(GgufRead, DenseModel) {
  const std::string path = fx("gguf/tiny-dense-f32.gguf");
  REQUIRE_PATH(path);
  const GgufFile f(path);
  EXPECT_EQ(f.tensors().size(), 21u);
  EXPECT_FALSE(f.has("llama.expert_count"));
  EXPECT_EQ(f.get_float("llama.rope.freq_base"), 1e4);
  ASSERT_NE(f.find("blk.0.ffn_gate.weight"), nullptr);
  EXPECT_EQ(f.find("blk.0.ffn_gate.weight")->shape, (std::vector<int64_t>{512, 128}));
}

// The GGUF tensors are the HF tensors transformed as the fixtures README says: the embedding
// as is, the experts stacked [n_expert, rows, cols].
TEST(GgufRead, MatchesHfCheckpoint) {
  const std::string gp = fx("gguf/tiny-f32.gguf"), hp = fx("hf/tiny");
  REQUIRE_PATH(gp);
  REQUIRE_PATH(hp);
  const GgufFile g(gp);
  const HfCheckpoint h(hp);
  const RawTensor* a = g.find("token_embd.weight");
  const RawTensor* b = h.find("model.embed_tokens.weight");
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->shape, b->shape);
  EXPECT_EQ(std::memcmp(a->data, b->data, a->nbytes), 0);
  for (const auto& [gg, hf] : std::vector<std::pair<std::string, std::string>>{
           {"ffn_gate_exps", "w1"}, {"ffn_down_exps", "w2"}, {"ffn_up_exps", "w3"}}) {
    const RawTensor* s = g.find("blk.1." + gg + ".weight");
    ASSERT_NE(s, nullptr);
    const size_t per = s->nbytes / 8;
    for (int e = 0; e < 8; ++e) {
      const RawTensor* x = h.find("model.layers.1.block_sparse_moe.experts." + std::to_string(e) + "." + hf + ".weight");
      ASSERT_NE(x, nullptr);
      ASSERT_EQ(x->nbytes, per);
      EXPECT_EQ(std::vector<int64_t>(s->shape.begin() + 1, s->shape.end()), x->shape);
      EXPECT_EQ(std::memcmp(s->data + e * per, x->data, per), 0) << gg << " expert " << e;
    }
  }
}

// Every value type, nested arrays within the limit, version 2.
TEST(GgufRead, AllValueTypes) {
  TempDir dir;
  GgufBytes g;
  g.header(2, 1, 16);
  g.key("u8", GgufType::U8).put<uint8_t>(200);
  g.key("i8", GgufType::I8).put<int8_t>(-100);
  g.key("u16", GgufType::U16).put<uint16_t>(60000);
  g.key("i16", GgufType::I16).put<int16_t>(-30000);
  g.key("u32", GgufType::U32).put<uint32_t>(4000000000u);
  g.key("i32", GgufType::I32).put<int32_t>(-2000000000);
  g.key("f32", GgufType::F32).put<float>(0.5f);
  g.key("bool", GgufType::BOOL).put<uint8_t>(1);
  g.key("str", GgufType::STRING).str("héllo");
  g.key("u64", GgufType::U64).put<uint64_t>(uint64_t(1) << 40);
  g.key("u64big", GgufType::U64).put<uint64_t>(~uint64_t(0));
  g.key("i64", GgufType::I64).put<int64_t>(-(int64_t(1) << 50));
  g.key("f64", GgufType::F64).put<double>(-2.25);
  g.key("u16arr", GgufType::ARRAY).put(uint32_t(GgufType::U16)).put<uint64_t>(3).put<uint16_t>(1).put<uint16_t>(2).put<uint16_t>(65535);
  g.key("f64arr", GgufType::ARRAY).put(uint32_t(GgufType::F64)).put<uint64_t>(2).put(1.5).put(-3.0);
  // [[1, 2], []] as arrays of arrays of int8
  g.key("nested", GgufType::ARRAY).put(uint32_t(GgufType::ARRAY)).put<uint64_t>(2);
  g.put(uint32_t(GgufType::I8)).put<uint64_t>(2).put<int8_t>(1).put<int8_t>(2);
  g.put(uint32_t(GgufType::I8)).put<uint64_t>(0);
  g.one_tensor();
  const std::string p = dir.file("all.gguf");
  write_bytes(p, g.b);

  const GgufFile f(p);
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.get_int("u8"), 200);
  EXPECT_EQ(f.get_int("i8"), -100);
  EXPECT_EQ(f.get_int("u16"), 60000);
  EXPECT_EQ(f.get_int("i16"), -30000);
  EXPECT_EQ(f.get_int("u32"), 4000000000LL);
  EXPECT_EQ(f.get_int("i32"), -2000000000);
  EXPECT_EQ(f.get_float("f32"), 0.5);
  EXPECT_EQ(f.get_bool("bool"), true);
  EXPECT_EQ(f.get_string("str"), "héllo");
  EXPECT_EQ(f.get_int("u64"), int64_t(1) << 40);
  expect_error([&] { f.get_int("u64big"); }, p, "does not fit in int64");
  EXPECT_EQ(f.get_int("i64"), -(int64_t(1) << 50));
  EXPECT_EQ(f.get_float("f64"), -2.25);
  EXPECT_EQ(f.get_int_array("u16arr"), (std::vector<int64_t>{1, 2, 65535}));
  EXPECT_EQ(f.get_float_array("u16arr"), (std::vector<float>{1, 2, 65535}));
  EXPECT_EQ(f.get_float_array("f64arr"), (std::vector<float>{1.5f, -3.0f}));
  EXPECT_EQ(f.array_type("nested"), GgufType::ARRAY);
  expect_error([&] { f.get_int_array("nested"); }, p, "array[array]");
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensors()[0].shape, (std::vector<int64_t>{32}));
  float v[32];
  std::memcpy(v, f.tensors()[0].data, sizeof v);
  EXPECT_EQ(v[31], 31.0f);

  // The raw copy keeps every type, nested arrays included.
  GgufWriter w;
  for (const std::string& k : f.keys()) w.copy_kv(f, k);
  w.add_tensor("t", DType::F32, {32}, f.tensors()[0].data, 128);
  const std::string q = dir.file("copy.gguf");
  w.write(q);
  const GgufFile c(q);
  EXPECT_EQ(c.keys(), f.keys());
  for (const std::string& k : f.keys()) {
    const auto a = f.raw_value(k), b = c.raw_value(k);
    EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end())) << k;
  }
}

TEST(GgufRead, Version2Accepted) {
  const std::string path = fx("gguf/tiny-q8_0.gguf");
  REQUIRE_PATH(path);
  TempDir dir;
  Bytes b = read_bytes(path);
  poke<uint32_t>(b, 4, 2);
  const std::string p = dir.file("v2.gguf");
  write_bytes(p, b);
  const GgufFile f(p);
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.tensors().size(), 23u);
}

// ============================================================================================
// GGUF: hostile files. Each damages a real (or hand-built) file in one way.
// ============================================================================================

class GgufHostile : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = fx("gguf/tiny-q8_0.gguf");
    REQUIRE_PATH(path_);
    if (orig_.empty()) orig_ = read_bytes(path_);
    b = orig_;
  }
  std::string path_;
  static inline Bytes orig_;
  Bytes b;
  TempDir dir;
};

TEST_F(GgufHostile, Truncated) {
  const size_t data = GgufFile(path_).data_offset();
  const size_t first_tensor_info = after_string(b, "output.weight") - 21;
  for (size_t len : {size_t(0), size_t(3), size_t(10), size_t(23), size_t(24), size_t(100), size_t(5000),
                     size_t(500000), first_tensor_info + 10, data - 40, data - 1, data, data + 100,
                     data + 4352000 + 17, b.size() - 1}) {
    SCOPED_TRACE("length " + std::to_string(len));
    expect_gguf_error(Bytes(b.begin(), b.begin() + ptrdiff_t(len)), dir, "truncated");
  }
}

TEST_F(GgufHostile, BadMagic) {
  b[0] = 'X';
  expect_gguf_error(b, dir, "magic");
}

TEST_F(GgufHostile, UnsupportedVersion) {
  poke<uint32_t>(b, 4, 1);
  expect_gguf_error(b, dir, "version 1");
  poke<uint32_t>(b, 4, 99);
  expect_gguf_error(b, dir, "unsupported GGUF version 99");
  poke<uint32_t>(b, 4, 0x03000000u);
  expect_gguf_error(b, dir, "big-endian");
}

TEST_F(GgufHostile, CountsTooLarge) {
  poke<uint64_t>(b, 8, uint64_t(1) << 60);
  expect_gguf_error(b, dir, "n_tensors");
  b = orig_;
  poke<uint64_t>(b, 16, uint64_t(1) << 60);
  expect_gguf_error(b, dir, "n_kv");
  b = orig_;
  poke<uint64_t>(b, 16, 1000);  // plausible but wrong: reads the tensor infos as KVs
  expect_gguf_error(b, dir, "bad.gguf");
  b = orig_;
  const size_t tok = after_string(b, "tokenizer.ggml.tokens");
  poke<uint64_t>(b, tok + 8, uint64_t(1) << 61);  // array element count
  expect_gguf_error(b, dir, "cannot fit");
}

TEST_F(GgufHostile, StringLengthPastEnd) {
  poke<uint64_t>(b, 24, uint64_t(1) << 62);  // the first key's length
  expect_gguf_error(b, dir, "string length 4611686018427387904");
  b = orig_;
  const size_t unk = after_string(b, "<unk>") - 5 - 8;  // a string inside the tokens array
  poke<uint64_t>(b, unk, uint64_t(1) << 62);
  expect_gguf_error(b, dir, "past the end");
  b = orig_;
  const size_t name = after_string(b, "blk.0.attn_q.weight") - 19 - 8;  // a tensor name
  poke<uint64_t>(b, name, uint64_t(1) << 62);
  expect_gguf_error(b, dir, "string length");
}

TEST_F(GgufHostile, UnknownValueType) {
  poke<uint32_t>(b, after_string(b, "general.architecture"), 13);
  expect_gguf_error(b, dir, "unknown value type 13");
  b = orig_;
  poke<uint32_t>(b, after_string(b, "tokenizer.ggml.scores") + 4, 0xffffffffu);  // element type
  expect_gguf_error(b, dir, "unknown value type");
}

TEST_F(GgufHostile, InvalidBool) {
  b[after_string(b, "tokenizer.ggml.add_bos_token") + 4] = 7;
  expect_gguf_error(b, dir, "invalid bool");
}

TEST(GgufHostileBuilt, ArraysNestedTooDeep) {
  TempDir dir;
  for (int depth : {kGgufMaxArrayDepth, kGgufMaxArrayDepth + 1, 1000}) {
    GgufBytes g;
    g.header(3, 0, 1).key("deep", GgufType::ARRAY);
    for (int i = 1; i < depth; ++i) g.put(uint32_t(GgufType::ARRAY)).put<uint64_t>(1);
    g.put(uint32_t(GgufType::U8)).put<uint64_t>(1).put<uint8_t>(1);
    const std::string p = dir.file("deep.gguf");
    write_bytes(p, g.b);
    if (depth <= kGgufMaxArrayDepth) {
      EXPECT_NO_THROW(GgufFile{p});
    } else {
      expect_error([&] { GgufFile f(p); }, p, "nested");
    }
  }
}

TEST(GgufHostileBuilt, Alignment) {
  TempDir dir;
  const std::string p = dir.file("a.gguf");
  for (uint32_t a : {0u, 48u, 0x80000000u}) {
    GgufBytes g;
    g.header(3, 1, 1).key("general.alignment", GgufType::U32).put(a).one_tensor(64);
    write_bytes(p, g.b);
    expect_error([&] { GgufFile f(p); }, p, "power of two");
  }
  GgufBytes s;
  s.header(3, 1, 1).key("general.alignment", GgufType::STRING).str("32").one_tensor();
  write_bytes(p, s.b);
  expect_error([&] { GgufFile f(p); }, p, "general.alignment has type string");
  GgufBytes ok;
  ok.header(3, 1, 1).key("general.alignment", GgufType::U32).put(64u).one_tensor(64);
  write_bytes(p, ok.b);
  const GgufFile f(p);
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
}

TEST_F(GgufHostile, NDims) {
  const InfoAt t = tensor_info(b, "blk.0.attn_q.weight");
  poke<uint32_t>(b, t.n_dims, 0);
  expect_gguf_error(b, dir, "n_dims 0");
  poke<uint32_t>(b, t.n_dims, 5);
  expect_gguf_error(b, dir, "n_dims 5");
  poke<uint32_t>(b, t.n_dims, 0xffffffffu);
  expect_gguf_error(b, dir, "n_dims");
}

TEST_F(GgufHostile, BadDimensions) {
  const InfoAt t = tensor_info(b, "blk.0.attn_q.weight");  // Q8_0, ne [128, 128]
  poke<int64_t>(b, t.ne + 8, 0);
  expect_gguf_error(b, dir, "not positive");
  poke<int64_t>(b, t.ne + 8, -128);
  expect_gguf_error(b, dir, "ne[1] = -128 is not positive");
  poke<int64_t>(b, t.ne + 8, int64_t(1) << 62);  // 128 * 2^62 overflows int64
  expect_gguf_error(b, dir, "overflow");
  poke<int64_t>(b, t.ne + 8, int64_t(1) << 40);  // fits, but far past the end of the file
  expect_gguf_error(b, dir, "past the end");
  b = orig_;
  poke<int64_t>(b, t.ne, 100);  // not a multiple of 32
  expect_gguf_error(b, dir, "block size");
}

TEST_F(GgufHostile, UnsupportedTensorType) {
  poke<uint32_t>(b, tensor_info(b, "blk.0.attn_q.weight").type, 9);
  const std::string p = dir.file("bad.gguf");
  write_bytes(p, b);
  expect_error([&] { GgufFile f(p); }, p, "tensor blk.0.attn_q.weight has unsupported type Q8_1 (ggml type 9)");
  poke<uint32_t>(b, tensor_info(b, "blk.0.attn_q.weight").type, 1000);
  expect_gguf_error(b, dir, "unsupported type unknown (ggml type 1000)");
}

TEST_F(GgufHostile, BadOffsets) {
  const InfoAt last = tensor_info(b, "blk.1.ffn_up_exps.weight");
  const uint64_t off = peek<uint64_t>(b, last.offset);
  poke<uint64_t>(b, last.offset, uint64_t(b.size()) / 32 * 32);
  expect_gguf_error(b, dir, "past the end");
  poke<uint64_t>(b, last.offset, ~uint64_t(0) / 32 * 32);  // offset + nbytes overflows
  expect_gguf_error(b, dir, "past the end");
  poke<uint64_t>(b, last.offset, off + 1);
  expect_gguf_error(b, dir, "not aligned");
  const InfoAt same_size = tensor_info(b, "blk.1.ffn_gate_exps.weight");
  poke<uint64_t>(b, last.offset, peek<uint64_t>(b, same_size.offset));
  expect_gguf_error(b, dir, "overlap");
}

TEST_F(GgufHostile, Duplicates) {
  const size_t v = after_string(b, "blk.0.attn_v.weight") - 19;
  std::memcpy(b.data() + v, "blk.0.attn_k.weight", 19);
  expect_gguf_error(b, dir, "duplicate tensor name blk.0.attn_k.weight");
  b = orig_;
  const size_t k = after_string(b, "general.type") - 12;
  std::memcpy(b.data() + k, "general.name", 12);
  expect_gguf_error(b, dir, "duplicate key general.name");
}

// Random truncations and byte flips: every outcome is a parse or an Error, never a crash.
TEST_F(GgufHostile, Fuzz) {
  const auto t0 = std::chrono::steady_clock::now();
  const size_t data = GgufFile(path_).data_offset();
  const size_t infos = after_string(b, "output.weight") - 21;  // first tensor info
  const std::string p = dir.file("fuzz.gguf");
  std::mt19937_64 rng(20250224);
  int errors = 0, parsed = 0;
  auto open = [&] {
    try {
      GgufFile f(p);
      for (const RawTensor& t : f.tensors()) ASSERT_LE(t.data + t.nbytes, f.file().data() + f.file().size());
      ++parsed;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
      ++errors;
    }
  };

  // 200 truncations, longest first, so one copy is shrunk in place.
  std::vector<size_t> lens;
  for (int i = 0; i < 200; ++i)
    lens.push_back(i % 2 ? size_t(rng() % (data + 64)) : size_t(rng() % b.size()));
  std::sort(lens.rbegin(), lens.rend());
  write_bytes(p, b);
  for (size_t len : lens) {
    fs::resize_file(p, len);
    open();
  }
  EXPECT_EQ(parsed, 0);  // the last tensor ends at the end of the file

  // 500 flips in the header region: a third in the fixed header and first KVs, a third in
  // the tensor infos, a third anywhere before the data.
  write_bytes(p, b);
  const int fd = ::open(p.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 500; ++i) {
    const int zone = i % 3;
    const size_t pos = zone == 0 ? rng() % 512 : zone == 1 ? infos + rng() % (data - infos) : rng() % data;
    uint8_t v = uint8_t(rng());
    if (v == b[pos]) v ^= 0x80;
    ASSERT_EQ(::pwrite(fd, &v, 1, off_t(pos)), 1);
    open();
    ASSERT_EQ(::pwrite(fd, &b[pos], 1, off_t(pos)), 1);
  }
  ::close(fd);
  EXPECT_GT(errors, 300);
  EXPECT_GT(parsed, 10);  // flips inside strings and padding are harmless
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 10.0);
  std::printf("fuzz: %d errors, %d parsed, %.2f s\n", errors, parsed, s);
}

// ============================================================================================
// GGUF writer
// ============================================================================================

// Copies `src` through the typed setters (not raw bytes), so the encoding of each type and the
// layout of the writer are both what llama.cpp does.
void copy_typed(const GgufFile& src, GgufWriter& w) {
  for (const std::string& k : src.keys()) {
    switch (*src.type(k)) {
      case GgufType::STRING: w.set_string(k, *src.get_string(k)); break;
      case GgufType::U32: w.set_u32(k, uint32_t(*src.get_int(k))); break;
      case GgufType::I32: w.set_i32(k, int32_t(*src.get_int(k))); break;
      case GgufType::U64: w.set_u64(k, uint64_t(*src.get_int(k))); break;
      case GgufType::F32: w.set_f32(k, float(*src.get_float(k))); break;
      case GgufType::BOOL: w.set_bool(k, *src.get_bool(k)); break;
      case GgufType::ARRAY:
        switch (*src.array_type(k)) {
          case GgufType::STRING: w.set_string_array(k, *src.get_string_array(k)); break;
          case GgufType::F32: w.set_f32_array(k, *src.get_float_array(k)); break;
          case GgufType::I32: {
            const auto v = *src.get_int_array(k);
            w.set_i32_array(k, std::vector<int32_t>(v.begin(), v.end()));
            break;
          }
          default: FAIL() << "array type not covered: " << k;
        }
        break;
      default: FAIL() << "type not covered: " << k << " " << gguf_type_name(*src.type(k));
    }
  }
  for (const RawTensor& t : src.tensors()) w.add_tensor(t.name, t.dtype, t.shape, t.data, t.nbytes);
}

class GgufRoundTrip : public ::testing::TestWithParam<const char*> {};

TEST_P(GgufRoundTrip, ByteIdentical) {
  const std::string path = fx(std::string("gguf/") + GetParam());
  REQUIRE_PATH(path);
  TempDir dir;
  const GgufFile src(path);
  GgufWriter w;
  copy_typed(src, w);
  const std::string out = dir.file("out.gguf");
  w.write(out);
  EXPECT_FALSE(fs::exists(out + ".tmp"));
  const Bytes a = read_bytes(path), b = read_bytes(out);
  ASSERT_EQ(a.size(), b.size());
  const auto diff = std::mismatch(a.begin(), a.end(), b.begin());
  EXPECT_TRUE(diff.first == a.end()) << "first difference at byte " << (diff.first - a.begin());

  // The raw-copy path gives the same bytes.
  GgufWriter r;
  for (const std::string& k : src.keys()) r.copy_kv(src, k);
  for (const RawTensor& t : src.tensors()) r.add_tensor(t.name, t.dtype, t.shape, t.data, t.nbytes);
  r.write(out);
  EXPECT_TRUE(read_bytes(out) == a);

  // So does the producer path: each tensor made during write(), once, in file order.
  GgufWriter p;
  for (const std::string& k : src.keys()) p.copy_kv(src, k);
  std::vector<std::string> produced;
  for (const RawTensor& t : src.tensors())
    p.add_tensor(t.name, t.dtype, t.shape, t.nbytes, [&produced, &t](uint8_t* dst) {
      produced.push_back(t.name);
      std::memcpy(dst, t.data, t.nbytes);
    });
  EXPECT_TRUE(produced.empty());
  p.write(out);
  EXPECT_TRUE(read_bytes(out) == a);
  ASSERT_EQ(produced.size(), src.tensors().size());
  for (size_t i = 0; i < produced.size(); ++i) EXPECT_EQ(produced[i], src.tensors()[i].name);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GgufRoundTrip,
                         ::testing::Values("tiny-f32.gguf", "tiny-q8_0.gguf", "tiny-q4_0.gguf"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

TEST(GgufWriter, AlignmentPaddingAndOwnership) {
  TempDir dir;
  const std::string p = dir.file("w.gguf");
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_alignment(64);
  w.set_u32("x", 1);
  w.set_u32("x", 2);  // replaces in place
  std::vector<float> a(40, 1.5f);  // 160 bytes: padded to 192
  w.add_tensor("a", DType::F32, {5, 8}, a.data(), a.size() * 4);
  std::vector<uint8_t> q(34 * 2, 7);  // owned: two Q8_0 blocks
  w.add_tensor("q", DType::Q8_0, {1, 64}, std::move(q));
  w.write(p);

  const GgufFile f(p);
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.get_int("general.alignment"), 64);
  EXPECT_EQ(f.keys(), (std::vector<std::string>{"general.architecture", "general.alignment", "x"}));
  EXPECT_EQ(f.get_int("x"), 2);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[1].data - f.tensors()[0].data, 192);
  EXPECT_EQ(f.file().size(), f.data_offset() + 192 + 128);
  EXPECT_EQ(f.find("q")->shape, (std::vector<int64_t>{1, 64}));
  EXPECT_EQ(f.find("q")->data[40], 7);
  EXPECT_EQ(std::memcmp(f.find("a")->data, a.data(), 160), 0);

  w.set_alignment(32);  // back to the default: the key goes away
  EXPECT_FALSE(w.has("general.alignment"));
}

// --no-mmap puts a GGUF's data section on a 64-byte boundary, wherever the (32-aligned) file
// has it: the weights' 64-byte loads (weight tiles) are then aligned. Same bytes either way.
TEST(GgufFile, InMemoryDataSectionIs64ByteAligned) {
  TempDir dir;
  for (size_t len : {size_t(1), size_t(9), size_t(17), size_t(25), size_t(33), size_t(41), size_t(49), size_t(57)}) {
    const std::string p = dir.file("a" + std::to_string(len) + ".gguf");
    GgufWriter w;  // default alignment 32: the string's length moves the data section
    w.set_string("general.architecture", std::string(len, 'x'));
    std::vector<uint8_t> q(34 * 4);
    for (size_t i = 0; i < q.size(); ++i) q[i] = uint8_t(i * 7);
    w.add_tensor("q", DType::Q8_0, {2, 64}, std::move(q));
    w.write(p);
    const GgufFile mapped(p), mem(p, true);
    ASSERT_EQ(mapped.data_offset(), mem.data_offset());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(mem.file().data() + mem.data_offset()) % 64, 0u) << len;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(mem.find("q")->data) % 64, 0u) << len;
    EXPECT_EQ(std::memcmp(mem.find("q")->data, mapped.find("q")->data, 34 * 4), 0) << len;
    ASSERT_EQ(mem.file().size(), mapped.file().size());
    EXPECT_EQ(std::memcmp(mem.file().data(), mapped.file().data(), mapped.file().size()), 0) << len;
  }
}

TEST(GgufWriter, RejectsBadTensors) {
  GgufWriter w;
  std::vector<uint8_t> buf(1 << 16);
  const std::string where = "GgufWriter";
  expect_error([&] { w.add_tensor("x", DType::F32, {}, buf.data(), 4); }, where, "dimensions");
  expect_error([&] { w.add_tensor("x", DType::F32, {1, 1, 1, 1, 1}, buf.data(), 4); }, where, "dimensions");
  expect_error([&] { w.add_tensor("x", DType::F32, {0, 4}, buf.data(), 0); }, where, "bad shape");
  expect_error([&] { w.add_tensor("x", DType::F32, {2, 4}, buf.data(), 31); }, where, "needs 32");
  expect_error([&] { w.add_tensor("x", DType::Q4_0, {2, 48}, buf.data(), 54); }, where, "block size");
  expect_error([&] { w.add_tensor(std::string(64, 'n'), DType::F32, {1}, buf.data(), 4); }, where, "name");
  w.add_tensor("x", DType::F32, {1}, buf.data(), 4);
  expect_error([&] { w.add_tensor("x", DType::F32, {1}, buf.data(), 4); }, where, "duplicate");
  expect_error([&] { w.set_alignment(48); }, where, "power of two");
  expect_error([&] { w.set_i32("general.alignment", 64); }, where, "uint32");
  expect_error([&] { w.write("/nonexistent-dir/x.gguf"); }, "/nonexistent-dir/x.gguf", "cannot create");
  expect_error([&] { w.add_tensor("y", DType::F32, {1}, 4, GgufWriter::Producer()); }, where, "no producer");
  expect_error([&] { w.add_tensor("y", DType::F32, {2}, 4, [](uint8_t*) {}); }, where, "needs 8");
}

TEST(GgufWriter, FailingProducerLeavesNoFile) {
  TempDir dir;
  const std::string p = dir.file("w.gguf");
  GgufWriter w;
  w.add_tensor("a", DType::F32, {4}, 16, [](uint8_t* dst) { std::memset(dst, 0, 16); });
  w.add_tensor("b", DType::F32, {4}, 16, [](uint8_t*) { mixtral::fail("producer", "out of ideas"); });
  expect_error([&] { w.write(p); }, "producer", "out of ideas");
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
}

// ============================================================================================
// safetensors
// ============================================================================================

TEST(Safetensors, ReadTiny) {
  const std::string path = fx("hf/tiny/model.safetensors");
  REQUIRE_PATH(path);
  const SafetensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), 65u);
  EXPECT_EQ(f.tensors().front().name, "model.embed_tokens.weight");  // file order
  EXPECT_EQ(f.tensors().back().name, "lm_head.weight");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const RawTensor* e = f.find("model.layers.0.block_sparse_moe.experts.7.w2.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->dtype, DType::F32);
  EXPECT_EQ(e->shape, (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(e->nbytes, 128u * 256 * 4);
  EXPECT_EQ(f.find("model.layers.0.block_sparse_moe.gate.weight")->shape, (std::vector<int64_t>{8, 128}));
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_EQ(f.tensors().front().data, f.file().data() + 8 + 7744);
  EXPECT_EQ(f.tensors().back().data + f.tensors().back().nbytes, f.file().data() + f.file().size());
}

namespace {

// A safetensors file from a header text and `data_bytes` bytes of data.
std::string make_st(const TempDir& dir, const std::string& header, size_t data_bytes,
                    std::optional<uint64_t> claimed_len = std::nullopt) {
  Bytes b(8);
  const uint64_t n = claimed_len ? *claimed_len : header.size();
  std::memcpy(b.data(), &n, 8);
  b.insert(b.end(), header.begin(), header.end());
  b.resize(b.size() + data_bytes, 0);
  const std::string p = dir.file("bad.safetensors");
  write_bytes(p, b);
  return p;
}

void expect_st_error(const std::string& p, const std::string& word) {
  expect_error([&] { SafetensorsFile f(p); }, p, word);
}

}  // namespace

TEST(SafetensorsHostile, HeaderLength) {
  TempDir dir;
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_NO_THROW(SafetensorsFile{make_st(dir, ok, 8)});
  write_bytes(dir.file("short.safetensors"), Bytes{1, 2, 3});
  expect_st_error(dir.file("short.safetensors"), "truncated");
  expect_st_error(make_st(dir, ok, 8, ok.size() + 9), "past the end");
  expect_st_error(make_st(dir, ok, 8, uint64_t(1) << 62), "over the limit");
  expect_st_error(make_st(dir, ok, 8, 100'000'001), "over the limit");
  // The real file cut inside its header.
  const std::string real = fx("hf/tiny/model.safetensors");
  if (fs::exists(real)) {
    Bytes b = read_bytes(real);
    b.resize(4000);
    write_bytes(dir.file("cut.safetensors"), b);
    expect_st_error(dir.file("cut.safetensors"), "past the end");
  }
}

TEST(SafetensorsHostile, InvalidJson) {
  TempDir dir;
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32",)", 0), "invalid JSON");
  expect_st_error(make_st(dir, "\xff\xfe garbage", 0), "invalid JSON");
  expect_st_error(make_st(dir, "[1, 2]", 0), "not an object");
  expect_st_error(make_st(dir, R"({"a": 5})", 0), "not an object");
  expect_st_error(make_st(dir, R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), "dtype");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4), "shape");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4), "data_offsets");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4), "data_offsets");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}})", 4), "data_offsets");
  // Deep nesting must not blow the stack.
  const std::string deep = R"({"__metadata__":)" + std::string(200000, '[') + std::string(200000, ']') + "}";
  EXPECT_NO_THROW(SafetensorsFile{make_st(dir, deep, 0)});
  expect_st_error(make_st(dir, std::string(200000, '['), 0), "invalid JSON");
}

TEST(SafetensorsHostile, DataRanges) {
  TempDir dir;
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 12), "past the end");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[18446744073709551615,18446744073709551615]}})", 16),
                  "data_offsets");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", 16), "needs 16 bytes");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", 16), "needs 8 bytes");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 16), "overlap");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]}})", 16), "negative");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 16), "non-integer");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})", 16),
                  "overflow");
  expect_st_error(make_st(dir, R"({"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]}})", 16),
                  "overflow");
}

TEST(SafetensorsHostile, UnsupportedDtype) {
  TempDir dir;
  expect_st_error(make_st(dir, R"({"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", 16),
                  "tensor ids has unsupported dtype I64");
  expect_st_error(make_st(dir, R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
                  "tensor w has unsupported dtype F8_E4M3");
}

TEST(Safetensors, EmptyAndScalar) {
  TempDir dir;
  const std::string p = make_st(
      dir, R"({"__metadata__":{"k":"v","n":1},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
           R"("z":{"dtype":"F16","shape":[0,3],"data_offsets":[4,4]}})", 4);
  const SafetensorsFile f(p);
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.find("s")->numel(), 1);
  EXPECT_EQ(f.find("z")->nbytes, 0u);
  EXPECT_EQ(f.metadata().size(), 1u);  // non-string values are skipped
}

TEST(SafetensorsWriter, LayoutAndRoundTrip) {
  TempDir dir;
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> h = {f32_to_f16(0.5f), f32_to_f16(-2.0f), f32_to_f16(3.0f)};
  std::vector<uint16_t> bf = {f32_to_bf16(1.25f)};
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.add_tensor("half", DType::F16, {3}, h.data(), 6);
  w.add_tensor("matrix", DType::F32, {2, 3}, a.data(), 24);
  w.add_tensor("brain", DType::BF16, {1, 1}, bf.data(), 2);
  w.add_tensor("empty", DType::F32, {0, 5}, nullptr, 0);
  EXPECT_EQ(w.data_bytes(), 32u);
  const std::string p = dir.file("w.safetensors");
  w.write(p);

  const Bytes b = read_bytes(p);
  const uint64_t n = peek<uint64_t>(b, 0);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(b[8], '{');
  EXPECT_EQ(b.size(), 8 + n + 32);
  const std::string header(b.begin() + 8, b.begin() + 8 + ptrdiff_t(n));
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\"},\"matrix\"", 0), 0u) << header;
  EXPECT_EQ(header.find_first_not_of(' ', header.find_last_of('}') + 1), std::string::npos);

  const SafetensorsFile f(p);
  ASSERT_EQ(f.tensors().size(), 4u);
  // F32 data first, then the 2-byte types, each group in insertion order.
  EXPECT_EQ(f.tensors()[0].name, "matrix");
  EXPECT_EQ(f.tensors()[1].name, "empty");
  EXPECT_EQ(f.tensors()[2].name, "half");
  EXPECT_EQ(f.tensors()[3].name, "brain");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.find("matrix")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(f.find("matrix")->data, a.data(), 24), 0);
  EXPECT_EQ(std::memcmp(f.find("half")->data, h.data(), 6), 0);
  EXPECT_EQ(f.find("brain")->dtype, DType::BF16);
  EXPECT_EQ(std::memcmp(f.find("brain")->data, bf.data(), 2), 0);
  EXPECT_EQ(f.find("empty")->shape, (std::vector<int64_t>{0, 5}));
  for (const RawTensor& t : f.tensors())
    EXPECT_EQ(uintptr_t(t.data - f.file().data()) % dtype_info(t.dtype).block_bytes, 0u) << t.name;
}

TEST(SafetensorsWriter, RejectsBadTensors) {
  SafetensorsWriter w;
  std::vector<uint8_t> buf(64);
  const std::string where = "SafetensorsWriter";
  expect_error([&] { w.add_tensor("q", DType::Q8_0, {32}, buf.data(), 34); }, where, "not supported");
  expect_error([&] { w.add_tensor("x", DType::F32, {2}, buf.data(), 4); }, where, "needs 8");
  expect_error([&] { w.add_tensor("x", DType::F32, {-1}, buf.data(), 4); }, where, "bad shape");
  expect_error([&] { w.add_tensor("__metadata__", DType::F32, {1}, buf.data(), 4); }, where, "invalid tensor name");
  w.add_tensor("x", DType::F32, {1}, buf.data(), 4);
  expect_error([&] { w.add_tensor("x", DType::F32, {1}, buf.data(), 4); }, where, "duplicate");
}

// ============================================================================================
// Hugging Face checkpoints
// ============================================================================================

TEST(HfCheckpoint, Tiny) {
  const std::string dir = fx("hf/tiny");
  REQUIRE_PATH(dir);
  const HfCheckpoint c(dir);
  EXPECT_EQ(c.config().at("hidden_size"), 128);
  EXPECT_EQ(c.config().at("num_local_experts"), 8);
  EXPECT_EQ(c.config().at("rope_theta").get<double>(), 1e6);
  EXPECT_EQ(c.tensors().size(), 65u);
  EXPECT_EQ(c.files().size(), 1u);
  const RawTensor* w2 = c.find("model.layers.1.block_sparse_moe.experts.3.w2.weight");
  ASSERT_NE(w2, nullptr);
  EXPECT_EQ(w2->shape, (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(c.find("lm_head.weight")->shape, (std::vector<int64_t>{32000, 128}));
  EXPECT_EQ(c.tokenizer_model_path(), dir + "/tokenizer.model");

  const HfCheckpoint d(fx("hf/tiny-dense"));
  EXPECT_EQ(d.config().at("rope_theta").get<double>(), 1e4);
  ASSERT_NE(d.find("model.layers.0.mlp.gate_proj.weight"), nullptr);
  EXPECT_EQ(d.find("model.layers.0.mlp.gate_proj.weight")->shape, (std::vector<int64_t>{512, 128}));
}

// Re-writes tiny's tensors into 2 shards + index, reads them back, compares every byte.
TEST(HfCheckpoint, ShardedRoundTrip) {
  const std::string src_dir = fx("hf/tiny");
  REQUIRE_PATH(src_dir);
  const SafetensorsFile src(src_dir + "/model.safetensors");
  TempDir dir;
  fs::copy_file(src_dir + "/config.json", dir.file("config.json"));
  const char* shard[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
  SafetensorsWriter w[2];
  std::vector<std::pair<std::string, std::string>> map;
  const size_t half = src.tensors().size() / 2;
  for (size_t i = 0; i < src.tensors().size(); ++i) {
    const RawTensor& t = src.tensors()[i];
    const int s = i < half ? 0 : 1;
    w[s].add_tensor(t.name, t.dtype, t.shape, t.data, t.nbytes);
    map.emplace_back(t.name, shard[s]);
  }
  for (int s = 0; s < 2; ++s) w[s].write(dir.file(shard[s]));
  write_safetensors_index(dir.file("model.safetensors.index.json"), map, w[0].data_bytes() + w[1].data_bytes());

  auto compare = [&](const HfCheckpoint& c) {
    ASSERT_EQ(c.tensors().size(), src.tensors().size());
    for (const RawTensor& t : src.tensors()) {
      const RawTensor* r = c.find(t.name);
      ASSERT_NE(r, nullptr) << t.name;
      EXPECT_EQ(r->dtype, t.dtype);
      EXPECT_EQ(r->shape, t.shape);
      ASSERT_EQ(r->nbytes, t.nbytes);
      EXPECT_EQ(std::memcmp(r->data, t.data, t.nbytes), 0) << t.name;
    }
  };
  {
    const HfCheckpoint c(dir.path());
    EXPECT_EQ(c.files().size(), 2u);
    EXPECT_EQ(c.tokenizer_model_path(), "");
    compare(c);
    const nlohmann::json idx = nlohmann::json::parse(std::ifstream(dir.file("model.safetensors.index.json")));
    EXPECT_EQ(idx["metadata"]["total_size"].get<uint64_t>(), 9865856u * 4);
  }
  // Without the index: every *.safetensors in sorted order.
  fs::rename(dir.file("model.safetensors.index.json"), dir.file("index.bak"));
  compare(HfCheckpoint(dir.path()));
  fs::rename(dir.file("index.bak"), dir.file("model.safetensors.index.json"));

  // An index entry whose shard lacks the tensor.
  std::vector<std::pair<std::string, std::string>> bad = map;
  bad.emplace_back("model.extra.weight", shard[0]);
  write_safetensors_index(dir.file("model.safetensors.index.json"), bad, 0);
  expect_error([&] { HfCheckpoint c(dir.path()); }, shard[0], "model.extra.weight is listed");
  // An index naming a shard outside the folder, or a missing one.
  write_text(dir.file("model.safetensors.index.json"), R"({"weight_map":{"a":"../x.safetensors"}})");
  expect_error([&] { HfCheckpoint c(dir.path()); }, "model.safetensors.index.json", "not a file inside");
  write_text(dir.file("model.safetensors.index.json"), R"({"weight_map":{"a":"gone.safetensors"}})");
  expect_error([&] { HfCheckpoint c(dir.path()); }, "gone.safetensors", "cannot open");
  write_text(dir.file("model.safetensors.index.json"), R"({"weight_map":[]})");
  expect_error([&] { HfCheckpoint c(dir.path()); }, "model.safetensors.index.json", "weight_map");
  write_text(dir.file("model.safetensors.index.json"), "{");
  expect_error([&] { HfCheckpoint c(dir.path()); }, "model.safetensors.index.json", "invalid JSON");

  // Without an index, a tensor in two files is ambiguous.
  fs::remove(dir.file("model.safetensors.index.json"));
  fs::copy_file(dir.file(shard[0]), dir.file("zz-copy.safetensors"));
  expect_error([&] { HfCheckpoint c(dir.path()); }, dir.path(), "more than one file");
}

TEST(HfCheckpoint, MissingPieces) {
  TempDir dir;
  const std::string gone = dir.file("nope");
  expect_error([&] { HfCheckpoint c(gone); }, gone, "not a directory");
  expect_error([&] { HfCheckpoint c(dir.path()); }, dir.file("config.json"), "missing");
  write_text(dir.file("config.json"), "{not json");
  expect_error([&] { HfCheckpoint c(dir.path()); }, dir.file("config.json"), "invalid JSON");
  write_text(dir.file("config.json"), "[]");
  expect_error([&] { HfCheckpoint c(dir.path()); }, dir.file("config.json"), "not a JSON object");
  write_text(dir.file("config.json"), "{}");
  expect_error([&] { HfCheckpoint c(dir.path()); }, dir.path(), "no model.safetensors");
  write_text(dir.file("model.safetensors"), "garbage!");
  expect_error([&] { HfCheckpoint c(dir.path()); }, dir.file("model.safetensors"), "over the limit");
}
