#include "model/model.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/direct_file.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "core/memory.h"
#include "core/thread_pool.h"
#include "io/gguf.h"
#include "io/hf_checkpoint.h"
#include "kernels/dequant.h"
#include "kernels/weight_tiles.h"
#include "text/sentencepiece_model.h"

namespace mixtral {
namespace {

// Looks tensors up by name in one checkpoint and turns them into checked views.
class Binder {
 public:
  Binder(std::string where, std::function<const RawTensor*(const std::string&)> find)
      : where_(std::move(where)), find_(std::move(find)) {}

  bool has(const std::string& name) const { return find_(name) != nullptr; }

  const RawTensor& get(const std::string& name, const std::vector<int64_t>& shape) const {
    const RawTensor* t = find_(name);
    if (!t) fail(where_, "missing tensor " + name);
    if (t->shape != shape)
      fail(where_, "tensor " + name + " has shape " + shape_str(t->shape) + ", expected " + shape_str(shape));
    return *t;
  }

  // A [rows][cols] weight matrix.
  Matrix matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const RawTensor& t = get(name, {rows, cols});
    return {t.dtype, rows, cols, t.data};
  }

  // Expert e of a stacked [n][rows][cols] tensor: rows [e·rows, (e+1)·rows) of it.
  std::vector<Matrix> stacked(const std::string& name, int64_t n, int64_t rows, int64_t cols) const {
    const RawTensor& t = get(name, {n, rows, cols});
    const Matrix all{t.dtype, n * rows, cols, t.data};
    std::vector<Matrix> out;
    for (int64_t e = 0; e < n; ++e) out.push_back(all.slice_rows(e * rows, rows));
    return out;
  }

  // A norm's weight vector, converted to float32 (the one copy loading makes).
  std::vector<float> vector(const std::string& name, int64_t n) const {
    const RawTensor& t = get(name, {n});
    if (is_quantized(t.dtype)) fail(where_, "tensor " + name + " is quantized; norm weights must be F32/F16/BF16");
    std::vector<float> v(static_cast<size_t>(n));
    ref::dequantize_row(t.dtype, t.data, v.data(), n);
    return v;
  }

 private:
  std::string where_;
  std::function<const RawTensor*(const std::string&)> find_;
};

Vocab vocab_from_gguf(const GgufFile& g) {
  const std::string model = g.get_string("tokenizer.ggml.model").value_or("");
  if (model != "llama")
    fail(g.path(), "tokenizer.ggml.model \"" + model + "\" is not supported (SentencePiece \"llama\" only)");
  Vocab v;
  v.pieces = g.get_string_array("tokenizer.ggml.tokens").value_or(std::vector<std::string>{});
  if (v.pieces.empty()) fail(g.path(), "tokenizer.ggml.tokens is missing or empty");
  const size_t n = v.pieces.size();
  v.scores = g.get_float_array("tokenizer.ggml.scores").value_or(std::vector<float>(n, 0.f));
  const auto types = g.get_int_array("tokenizer.ggml.token_type").value_or(std::vector<int64_t>(n, 1));
  if (v.scores.size() != n || types.size() != n)
    fail(g.path(), "tokenizer.ggml.scores/token_type do not match tokenizer.ggml.tokens in length");
  for (int64_t t : types) {
    if (t < 1 || t > 6) fail(g.path(), "tokenizer.ggml.token_type has invalid value " + std::to_string(t));
    v.types.push_back(PieceType(t));
  }
  auto id = [&](const char* key, int64_t fallback) {
    const int64_t i = g.get_int(key).value_or(fallback);
    if (i < 0 || size_t(i) >= n) fail(g.path(), std::string(key) + " is outside the vocabulary");
    return int32_t(i);
  };
  v.bos_id = id("tokenizer.ggml.bos_token_id", 1);
  v.eos_id = id("tokenizer.ggml.eos_token_id", 2);
  v.unk_id = id("tokenizer.ggml.unknown_token_id", 0);
  v.add_dummy_prefix = g.get_bool("tokenizer.ggml.add_space_prefix").value_or(true);
  v.remove_extra_whitespaces = false;
  v.byte_fallback = true;
  return v;
}

}  // namespace

