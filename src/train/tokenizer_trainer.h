// Trains a SentencePiece BPE tokenizer with the SentencePiece library's own trainer, in the
// configuration of Mistral's tokenizer.model (so the engine's tokenizer loads and reproduces it):
// BPE, byte fallback (every byte is encodable: no <unk> in practice), digits split, identity
// normalisation, a dummy-prefix ▁, whitespace kept as is; <unk>=0, <s>=1, </s>=2, no <pad>.
#pragma once
#include <string>
#include <vector>

namespace mixtral::train {

// Writes `out_path` (a tokenizer.model) trained on `files` with `vocab_size` pieces (including
// the 3 control pieces and the 256 byte pieces). Deterministic for the same inputs: input
// sentences are not shuffled or sampled, and the trainer runs on one thread (with more, the
// order of equal-score merges depends on timing). Throws Error with the trainer's message.
void train_sentencepiece(const std::vector<std::string>& files, int64_t vocab_size, const std::string& out_path);

}  // namespace mixtral::train
