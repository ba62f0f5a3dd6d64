// The inputs of the forward pass's matrix products, for whoever wants statistics of them
// (`mixtral imatrix`: per input column, the sum of x² over the tokens that met each matrix).
#pragma once
#include <cstdint>

namespace mixtral {

// Which weight matrices a block of activation rows is about to multiply.
enum class MatmulInput {
  AttnQKV,     // wq, wk and wv (one input: the normed residual stream)   cols = dim
  AttnOutput,  // wo (the attention's output)                              cols = q_dim
  Router,      // the MoE router (the normed residual stream)              cols = dim
  ExpertGateUp,  // one expert's w1 and w3 (its routed tokens only)        cols = dim
  ExpertDown,    // one expert's w2 (silu(w1 x) ⊙ w3 x of those tokens)    cols = ffn_dim
};

// Receives those inputs as forward() computes them. With no observer attached the cost is one
// null check per matrix product call. Calls come from the thread that runs forward(), in
// program order; the rows are only valid during the call.
class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  // Once at the start of every forward pass (a "call" in llama-imatrix's counting).
  virtual void on_forward(int64_t n_tokens) = 0;
  //   rows: [n_rows][cols]; expert: the expert's index for Expert*, -1 otherwise. A dense
  //   model's MLP is expert 0 of a layer without a router. The rows of one expert may come in
  //   several calls per pass (the forward pass runs experts over bounded blocks of rows).
  virtual void on_matmul_input(int64_t layer, MatmulInput which, int32_t expert, const float* rows, int64_t n_rows,
                               int64_t cols) = 0;
};

}  // namespace mixtral