namespace {
template <class F>
void for_each_matrix(const Weights& w, F f) {
  f(w.token_embd);
  if (w.output.data != w.token_embd.data) f(w.output);
  for (const auto& L : w.layers) {
    for (const Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.router})
      if (!m->empty()) f(*m);
    for (const auto& e : L.experts) {
      f(e.w1);
      f(e.w3);
      f(e.w2);
    }
  }
}

// The matrices LoadOptions::tiles tiles: every weight matrix but the embedding (the forward pass
// reads single rows of it with dequantize_row) and the LM head when it is the embedding (tied).
template <class F>
void for_each_tileable(Weights& w, F f) {
  if (w.output.data != w.token_embd.data) f(w.output);
  for (auto& L : w.layers) {
    for (Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.router})
      if (!m->empty()) f(*m);
    for (auto& e : L.experts)
      for (Matrix* m : {&e.w1, &e.w3, &e.w2})
        if (!m->empty()) f(*m);
  }
}
}  // namespace

Model::~Model() = default;

namespace {
// Bytes of the files a checkpoint path names (a .gguf, or a directory's *.safetensors).
uint64_t checkpoint_file_bytes(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return fs::file_size(path, ec);
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(path, ec))
    if (e.path().extension() == ".safetensors") n += e.file_size(ec);
  return n;
}
}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path, const LoadOptions& options) {
  std::unique_ptr<Model> m(new Model());
  m->path_ = path;
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, "no such file or directory");
  // With a budget the files stay mapped (only headers and metadata are read through the mapping).
  std::optional<uint64_t> budget = options.memory_budget;
  if (!budget && options.auto_budget) {
    const uint64_t avail = memory_available() / 10 * 9;
    if (avail > 0 && checkpoint_file_bytes(path) > avail) budget = avail;
  }
  const bool in_memory = options.no_mmap && !budget;
  if (fs::is_directory(path, ec)) {
    m->hf_ = std::make_unique<HfCheckpoint>(path, in_memory);
    m->config_ = Config::from_hf(m->hf_->config(), path + "/config.json");
    m->bind_hf(*m->hf_);
    const std::string tok = m->hf_->tokenizer_model_path();
    if (!tok.empty()) m->tokenizer_ = std::make_unique<Tokenizer>(load_sentencepiece_model(tok));
  } else {
    m->gguf_ = std::make_unique<GgufFile>(path, in_memory);
    m->config_ = Config::from_gguf(*m->gguf_);
    m->bind_gguf(*m->gguf_);
    m->tokenizer_ = std::make_unique<Tokenizer>(vocab_from_gguf(*m->gguf_));
  }
  if (options.experts_per_token) {
    const int64_t k = *options.experts_per_token;
    if (!m->config_.is_moe()) fail("--experts-per-token", "the model is dense (no experts)");
    if (k < 1 || k > m->config_.n_experts)
      fail("--experts-per-token", std::to_string(k) + " is outside [1, " + std::to_string(m->config_.n_experts) + "]");
    m->config_.n_experts_used = k;
  }
  if (m->tokenizer_ && m->tokenizer_->n_vocab() != m->config_.vocab_size)
    fail(path, "tokenizer has " + std::to_string(m->tokenizer_->n_vocab()) + " pieces but the model's vocabulary is " +
                   std::to_string(m->config_.vocab_size));
  if (budget) {
    m->offload_experts(m->gguf_ ? std::vector<const MappedFile*>{&m->gguf_->file()} : m->hf_->mappings(), *budget,
                       options);
  } else if (in_memory && options.tiles && m->gguf_) {  // (safetensors hold no tileable dtypes)
    MappedFile& file = m->gguf_->file();
    std::vector<std::pair<Matrix*, uint8_t*>> jobs;
    uint8_t* bytes = nullptr;
    for_each_tileable(m->weights_, [&](Matrix& w) {
      if (!tileable(w.dtype)) return;
      if (!bytes) bytes = file.writable();
      jobs.emplace_back(&w, bytes + (w.data - file.data()));
    });
    m->tile(jobs);
    file.seal();
  }
  if (options.prefetch) m->prefetch();
  return m;
}

