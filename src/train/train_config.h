// What a training run is: the model (a mixtral::Config, read from Hugging Face config.json
// keys) and the optimisation hyper-parameters. A config file is
//   {"model": {HF Mixtral/Mistral config.json keys}, "train": {the TrainHyper keys below}}
// The model section is exactly what the checkpoint's config.json will say, so a config can be
// copied from any HF model; "num_local_experts" absent (or 0) means dense (one MLP per layer).
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "model/config.h"

namespace mixtral::train {

struct TrainHyper {
  int64_t seq_len = 256;        // tokens per sequence (attention window of training)
  int64_t batch_size = 8;       // sequences per micro-batch
  int64_t grad_accum = 1;       // micro-batches per optimizer step
  int64_t steps = 1000;         // optimizer steps (the cosine schedule ends here)
  double lr = 1e-3;             // peak learning rate
  double min_lr = 1e-4;         // the cosine decays to this
  int64_t warmup_steps = 100;   // linear warm-up from 0
  double weight_decay = 0.1;    // AdamW, decoupled; matrices only (not norm gains)
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double grad_clip = 1.0;       // clip the global gradient norm to this (0: off)
  double router_z_loss_coef = 0;  // ST-MoE z-loss (0: off; 1e-3 in the paper)
  uint64_t seed = 1234;         // initialisation and data order
  double eval_fraction = 0.05;  // the tail of every input file held out for evaluation
  int64_t eval_every = 100;     // steps between held-out evaluations (0: only at the end)
  int64_t eval_batches = 8;     // micro-batches per evaluation
  int64_t save_every = 0;       // steps between checkpoints (0: only at the end)
  int threads = 0;              // 0: all cores
  std::string save_dtype = "f32";  // dtype of model.safetensors: f32, bf16 or f16
};

struct TrainConfig {
  Config model;
  bool tie_embeddings = false;    // "tie_word_embeddings": the LM head is the embedding matrix
  double aux_loss_coef = 0.02;    // "router_aux_loss_coef" (Mixtral's published value)
  TrainHyper train;
  nlohmann::json model_json;      // the "model" section as given (kept for config.json)

  bool dense() const { return !model.is_moe(); }
  int64_t n_experts() const { return model.is_moe() ? model.n_experts : 1; }  // experts run per layer
  int64_t top_k() const { return model.is_moe() ? model.n_experts_used : 1; }

  // Throws Error("<where>: ...") for a missing or inconsistent value.
  static TrainConfig from_json(const nlohmann::json& j, const std::string& where);
  static TrainConfig load(const std::string& path);
  nlohmann::json to_json() const;
  // config.json of the checkpoint, in HF Mixtral (MoE) or Mistral (dense) format.
  nlohmann::json hf_config(const std::string& torch_dtype) const;
};

}  // namespace mixtral::train
