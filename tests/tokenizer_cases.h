// The 283 SentencePiece reference cases (../shared/tokenizers/mistral-v1-cases.jsonl) as a
// reusable check, so any Mixtral v1 tokenizer (from tokenizer.model or from GGUF metadata) can
// be held to the same byte-exact standard.
#pragma once

namespace mixtral {
class Tokenizer;

namespace testing {

// For every case: encode(text) == ids, the ids' pieces == pieces, decode(ids) == decoded,
// streaming decode == decode, and decode(encode(text)) == text where the case says it
// round-trips. Reports with gtest EXPECTs (each failure names the case); skips (or fails under
// CI=true) when ../shared is missing.
void check_tokenizer_against_cases(const mixtral::Tokenizer& tok);

}  // namespace testing
}  // namespace mixtral