void Model::offload_experts(const std::vector<const MappedFile*>& files, uint64_t budget, const LoadOptions& o) {
  const Config& c = config_;
  if (!c.is_moe()) {
    if (weight_bytes() > budget)
      fail("--memory-budget", format_size(budget) + " is below the " + format_size(weight_bytes()) +
                                  " of weights of this dense model (only experts can be offloaded)");
    return;
  }
  // Which file, and where in it, a view into the mappings points.
  std::vector<std::string> paths;
  for (const MappedFile* f : files) paths.push_back(f->path());
  auto locate = [&](const Matrix& m) {
    for (size_t i = 0; i < files.size(); ++i)
      if (m.data >= files[i]->data() && m.data + m.bytes() <= files[i]->data() + files[i]->size())
        return ExpertLocation::Part{int(i), uint64_t(m.data - files[i]->data()), m};
    fail(path_, "internal: a weight lies outside the checkpoint's files");
  };

  // What must stay resident: every matrix but the experts (the norms are already copies).
  std::vector<Matrix*> resident = {&weights_.token_embd};
  if (weights_.output.data != weights_.token_embd.data) resident.push_back(&weights_.output);
  for (auto& L : weights_.layers)
    for (Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.router}) resident.push_back(m);
  uint64_t resident_bytes = 0;
  for (const Matrix* m : resident) resident_bytes += DirectFile::span(0, m->bytes());

  std::vector<std::vector<ExpertLocation>> where(size_t(c.n_layers));
  for (int64_t l = 0; l < c.n_layers; ++l)
    for (const ExpertWeights& e : weights_.layers[size_t(l)].experts)
      where[size_t(l)].push_back({{locate(e.w1), locate(e.w3), locate(e.w2)}});
  const uint64_t slot = ExpertCache::slot_bytes(where[0][0]);
  const uint64_t runtime = o.runtime_bytes ? o.runtime_bytes(c) : 0;
  constexpr uint64_t kOverhead = 64ull << 20;  // code, tokenizer, metadata pages, allocator slack
  const uint64_t fixed = resident_bytes + runtime + kOverhead;
  const uint64_t available = memory_available() + mixtral::resident_bytes();
  if (available > 0 && budget > available)
    fail("--memory-budget", format_size(budget) + " is more than the " + format_size(available) +
                                " this machine has available now; give a smaller budget (or none: the default fits)");
  if (budget < fixed + slot)
    fail("--memory-budget", format_size(budget) + " is too small: this model needs " + format_size(resident_bytes) +
                                " of non-expert weights + " + format_size(runtime) + " for the KV cache and activations + " +
                                format_size(kOverhead) + " overhead + at least one expert slot of " + format_size(slot) +
                                " = " + format_size(fixed + slot));

  // Read the resident weights into memory past the page cache, and point the views at them.
  std::vector<std::unique_ptr<DirectFile>> readers;
  for (const std::string& p : paths) readers.push_back(std::make_unique<DirectFile>(p));
  std::vector<std::pair<Matrix*, uint8_t*>> jobs;  // resident weights to tile
  for (Matrix* m : resident) {
    const auto part = locate(*m);
    const size_t span = DirectFile::span(part.offset, m->bytes());
    void* buf = std::aligned_alloc(DirectFile::kAlign, span);
    if (!buf) fail("--memory-budget", "cannot allocate " + format_size(span) + " for resident weights");
    owned_.emplace_back(static_cast<uint8_t*>(buf), std::free);
    uint8_t* own = owned_.back().get();
    const uint8_t* data = readers[size_t(part.file)]->read(part.offset, m->bytes(), own);
    if (m == &weights_.token_embd && config_.tied_embeddings) weights_.output.data = data;
    m->data = data;
    if (o.tiles && m != &weights_.token_embd && tileable(m->dtype)) jobs.emplace_back(m, own + (data - own));
  }
  tile(jobs);
  for (auto& L : weights_.layers)
    for (auto& e : L.experts) e.w1.data = e.w3.data = e.w2.data = nullptr;  // only through the cache now

  // The experts stay in file order in their slots: tiling each one as the I/O threads read it
  // took the full-depth Q4_0 model at 20 GiB from 2.02-2.07 to 1.41-1.44 tok/s (I/O stall 4.0-4.4
  // -> 7.6-7.8 s per 16 tokens; `bench -p 0 -n 16 -t 2 -r 1 --memory-budget 20G` at 655c05e, whose
  // slots were tiled, against --no-tiles): a token that misses experts waits on the disk.
  ExpertCacheOptions co = o.cache;
  const int64_t fit = int64_t((budget - fixed) / slot);
  co.n_slots = co.n_slots > 0 ? std::min(co.n_slots, fit) : fit;  // a caller's cap (tests) only lowers it
  experts_ = std::make_unique<ExpertCache>(paths, std::move(where), co);
  if (o.fill_cache) experts_->fill();
}

