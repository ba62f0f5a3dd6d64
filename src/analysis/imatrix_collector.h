// llama-imatrix's statistics, gathered from the forward pass through an ActivationObserver: for
// every weight matrix of the blocks that a matrix product multiplies (attn_q/k/v/output, the
// router ffn_gate_inp, every expert's gate/up/down), per input column the sum of x² over the
// activation rows that met it. For a stacked expert tensor (ffn_*_exps) the values are n_expert
// runs of cols values, expert by expert, and each expert counts only the tokens routed to it.
// token_embd (a row lookup) and the LM head (llama-imatrix leaves it out by default) get none.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "io/imatrix.h"
#include "model/activation_observer.h"
#include "model/config.h"

namespace mixtral::analysis {

class ImatrixCollector final : public ActivationObserver {
 public:
  // What one input gathered: sum[e·cols + c] = Σ x[c]² over the rows of expert e (one "expert"
  // for the matrices outside the MoE), rows[e] the number of those rows, ncall the forward passes
  // that contributed (llama-imatrix's ncall).
  struct Stats {
    int64_t cols = 0;
    std::vector<double> sum;
    std::vector<int64_t> rows;
    int32_t ncall = 0;
    int64_t last_pass = -1;
  };

  explicit ImatrixCollector(const Config& c);

  void on_forward(int64_t n_tokens) override;
  void on_matmul_input(int64_t layer, MatmulInput which, int32_t expert, const float* rows, int64_t n_rows,
                       int64_t cols) override;

  const Stats& stats(int64_t layer, MatmulInput which) const;
  int32_t passes() const { return int32_t(passes_); }

  // The file llama-imatrix would write: per entry value = Σx² / rows · ncall (its weighting,
  // which llama-quantize undoes only up to a constant factor per tensor, so it is harmless).
  // Entries in which some expert saw no token are left out, as llama-imatrix does (a quantizer
  // then uses no importance for that tensor); their names go to `skipped` when given.
  Imatrix result(const std::string& dataset, std::vector<std::string>* skipped = nullptr) const;

  // The GGUF tensor names an input stands for (attn_q, attn_k and attn_v share one input).
  std::vector<std::string> tensor_names(int64_t layer, MatmulInput which) const;

 private:
  static constexpr int kInputs = 5;
  Config c_;
  int64_t passes_ = 0, pass_tokens_ = 0;
  std::vector<std::array<Stats, kInputs>> layers_;
};

}  // namespace mixtral::analysis
