#include "model/random_model.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "io/gguf_writer.h"
#include "model/export_gguf.h"
#include "model/requantize.h"
#include "quant/quantize.h"

namespace mixtral {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001B3ull;
  return h;
}

inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  return h ^ (h >> 16);
}

}  // namespace

uint64_t random_tensor_key(uint64_t seed, const std::string& name) { return splitmix64(seed) ^ splitmix64(fnv1a64(name)); }

void random_row(uint64_t tensor_key, int64_t row, float std, float offset, float* out, int64_t n) {
  const uint64_t key = splitmix64(tensor_key + uint64_t(row));
  const uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  // int32 · 2^-31 is uniform on [-1, 1), of std 1/sqrt(3).
  const float scale = float(std * std::sqrt(3.0) / 2147483648.0);
  for (int64_t j = 0; j < n; ++j) {  // vectorised: 32-bit multiplies and xor-shifts only
    const uint32_t u = fmix32(fmix32(uint32_t(j) ^ k0) ^ k1);
    out[j] = offset + float(int32_t(u)) * scale;
  }
}

RandomPreset random_model_preset(const std::string& name) {
  if (name == "tiny") {
    Config c;
    c.arch = "mixtral";
    c.dim = 128; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 32;
    c.ffn_dim = 256; c.vocab_size = 32000; c.max_context = 32768; c.n_experts = 8; c.n_experts_used = 2;
    c.rope_theta = 1e6f;
    c.validate("preset tiny");
    return {c, 0.08f};
  }
  if (name == "tiny-q") {  // ../shared/fixtures/presets/tiny-q.json: rows of 256, so K and IQ types fit
    Config c;
    c.arch = "mixtral";
    c.dim = 256; c.n_layers = 2; c.n_heads = 8; c.n_kv_heads = 4; c.head_dim = 32;
    c.ffn_dim = 512; c.vocab_size = 32000; c.max_context = 32768; c.n_experts = 8; c.n_experts_used = 2;
    c.rope_theta = 1e6f;
    c.validate("preset tiny-q");
    return {c, 0.06f};
  }
  if (name == "mixtral-8x7b" || name == "mixtral-8x22b" || name == "mistral-7b") return {Config::preset(name), 0.02f};
  fail("--preset", "unknown preset \"" + name + "\" (tiny, tiny-q, mixtral-8x7b, mixtral-8x22b, mistral-7b)");
}

namespace {

// How a tensor's values are drawn (RandomModelOptions' stds).
enum class Init { Linear, Qk, Norm, Router };

struct RandomTensor {
  std::string name;
  std::vector<int64_t> shape;  // outermost first, as GgufWriter takes it
  Init init;
};

// The order of export_gguf (and of llama.cpp's convert script for Mixtral).
std::vector<RandomTensor> tensor_list(const Config& c) {
  std::vector<RandomTensor> t;
  auto norm = [&](const std::string& name) { t.push_back({name, {c.dim}, Init::Norm}); };
  t.push_back({"token_embd.weight", {c.vocab_size, c.dim}, Init::Linear});
  norm("output_norm.weight");
  t.push_back({"output.weight", {c.vocab_size, c.dim}, Init::Linear});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    norm(p + "attn_norm.weight");
    t.push_back({p + "attn_q.weight", {c.q_dim(), c.dim}, Init::Qk});
    t.push_back({p + "attn_k.weight", {c.kv_dim(), c.dim}, Init::Qk});
    t.push_back({p + "attn_v.weight", {c.kv_dim(), c.dim}, Init::Linear});
    t.push_back({p + "attn_output.weight", {c.dim, c.q_dim()}, Init::Linear});
    norm(p + "ffn_norm.weight");
    if (!c.is_moe()) {
      t.push_back({p + "ffn_gate.weight", {c.ffn_dim, c.dim}, Init::Linear});
      t.push_back({p + "ffn_up.weight", {c.ffn_dim, c.dim}, Init::Linear});
      t.push_back({p + "ffn_down.weight", {c.dim, c.ffn_dim}, Init::Linear});
      continue;
    }
    t.push_back({p + "ffn_gate_inp.weight", {c.n_experts, c.dim}, Init::Router});
    t.push_back({p + "ffn_gate_exps.weight", {c.n_experts, c.ffn_dim, c.dim}, Init::Linear});
    t.push_back({p + "ffn_up_exps.weight", {c.n_experts, c.ffn_dim, c.dim}, Init::Linear});
    t.push_back({p + "ffn_down_exps.weight", {c.n_experts, c.dim, c.ffn_dim}, Init::Linear});
  }
  return t;
}

constexpr const char* kImatrixHint = "make an F32/F16 model, then `mixtral quantize --imatrix`";

}  // namespace

std::vector<TensorDesc> random_model_tensors(const Config& c) {
  std::vector<TensorDesc> out;
  for (const RandomTensor& t : tensor_list(c)) out.push_back({t.name, std::vector<int64_t>(t.shape.rbegin(), t.shape.rend())});
  return out;
}