void Model::tile(const std::vector<std::pair<Matrix*, uint8_t*>>& jobs) {
  if (jobs.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  std::atomic<size_t> next{0};  // matrices differ in size: each thread takes the next one
  std::exception_ptr error;
  std::mutex error_mu;
  ThreadPool pool(int(std::min<size_t>(size_t(ThreadPool::default_threads()), jobs.size())));
  pool.run([&](int, int) {
    for (size_t i; (i = next.fetch_add(1)) < jobs.size();) {
      try {
        to_tiles(*jobs[i].first, jobs[i].second);
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mu);
        if (!error) error = std::current_exception();
      }
    }
  });
  if (error) std::rethrow_exception(error);
  tiled_ = true;
  tile_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void Model::bind_gguf(const GgufFile& g) {
  const Config& c = config_;
  Binder b(g.path(), [&](const std::string& n) { return g.find(n); });
  Weights& w = weights_;
  w.token_embd = b.matrix("token_embd.weight", c.vocab_size, c.dim);
  w.output_norm = b.vector("output_norm.weight", c.dim);
  // Some converters tie the LM head to the embedding and store no output.weight.
  w.output = b.has("output.weight") ? b.matrix("output.weight", c.vocab_size, c.dim) : w.token_embd;
  config_.tied_embeddings = !b.has("output.weight");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights L;
    L.attn_norm = b.vector(p + "attn_norm.weight", c.dim);
    L.wq = b.matrix(p + "attn_q.weight", c.q_dim(), c.dim);
    L.wk = b.matrix(p + "attn_k.weight", c.kv_dim(), c.dim);
    L.wv = b.matrix(p + "attn_v.weight", c.kv_dim(), c.dim);
    L.wo = b.matrix(p + "attn_output.weight", c.dim, c.q_dim());
    L.ffn_norm = b.vector(p + "ffn_norm.weight", c.dim);
    if (c.is_moe()) {
      L.router = b.matrix(p + "ffn_gate_inp.weight", c.n_experts, c.dim);
      L.experts.resize(size_t(c.n_experts));
      if (b.has(p + "ffn_gate_exps.weight")) {  // experts stacked in one tensor per matrix
        const auto w1 = b.stacked(p + "ffn_gate_exps.weight", c.n_experts, c.ffn_dim, c.dim);
        const auto w3 = b.stacked(p + "ffn_up_exps.weight", c.n_experts, c.ffn_dim, c.dim);
        const auto w2 = b.stacked(p + "ffn_down_exps.weight", c.n_experts, c.dim, c.ffn_dim);
        for (int64_t e = 0; e < c.n_experts; ++e) L.experts[size_t(e)] = {w1[size_t(e)], w3[size_t(e)], w2[size_t(e)]};
      } else {  // the early layout: one tensor per expert
        for (int64_t e = 0; e < c.n_experts; ++e) {
          const std::string E = "." + std::to_string(e) + ".weight";
          L.experts[size_t(e)] = {b.matrix(p + "ffn_gate" + E, c.ffn_dim, c.dim),
                                  b.matrix(p + "ffn_up" + E, c.ffn_dim, c.dim),
                                  b.matrix(p + "ffn_down" + E, c.dim, c.ffn_dim)};
        }
      }
    } else {
      L.experts = {{b.matrix(p + "ffn_gate.weight", c.ffn_dim, c.dim), b.matrix(p + "ffn_up.weight", c.ffn_dim, c.dim),
                    b.matrix(p + "ffn_down.weight", c.dim, c.ffn_dim)}};
    }
    w.layers.push_back(std::move(L));
  }
}

