#include "analysis/imatrix_collector.h"

#include <algorithm>

#include "core/error.h"

namespace mixtral::analysis {

namespace {
// llama-imatrix ignores plain matrix products over fewer than 16 rows (its scheduler callback
// asks for src1->ne[1] >= 16), but not the expert products, which it always collects.
constexpr int64_t kMinDenseRows = 16;

bool is_expert(MatmulInput w) { return w == MatmulInput::ExpertGateUp || w == MatmulInput::ExpertDown; }
}  // namespace

ImatrixCollector::ImatrixCollector(const Config& c) : c_(c), layers_(size_t(c.n_layers)) {
  const int64_t E = c.is_moe() ? c.n_experts : 1;
  for (auto& layer : layers_) {
    const int64_t cols[kInputs] = {c.dim, c.q_dim(), c.dim, c.dim, c.ffn_dim};
    for (int i = 0; i < kInputs; ++i) {
      const int64_t n = is_expert(MatmulInput(i)) ? E : 1;
      layer[i].cols = cols[i];
      layer[i].sum.assign(size_t(n * cols[i]), 0.0);
      layer[i].rows.assign(size_t(n), 0);
    }
  }
}

void ImatrixCollector::on_forward(int64_t n_tokens) {
  ++passes_;
  pass_tokens_ = n_tokens;
}

void ImatrixCollector::on_matmul_input(int64_t layer, MatmulInput which, int32_t expert, const float* x,
                                       int64_t n_rows, int64_t cols) {
  Stats& s = layers_.at(size_t(layer))[int(which)];
  const int64_t e = is_expert(which) ? expert : 0;
  if (cols != s.cols || e < 0 || e >= int64_t(s.rows.size()))
    fail("imatrix", "internal: unexpected matmul input shape");
  if (!is_expert(which) && pass_tokens_ < kMinDenseRows) return;
  if (s.last_pass != passes_) {
    s.last_pass = passes_;
    ++s.ncall;
  }
  double* sum = &s.sum[size_t(e * cols)];
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* row = x + r * cols;
    for (int64_t i = 0; i < cols; ++i) sum[i] += double(row[i]) * double(row[i]);
  }
  s.rows[size_t(e)] += n_rows;
}

const ImatrixCollector::Stats& ImatrixCollector::stats(int64_t layer, MatmulInput which) const {
  return layers_.at(size_t(layer))[int(which)];
}

std::vector<std::string> ImatrixCollector::tensor_names(int64_t layer, MatmulInput which) const {
  const std::string p = "blk." + std::to_string(layer) + ".", exps = c_.is_moe() ? "_exps.weight" : ".weight";
  switch (which) {
    case MatmulInput::AttnQKV: return {p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"};
    case MatmulInput::AttnOutput: return {p + "attn_output.weight"};
    case MatmulInput::Router: return c_.is_moe() ? std::vector<std::string>{p + "ffn_gate_inp.weight"}
                                                 : std::vector<std::string>{};
    case MatmulInput::ExpertGateUp: return {p + "ffn_gate" + exps, p + "ffn_up" + exps};
    case MatmulInput::ExpertDown: return {p + "ffn_down" + exps};
  }
  return {};
}

Imatrix ImatrixCollector::result(const std::string& dataset, std::vector<std::string>* skipped) const {
  Imatrix m;
  m.dataset = dataset;
  for (int64_t l = 0; l < c_.n_layers; ++l)
    for (int i = 0; i < kInputs; ++i) {
      const Stats& s = layers_[size_t(l)][i];
      const auto names = tensor_names(l, MatmulInput(i));
      if (names.empty() || s.ncall == 0) continue;
      m.last_call = std::max(m.last_call, s.ncall);
      bool complete = true;
      for (const int64_t r : s.rows) complete = complete && r > 0;
      if (!complete) {
        if (skipped) skipped->insert(skipped->end(), names.begin(), names.end());
        continue;
      }
      ImatrixEntry e;
      e.ncall = s.ncall;
      e.values.resize(s.sum.size());
      for (size_t j = 0; j < s.sum.size(); ++j)
        e.values[j] = float(s.sum[j]) / float(s.rows[j / size_t(s.cols)]) * float(s.ncall);
      for (const auto& name : names) {
        e.name = name;
        m.entries.push_back(e);
      }
    }
  return m;
}

}  // namespace mixtral::analysis
