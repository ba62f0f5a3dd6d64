// The training run: tokenizer, data, model, the optimisation loop with its progress bar, CSV
// log, held-out evaluations and checkpoints. `mixtral train` is a thin layer over run_training.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "train/checkpoint.h"
#include "train/train_config.h"

namespace mixtral::train {

struct TrainOptions {
  std::vector<std::string> data;  // files or folders of text
  std::string out_dir;            // checkpoints, log, tokenizer
  std::string tokenizer;          // a tokenizer.model to use ("" : train one on the data)
  std::string resume;             // a checkpoint folder to continue from ("" : start fresh)
  int64_t stop_after = 0;         // stop (and save) after this many steps of this run (0: run to the end)
  bool progress_bar = true;       // stderr progress (a bar on a terminal, lines otherwise)
};

// The outcome, for the caller and the tests.
struct TrainResult {
  std::vector<double> losses;  // training loss (ce + aux + z) of every step run, in order
  double eval_loss = 0;        // held-out cross-entropy at the end
  TrainProgress progress;
};

// Runs the training described by `config` (ignored when resuming: the checkpoint's config
// is used, with its "train" section's steps/eval/save settings taken from `config` when given).
TrainResult run_training(const TrainConfig* config, const TrainOptions& options);

}  // namespace mixtral::train