void Model::bind_hf(const HfCheckpoint& hf) {
  const Config& c = config_;
  Binder b(path_, [&](const std::string& n) { return hf.find(n); });
  Weights& w = weights_;
  w.token_embd = b.matrix("model.embed_tokens.weight", c.vocab_size, c.dim);
  w.output_norm = b.vector("model.norm.weight", c.dim);
  w.output = b.has("lm_head.weight") ? b.matrix("lm_head.weight", c.vocab_size, c.dim) : w.token_embd;
  config_.tied_embeddings = !b.has("lm_head.weight");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights L;
    L.attn_norm = b.vector(p + "input_layernorm.weight", c.dim);
    L.wq = b.matrix(p + "self_attn.q_proj.weight", c.q_dim(), c.dim);
    L.wk = b.matrix(p + "self_attn.k_proj.weight", c.kv_dim(), c.dim);
    L.wv = b.matrix(p + "self_attn.v_proj.weight", c.kv_dim(), c.dim);
    L.wo = b.matrix(p + "self_attn.o_proj.weight", c.dim, c.q_dim());
    L.ffn_norm = b.vector(p + "post_attention_layernorm.weight", c.dim);
    if (c.is_moe()) {
      const std::string m = p + "block_sparse_moe.";
      L.router = b.matrix(m + "gate.weight", c.n_experts, c.dim);
      for (int64_t e = 0; e < c.n_experts; ++e) {
        const std::string E = m + "experts." + std::to_string(e) + ".";
        L.experts.push_back({b.matrix(E + "w1.weight", c.ffn_dim, c.dim), b.matrix(E + "w3.weight", c.ffn_dim, c.dim),
                             b.matrix(E + "w2.weight", c.dim, c.ffn_dim)});
      }
    } else {
      L.experts = {{b.matrix(p + "mlp.gate_proj.weight", c.ffn_dim, c.dim), b.matrix(p + "mlp.up_proj.weight", c.ffn_dim, c.dim),
                    b.matrix(p + "mlp.down_proj.weight", c.dim, c.ffn_dim)}};
    }
    w.layers.push_back(std::move(L));
  }
}

std::string Model::format() const { return gguf_ ? "gguf" : "safetensors"; }

const Tokenizer& Model::tokenizer() const {
  if (!tokenizer_) fail(path_, "no tokenizer.model in the model directory");
  return *tokenizer_;
}


std::string Model::dtype_summary() const {
  std::map<std::string, int64_t> params;
  for_each_matrix(weights_, [&](const Matrix& m) { params[dtype_name(m.dtype)] += m.rows * m.cols; });
  std::string s;
  for (const auto& [name, n] : params) s += (s.empty() ? "" : ", ") + name + " " + std::to_string(n);
  return s + " (weight-matrix parameters by dtype)";
}

uint64_t Model::prefetch() const {
  uint64_t sum = 0;
  for_each_matrix(weights_, [&](const Matrix& m) {
    if (!m.empty())
      for (size_t i = 0; i < m.bytes(); i += 4096) sum += m.data[i];
  });
  return sum;
}

size_t Model::resident_weight_bytes() const {
  size_t n = 0;
  for_each_matrix(weights_, [&](const Matrix& m) { n += m.empty() ? 0 : m.bytes(); });
  return n;
}

size_t Model::weight_bytes() const {
  size_t n = 0;
  for_each_matrix(weights_, [&](const Matrix& m) { n += m.bytes(); });
  return n;
}

}  // namespace mixtral