std::vector<PlannedTensor> random_model_plan(const Config& c, FileType ft) {
  const FileTypeInfo& info = file_type_info(ft);
  if (info.needs_imatrix)
    fail("--type", std::string("file type ") + info.name + " needs an importance matrix (llama-quantize refuses it without one): " + kImatrixHint);
  MixModel m;
  m.n_layers = int(c.n_layers);
  m.n_experts = int(c.n_experts);
  m.n_heads = int(c.n_heads);
  m.n_kv_heads = int(c.n_kv_heads);
  const std::vector<TensorDesc> tensors = random_model_tensors(c);
  const std::vector<TensorDesc> ordered = llama_quantize_order(tensors);
  std::map<std::string, PlannedTensor> by_name;
  std::vector<DType> checked;
  // In llama-quantize's order, so that the tensor named is the one it would stop at.
  for (PlannedTensor& p : plan_quant_types(ft, m, ordered, std::vector<DType>(ordered.size(), DType::F32))) {
    if (tensor_needs_imatrix(ft, p.tensor.name, p.type))
      fail("--type", std::string("file type ") + info.name + " gives " + p.tensor.name + " type " + dtype_name(p.type) +
                         ", which needs an importance matrix (llama-quantize refuses it without one): " + kImatrixHint);
    if (std::find(checked.begin(), checked.end(), p.type) == checked.end()) {
      if (p.type != DType::F32 && !has_quantizer(p.type, false))
        fail("--type", std::string("file type ") + info.name + " needs " + dtype_name(p.type) + " (for " + p.tensor.name +
                           "), which this build cannot quantize");
      checked.push_back(p.type);
    }
    by_name.emplace(p.tensor.name, std::move(p));
  }
  std::vector<PlannedTensor> out;
  for (const TensorDesc& t : tensors) out.push_back(by_name.at(t.name));
  return out;
}

void make_random_gguf(const Config& c, const Vocab& vocab, const std::string& path, const RandomModelOptions& o) {
  if (int64_t(vocab.pieces.size()) != c.vocab_size)
    fail("tokenizer", "has " + std::to_string(vocab.pieces.size()) + " pieces but the model's vocabulary is " +
                          std::to_string(c.vocab_size));
  c.validate("make-model");
  std::map<std::string, DType> planned;
  if (o.file_type)
    for (const PlannedTensor& p : random_model_plan(c, *o.file_type)) planned[p.tensor.name] = p.type;
  GgufWriter g;
  g.set_drop_behind(true);  // the file is bigger than RAM; the page cache holds ~2 tensors of it
  set_gguf_metadata(g, c, vocab, o.name);
  if (o.file_type) g.set_u32("general.file_type", uint32_t(*o.file_type));

  ThreadPool pool(o.threads > 0 ? o.threads : ThreadPool::default_threads());
  const float std_gate = o.std_gate > 0 ? o.std_gate : float(4.0 * std::sqrt(2.0) / std::sqrt(double(c.dim)));
  const int64_t total = c.params_total();
  int64_t done = 0;  // touched by the producers only, which write() calls one at a time

  // A tensor of `rows` rows of `cols` values (experts stacked: rows = n_experts · rows of one).
  // Rows are made in slices; within a slice each thread makes a contiguous run of rows.
  auto add = [&](const std::string& name, std::vector<int64_t> shape, DType type, float std, float offset) {
    const int64_t cols = shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    const size_t rb = row_bytes(type, cols);
    const uint64_t key = random_tensor_key(o.seed, name);
    g.add_tensor(name, type, shape, rb * size_t(rows), [=, &pool, &done, &o](uint8_t* dst) {
      const int64_t slice = std::max<int64_t>(1, (int64_t(64) << 20) / (cols * 4));  // ~64 MB of float32 per slice
      for (int64_t r0 = 0; r0 < rows; r0 += slice) {
        const int64_t r1 = std::min(rows, r0 + slice);
        pool.parallel_for(r1 - r0, [&](int64_t begin, int64_t end) {
          std::vector<float> x(static_cast<size_t>(cols));
          for (int64_t r = r0 + begin; r < r0 + end; ++r) {
            random_row(key, r, std, offset, x.data(), cols);
            quantize_row(type, x.data(), dst + rb * size_t(r), cols);
          }
        });
        done += (r1 - r0) * cols;
        if (o.progress) o.progress(std::min(done, total), total);
      }
    });
  };
  for (const RandomTensor& t : tensor_list(c)) {
    const bool matrix = t.init == Init::Linear || t.init == Init::Qk;
    const DType type = o.file_type ? planned.at(t.name) : matrix ? fit_type(o.type, t.shape.back()) : DType::F32;
    switch (t.init) {
      case Init::Linear: add(t.name, t.shape, type, o.std_linear, 0.f); break;
      case Init::Qk: add(t.name, t.shape, type, o.std_qk, 0.f); break;
      case Init::Norm: add(t.name, t.shape, type, o.std_norm, 1.f); break;
      case Init::Router: add(t.name, t.shape, type, std_gate, 0.f); break;
    }
  }
  g.write(path);
}

}  // namespace mixtral
