// Training data: text files tokenized into one stream of token ids, a held-out tail of every
// file for evaluation, and batches drawn from the stream by a function of (seed, step) alone,
// so a run resumed from a checkpoint sees exactly the batches it would have seen.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "text/tokenizer.h"

namespace mixtral::train {

// The regular files named, with folders expanded to the files under them (recursively,
// sorted by path; hidden files skipped). Throws Error for a path that does not exist or a
// selection with no files.
std::vector<std::string> list_data_files(const std::vector<std::string>& paths);

struct Corpus {
  std::vector<int32_t> train;  // every file: <s> + its first (1 − eval_fraction) tokens + </s>
  std::vector<int32_t> eval;   // every file: <s> + its last eval_fraction of tokens
  int64_t files = 0;
  int64_t bytes = 0;
};

// Tokenizes each file as one document (files in parallel; the result does not depend on the
// thread count) and splits it.
Corpus build_corpus(const std::vector<std::string>& files, const Tokenizer& tok, double eval_fraction,
                    ThreadPool& pool);

// Micro-batch `micro` of optimizer step `step`: `batch` windows of seq+1 consecutive tokens at
// positions drawn uniformly from `stream` by SplitMix64(seed, step, micro). tokens, targets:
// [batch][seq]; targets are the tokens shifted by one.
void sample_batch(const std::vector<int32_t>& stream, int64_t batch, int64_t seq, uint64_t seed, int64_t step,
                  int64_t micro, int32_t* tokens, int32_t* targets);

// Evaluation batch `index`: consecutive non-overlapping windows from the start of `stream`
// (wrapping around), the same for every evaluation so held-out losses are comparable.
void eval_batch(const std::vector<int32_t>& stream, int64_t batch, int64_t seq, int64_t index, int32_t* tokens,
                int32_t* targets);

}  // namespace mixtral::train
