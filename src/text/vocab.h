// The vocabulary of a SentencePiece tokenizer as plain data: what tokenizer.model (ModelProto)
// and GGUF's tokenizer.ggml.* metadata both describe. Loaders fill it; Tokenizer consumes it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mixtral {

// SentencePiece piece types (GGUF's tokenizer.ggml.token_type uses the same numbers).
enum class PieceType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct Vocab {
  std::vector<std::string> pieces;  // UTF-8 text of each piece, U+2581 (▁) standing for a space
  std::vector<float> scores;        // BPE merge priority: higher merges first
  std::vector<PieceType> types;
  int32_t bos_id = 1, eos_id = 2, unk_id = 0;
  bool add_dummy_prefix = true;           // encode prepends ▁; decode drops the first leading ▁
  bool remove_extra_whitespaces = false;  // strip leading/trailing spaces, collapse runs
  bool byte_fallback = true;              // unknown characters become <0xXX> byte pieces
};

}  // namespace mixtral
