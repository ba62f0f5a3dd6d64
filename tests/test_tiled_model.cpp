// Weights tiled at load (LoadOptions::tiles; kernels/weight_tiles.h) change no result: for each
// quantized fixture (llama.cpp's Q8_0 and Q4_0 files; Q4_K_M = Q4_K + Q6_K and Q6_K converted
// from the k256 checkpoint), the logits of a prefill in chunks and of single-token steps are
// bitwise the same mapped (file order), read into memory in file order (--no-tiles) and read
// into memory tiled — through the float path (int8 activations off) and the int8 path — and
// with the experts offloaded to a cache that tiles them as it reads them. Also: which matrices
// are tiled (not the embedding, nor a tied LM head), and that an exporter refuses tiles.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "engine/session.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "kernels/matmul.h"
#include "model/export_gguf.h"
#include "session_logits.h"
#include "test_util.h"

using namespace mixtral;
using namespace mixtral::testing;
namespace fs = std::filesystem;

namespace {

const char* kText = "Tiles move the bytes of sixteen rows so that the kernels read them in one pass; "
                    "the values, and so the logits, stay the same.";

std::string temp(const std::string& name) { return ::testing::TempDir() + "/mixtral-tiles-" + name; }

// The quantized models: llama.cpp's fixtures, and the k-quants converted once per test run.
std::vector<std::string> quantized_models() {
  std::vector<std::string> out = {fixture("gguf/tiny-q8_0.gguf"), fixture("gguf/tiny-q4_0.gguf")};
  const auto f32 = Model::load(fixture("hf/k256"));
  for (bool mix : {true, false}) {
    const std::string path = temp(mix ? "k256-q4_k_m.gguf" : "k256-q6_k.gguf");
    ExportOptions o;
    o.type = mix ? DType::Q4_K : DType::Q6_K;
    o.k_quant_mix = mix;
    export_gguf(*f32, path, o);
    out.push_back(path);
  }
  return out;
}

LoadOptions in_memory(bool tiles) {
  LoadOptions o;
  o.no_mmap = true;
  o.tiles = tiles;
  return o;
}

LoadOptions offloaded(bool tiles) {
  LoadOptions o;
  o.memory_budget = uint64_t(1) << 30;  // ample: the slot count is capped below
  o.cache.n_slots = 3;                  // fewer than a layer's experts: experts are read again and again
  o.tiles = tiles;  // the resident weights
  return o;
}

// Prefill in chunks of 7, then 8 single-token steps teacher-forced (session_logits.h).
std::vector<float> run(const Model& m) { return teacher_forced_logits(m, m.tokenizer().encode(kText, true), 8); }

// Every quantized model, loaded every way, gives the mapped model's logits.
void expect_tiles_change_nothing(bool int8) {
  REQUIRE_PATH(fixture("gguf/tiny-q4_0.gguf"));
  REQUIRE_PATH(fixture("hf/k256"));
  const bool int8_was = int8_activations();
  set_int8_activations(int8);
  for (const std::string& path : quantized_models()) {
    SCOPED_TRACE(path);
    const auto mapped = Model::load(path);
    const auto rows = Model::load(path, in_memory(false));
    const auto tiled = Model::load(path, in_memory(true));
    ASSERT_FALSE(mapped->tiled());
    ASSERT_FALSE(rows->tiled());
    ASSERT_TRUE(tiled->tiled());
    const auto want = run(*mapped);
    expect_same_bits(run(*rows), want, "in memory, file order");
    expect_same_bits(run(*tiled), want, "in memory, tiled");
    const auto cache = Model::load(path, offloaded(true));
    ASSERT_TRUE(cache->tiled());
    expect_same_bits(run(*cache), want, "experts offloaded, resident weights tiled");
  }
  set_int8_activations(int8_was);
}

}  // namespace

TEST(TiledModel, FloatPathLogitsIdentical) { expect_tiles_change_nothing(false); }
// (Through the int8 kernels: matmul_q8 on tiled weights.)
TEST(TiledModel, Int8PathLogitsIdentical) { expect_tiles_change_nothing(true); }

