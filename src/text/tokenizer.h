// SentencePiece BPE tokenizer, byte-exact with the SentencePiece library (bpe_model.cc,
// normalizer.cc, sentencepiece_processor.cc) for identity-normalised models like Mixtral's.
//
// encode: normalise (dummy-prefix ▁, spaces → ▁, optional whitespace cleanup) → split into
//         characters (user-defined pieces kept whole) → repeatedly merge the adjacent pair whose
//         concatenation is a piece with the highest score (ties: leftmost) → unknown symbols
//         become <0xXX> byte pieces (byte fallback) or <unk>.
// decode: control pieces vanish, ▁ → space, byte runs are reassembled into UTF-8 (each invalid
//         byte → U+FFFD), and one leading ▁ of the text is dropped (the dummy prefix).
#pragma once
#include <array>
#include <functional>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "text/vocab.h"

namespace mixtral {

class Tokenizer {
 public:
  // Validates the vocabulary (sizes agree, special ids in range, no duplicate pieces, all 256
  // byte pieces when byte_fallback is on); throws Error("tokenizer: ...") otherwise.
  explicit Tokenizer(Vocab vocab);

  // Throws Error("text: invalid UTF-8 at byte N") for malformed input (SentencePiece would
  // silently substitute U+FFFD; a clear error is more useful for prompts).
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const;
  // Throws Error for an id outside [0, n_vocab).
  std::string decode(const std::vector<int32_t>& ids) const;

  const std::string& piece(int32_t id) const;  // throws Error when out of range
  int32_t n_vocab() const { return int32_t(vocab_.pieces.size()); }
  int32_t bos() const { return vocab_.bos_id; }
  int32_t eos() const { return vocab_.eos_id; }
  const Vocab& vocab() const { return vocab_; }
  std::optional<int32_t> byte_token(uint8_t b) const;  // the id of <0xXX>, if the vocab has it
  bool is_control(int32_t id) const;
  bool is_byte(int32_t id) const { return byte_value_of(id) >= 0; }

 private:
  friend class StreamDecoder;

  // Transparent hashing so lookups by string_view do not allocate.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using PieceMap = std::unordered_map<std::string, int32_t, Hash, std::equal_to<>>;

  std::string normalize(std::string_view text) const;
  size_t match_user_defined(std::string_view s) const;  // longest match length, 0 if none
  int32_t piece_to_id(std::string_view s) const;        // SentencePiece's PieceToId; -1 if absent
  void bpe(const std::string& normalized, std::vector<int32_t>* out) const;
  int byte_value_of(int32_t id) const { return id >= 0 && id < n_vocab() ? byte_value_[size_t(id)] : -1; }
  bool is_unknown(int32_t id) const;
  // The text of a non-byte piece in decoded output; `bos` says whether a leading ▁ may be
  // stripped; *stripped tells whether it was (SentencePiece's DecodeSentencePiece).
  std::string piece_surface(int32_t id, bool bos, bool* stripped) const;

  Vocab vocab_;
  PieceMap mergeable_;  // Normal, UserDefined, Unused pieces: what BPE may merge into
  PieceMap reserved_;   // Control, Unknown, Byte pieces: matched only as whole final symbols
  std::vector<int16_t> byte_value_;     // per id: 0..255 for <0xXX> pieces, else -1
  std::array<int32_t, 256> byte_id_{};  // per byte: its piece id, or -1
  std::vector<std::string> user_defined_[256];  // by first byte, longest first
};

// Incremental decoding for streaming generation. feed() returns the text that is final once
// `id` is known: only whole UTF-8 characters (a byte-piece run is held back while it may still
// complete a character), with the same leading-space rule as decode(). flush() ends the stream
// and returns what is held back, an incomplete sequence becoming U+FFFD per byte. For any ids,
// feed(ids[0]) + ... + feed(ids[n-1]) + flush() == tok.decode(ids). `tok` must outlive it.
class StreamDecoder {
 public:
  // at_text_start: the ids begin the text, so its leading ▁ is the dummy prefix and is dropped
  // (as decode() does). false for a continuation of text already shown (a completion of a
  // prompt), whose first piece's space is real.
  explicit StreamDecoder(const Tokenizer& tok, bool at_text_start = true) : tok_(tok), is_bos_ws_(at_text_start) {}
  std::string feed(int32_t id);
  std::string flush();

 private:
  void emit(std::string_view s, std::string* out);

  const Tokenizer& tok_;
  std::string pending_;  // bytes of the current byte-piece run not yet emitted
  bool is_bos_ws_ = true;
  bool bos_ws_seen_ = false;
  bool any_output_ = false;
};

}  // namespace mixtral
