#include "train/tokenizer_trainer.h"

#include <sentencepiece_trainer.h>

#include <filesystem>

#include "core/error.h"

namespace mixtral::train {

void train_sentencepiece(const std::vector<std::string>& files, int64_t vocab_size, const std::string& out_path) {
  if (files.empty()) fail("tokenizer", "no input files to train on");
  std::string input;
  for (const auto& f : files) {
    if (f.find(',') != std::string::npos) fail(f, "the SentencePiece trainer cannot read a path containing ','");
    input += (input.empty() ? "" : ",") + f;
  }
  namespace fs = std::filesystem;
  const fs::path out(out_path);
  const std::string prefix = (out.parent_path() / "tokenizer.training").string();
  // Options of Mistral's tokenizer.model (see the header); the sentence limits are raised so
  // that no input line is skipped or sampled.
  const std::string args = "--input=" + input + " --model_prefix=" + prefix +
                           " --vocab_size=" + std::to_string(vocab_size) +
                           " --model_type=bpe --byte_fallback=true --split_digits=true"
                           " --normalization_rule_name=identity --add_dummy_prefix=true"
                           " --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true"
                           " --character_coverage=0.9999 --max_sentence_length=65536"
                           " --input_sentence_size=0 --shuffle_input_sentence=false"
                           " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --minloglevel=2"
                           " --num_threads=1";
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  if (!status.ok()) fail("tokenizer training", status.ToString());
  std::error_code ec;
  fs::rename(prefix + ".model", out_path, ec);
  if (ec) fail(out_path, "cannot move the trained tokenizer here: " + ec.message());
  fs::remove(prefix + ".vocab", ec);
}

}  // namespace mixtral::train
