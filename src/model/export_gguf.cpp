#include "model/export_gguf.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "io/gguf_writer.h"
#include "kernels/dequant.h"
#include "quant/quantize.h"

namespace mixtral {
namespace {

// The source row that lands at row r of the output. HF q/k rows within a head are ordered
// (x[0..d/2), x[d/2..d)); GGUF interleaves them: out 2i ← in i, out 2i+1 ← in d/2 + i.
int64_t source_row(int64_t r, int64_t head_dim, bool permute) {
  if (!permute) return r;
  const int64_t h = r / head_dim, j = r % head_dim, i = j / 2;
  return h * head_dim + (j % 2 ? head_dim / 2 + i : i);
}

// Appends the matrix converted to `type` to `out`. m must be in Rows layout: an exported model
// is loaded with LoadOptions::tiles off (tiles are a memory layout, never written to files).
void convert(const Matrix& m, DType type, bool permute_qk, int64_t head_dim, std::vector<uint8_t>& out) {
  if (m.layout != Layout::Rows)
    fail("export", "a weight matrix is tiled (load the model with LoadOptions::tiles = false to export it)");
  std::vector<float> row(static_cast<size_t>(m.cols));
  const size_t rb = row_bytes(type, m.cols);
  const size_t start = out.size();
  out.resize(start + rb * size_t(m.rows));
  for (int64_t r = 0; r < m.rows; ++r) {
    ref::dequantize_row(m.dtype, m.row(source_row(r, head_dim, permute_qk)), row.data(), m.cols);
    quantize_row(type, row.data(), out.data() + start + rb * size_t(r), m.cols);
  }
}

}  // namespace

DType fit_type(DType want, int64_t cols) {
  for (DType t : {want, DType::Q8_0, DType::F16})
    if (cols % dtype_info(t).block_size == 0) return t;
  return DType::F32;
}

void set_gguf_metadata(GgufWriter& g, const Config& c, const Vocab& v, const std::string& name) {
  g.set_string("general.architecture", "llama");
  g.set_string("general.name", name);
  g.set_u32("llama.block_count", uint32_t(c.n_layers));
  g.set_u32("llama.context_length", uint32_t(c.max_context));
  g.set_u32("llama.embedding_length", uint32_t(c.dim));
  g.set_u32("llama.feed_forward_length", uint32_t(c.ffn_dim));
  g.set_u32("llama.attention.head_count", uint32_t(c.n_heads));
  g.set_u32("llama.attention.head_count_kv", uint32_t(c.n_kv_heads));
  g.set_f32("llama.rope.freq_base", c.rope_theta);
  g.set_f32("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
  if (c.is_moe()) {
    g.set_u32("llama.expert_count", uint32_t(c.n_experts));
    g.set_u32("llama.expert_used_count", uint32_t(c.n_experts_used));
  }
  if (c.sliding_window > 0) g.set_u32("llama.attention.sliding_window", uint32_t(c.sliding_window));
  g.set_u32("llama.vocab_size", uint32_t(c.vocab_size));
  g.set_u32("llama.rope.dimension_count", uint32_t(c.head_dim));
  g.set_u32("llama.attention.key_length", uint32_t(c.head_dim));
  g.set_string("tokenizer.ggml.model", "llama");
  g.set_string_array("tokenizer.ggml.tokens", v.pieces);
  g.set_f32_array("tokenizer.ggml.scores", v.scores);
  std::vector<int32_t> types;
  for (PieceType t : v.types) types.push_back(int32_t(t));
  g.set_i32_array("tokenizer.ggml.token_type", types);
  g.set_u32("tokenizer.ggml.bos_token_id", uint32_t(v.bos_id));
  g.set_u32("tokenizer.ggml.eos_token_id", uint32_t(v.eos_id));
  g.set_u32("tokenizer.ggml.unknown_token_id", uint32_t(v.unk_id));
  g.set_bool("tokenizer.ggml.add_bos_token", true);
  g.set_bool("tokenizer.ggml.add_eos_token", false);
  g.set_bool("tokenizer.ggml.add_space_prefix", v.add_dummy_prefix);
  g.set_u32("general.quantization_version", 2);
}

void export_gguf(const Model& model, const std::string& path, const ExportOptions& o) {
  const Config& c = model.config();
  const Weights& w = model.weights();
  const Tokenizer& tok = model.tokenizer();
  const bool permute = c.rope_style == RopeStyle::HalfSplit;
  GgufWriter g;
  set_gguf_metadata(g, c, tok.vocab(), o.name);

  const bool mix = o.k_quant_mix && o.type == DType::Q4_K;
  const int64_t total = model.config().params_total();
  int64_t done = 0;
  auto converted = [&](const Matrix& m) {
    done += m.rows * m.cols;
    if (o.progress) o.progress(std::min(done, total), total);
  };
  auto matrix = [&](const std::string& name, const Matrix& m, bool high_precision, bool permute_qk = false) {
    const DType t = fit_type(mix && high_precision ? DType::Q6_K : o.type, m.cols);
    std::vector<uint8_t> data;
    convert(m, t, permute_qk, c.head_dim, data);
    converted(m);
    g.add_tensor(name, t, {m.rows, m.cols}, std::move(data));
  };
  auto vector = [&](const std::string& name, const std::vector<float>& x) {
    g.add_tensor(name, DType::F32, {int64_t(x.size())},
                 std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(x.data()),
                                      reinterpret_cast<const uint8_t*>(x.data() + x.size())));
  };
  auto router = [&](const std::string& name, const Matrix& m) {
    std::vector<uint8_t> data;
    convert(m, DType::F32, false, c.head_dim, data);
    g.add_tensor(name, DType::F32, {m.rows, m.cols}, std::move(data));
  };

  matrix("token_embd.weight", w.token_embd, false);
  vector("output_norm.weight", w.output_norm);
  matrix("output.weight", w.output, true);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    vector(p + "attn_norm.weight", L.attn_norm);
    matrix(p + "attn_q.weight", L.wq, false, permute);
    matrix(p + "attn_k.weight", L.wk, false, permute);
    matrix(p + "attn_v.weight", L.wv, true);
    matrix(p + "attn_output.weight", L.wo, false);
    vector(p + "ffn_norm.weight", L.ffn_norm);
    if (!c.is_moe()) {
      const ExpertWeights& X = L.experts[0];
      matrix(p + "ffn_gate.weight", X.w1, false);
      matrix(p + "ffn_up.weight", X.w3, false);
      matrix(p + "ffn_down.weight", X.w2, true);
      continue;
    }
    router(p + "ffn_gate_inp.weight", L.router);
    if (o.per_expert_layout) {
      for (int64_t e = 0; e < c.n_experts; ++e) {
        const ExpertWeights& X = L.experts[e];
        const std::string E = "." + std::to_string(e) + ".weight";
        matrix(p + "ffn_gate" + E, X.w1, false);
        matrix(p + "ffn_up" + E, X.w3, false);
        matrix(p + "ffn_down" + E, X.w2, true);
      }
    } else {
      struct Part { const char* name; Matrix ExpertWeights::*m; bool high; };
      for (const Part& part : {Part{"ffn_gate_exps", &ExpertWeights::w1, false}, Part{"ffn_up_exps", &ExpertWeights::w3, false},
                               Part{"ffn_down_exps", &ExpertWeights::w2, true}}) {
        const Matrix& first = L.experts[0].*part.m;
        const DType t = fit_type(mix && part.high ? DType::Q6_K : o.type, first.cols);
        std::vector<uint8_t> data;
        for (const ExpertWeights& X : L.experts) {
          convert(X.*part.m, t, false, c.head_dim, data);
          converted(X.*part.m);
        }
        g.add_tensor(p + part.name + ".weight", t, {c.n_experts, first.rows, first.cols}, std::move(data));
      }
    }
  }
  if (o.progress) o.progress(total, total);  // norms and routers are not counted one by one
  g.write(path);
}

}  // namespace mixtral
