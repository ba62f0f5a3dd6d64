// Reader for SentencePiece's tokenizer.model: a serialized ModelProto (protobuf), parsed by
// hand with a bounds-checked wire-format reader, so the project needs no libprotobuf.
//
// Fields read (sentencepiece_model.proto):
//   ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
//   SentencePiece   1 piece (string), 2 score (float), 3 type (enum, default NORMAL)
//   TrainerSpec     3 model_type (default UNIGRAM; only BPE = 2 is accepted),
//                   24 treat_whitespace_as_suffix, 35 byte_fallback, 40 unk_id, 41 bos_id, 42 eos_id
//   NormalizerSpec  1 name, 2 precompiled_charsmap, 3 add_dummy_prefix (default true),
//                   4 remove_extra_whitespaces (default true), 5 escape_whitespaces (default true)
// Everything else is skipped. Features this tokenizer does not implement (unigram/word/char
// models, a non-identity normaliser, whitespace-as-suffix, unescaped whitespace) are rejected
// with an Error rather than tokenized differently from SentencePiece.
#pragma once
#include <string>

#include "text/vocab.h"

namespace mixtral {

// Throws Error("PATH: problem") for a missing, truncated, corrupt or unsupported model.
Vocab load_sentencepiece_model(const std::string& path);

}  // namespace mixtral
