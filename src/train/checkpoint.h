// Checkpoints are Hugging Face model directories that the engine (generate, serve, quantize)
// loads as they are, plus the optimizer state that makes resuming bit-exact:
//   config.json                 HF Mixtral (MoE) or Mistral (dense) config
//   model.safetensors           the weights under their HF names, in the run's save_dtype
//   tokenizer.model             the SentencePiece model the run used
//   trainer_state.json          step, tokens seen, elapsed time, the whole training config
//   trainer_state.safetensors   float32 parameters and AdamW moments ("params", "adam_m", "adam_v")
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/optimizer.h"
#include "train/params.h"
#include "train/train_config.h"

namespace mixtral::train {

struct TrainProgress {
  int64_t step = 0;         // optimizer steps done
  int64_t tokens_seen = 0;  // training tokens consumed
  double elapsed_s = 0;     // training wall time so far
  double eval_loss = 0;     // the last held-out loss (0: none yet)
};

// Writes the checkpoint into `dir` (created if needed; files replaced through a rename).
void save_checkpoint(const std::string& dir, const TrainConfig& config, const ParamLayout& layout,
                     const float* params, AdamW& opt, const TrainProgress& progress, const std::string& tokenizer);

// Reads a checkpoint written by save_checkpoint: its config, parameters, optimizer and progress.
struct LoadedCheckpoint {
  TrainConfig config;
  std::vector<float> params, adam_m, adam_v;
  TrainProgress progress;
};
LoadedCheckpoint load_checkpoint(const std::string& dir);

}  // namespace mixtral::train