TEST(TiledModel, EverythingButTheEmbeddingIsTiled) {
  const std::string path = fixture("gguf/tiny-q4_0.gguf");
  REQUIRE_PATH(path);
  const auto m = Model::load(path, in_memory(true));
  const Weights& w = m->weights();
  EXPECT_EQ(w.token_embd.layout, Layout::Rows);
  EXPECT_NE(w.output.data, w.token_embd.data);
  EXPECT_EQ(w.output.layout, Layout::Tiles16);
  for (const LayerWeights& L : w.layers) {
    EXPECT_EQ(L.wq.layout, Layout::Tiles16);
    EXPECT_EQ(L.wo.layout, Layout::Tiles16);
    EXPECT_EQ(L.router.layout, Layout::Rows) << dtype_name(L.router.dtype) << " (no tiles)";
    for (const ExpertWeights& e : L.experts) {
      EXPECT_EQ(e.w1.layout, Layout::Tiles16);
      EXPECT_EQ(e.w3.layout, Layout::Tiles16);
      EXPECT_EQ(e.w2.layout, Layout::Tiles16);
    }
  }
  EXPECT_GT(m->tile_seconds(), 0.0);
  // Not tiled: mapped, --no-tiles, and F32 weights.
  EXPECT_EQ(Model::load(path)->weights().layers[0].experts[0].w1.layout, Layout::Rows);
  EXPECT_EQ(Model::load(path, in_memory(false))->weights().layers[0].experts[0].w1.layout, Layout::Rows);
  const auto f32 = Model::load(fixture("gguf/tiny-f32.gguf"), in_memory(true));
  EXPECT_FALSE(f32->tiled());
  EXPECT_EQ(f32->weights().layers[0].experts[0].w1.layout, Layout::Rows);
}

// Offloaded: the resident weights are tiled, the experts in their slots stay in file order.
TEST(TiledModel, OffloadedResidentWeightsTiledSlotsInFileOrder) {
  const std::string path = fixture("gguf/tiny-q8_0.gguf");
  REQUIRE_PATH(path);
  for (bool tiles : {true, false}) {
    const auto m = Model::load(path, offloaded(tiles));
    ExpertCache& cache = *m->expert_cache();
    EXPECT_EQ(m->tiled(), tiles);
    EXPECT_EQ(m->weights().token_embd.layout, Layout::Rows);
    EXPECT_EQ(m->weights().layers[0].wq.layout, tiles ? Layout::Tiles16 : Layout::Rows);  // resident copies
    std::vector<int32_t> e = {5};
    cache.demand(1, e);
    const ExpertWeights& X = cache.acquire(1, 5);
    for (const Matrix* w : {&X.w1, &X.w3, &X.w2}) EXPECT_EQ(w->layout, Layout::Rows);
    cache.release(1, 5);
  }
}

// A GGUF without output.weight: the LM head is the embedding, which stays in Rows layout.
TEST(TiledModel, TiedLmHeadStaysInRows) {
  const std::string src = fixture("gguf/tiny-q8_0.gguf");
  REQUIRE_PATH(src);
  const std::string path = temp("tied-q8_0.gguf");
  {
    GgufFile in(src);
    GgufWriter out;
    for (const std::string& k : in.keys()) out.copy_kv(in, k);
    for (const RawTensor& t : in.tensors())
      if (t.name != "output.weight") out.add_tensor(t.name, t.dtype, t.shape, t.data, t.nbytes);
    out.write(path);
  }
  const auto mapped = Model::load(path);
  ASSERT_TRUE(mapped->config().tied_embeddings);
  const auto want = run(*mapped);
  for (const LoadOptions& o : {in_memory(true), offloaded(true)}) {
    const auto m = Model::load(path, o);
    EXPECT_TRUE(m->tiled());
    EXPECT_EQ(m->weights().output.data, m->weights().token_embd.data);
    EXPECT_EQ(m->weights().output.layout, Layout::Rows);
    EXPECT_EQ(m->weights().token_embd.layout, Layout::Rows);
    EXPECT_EQ(m->weights().layers[0].wk.layout, Layout::Tiles16);
    expect_same_bits(run(*m), want, o.memory_budget ? "offloaded" : "in memory");
  }
  fs::remove(path);
}

TEST(TiledModel, ExportRefusesTiles) {
  const std::string path = fixture("gguf/tiny-q4_0.gguf");
  REQUIRE_PATH(path);
  ExportOptions o;
  o.type = DType::Q8_0;
  const std::string out = temp("export.gguf");
  EXPECT_THROW(export_gguf(*Model::load(path, in_memory(true)), out, o), Error);
  EXPECT_NO_THROW(export_gguf(*Model::load(path, in_memory(false)), out, o));
  fs::remove(out);
}
