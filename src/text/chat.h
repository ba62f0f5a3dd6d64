// Mixtral Instruct chat encoding, v1 (mistral-common's InstructTokenizerV1; Mixtral 8x7B's
// tokenizer, where [INST] and [/INST] are plain text rather than special tokens):
//
//   [BOS] encode("[INST] " + user_1 + " [/INST]") encode(assistant_1) [EOS]
//         encode("[INST] " + user_2 + " [/INST]") ...
//
// Every message is encoded on its own (so each gets the dummy-prefix ▁: "[/INST]" is followed
// by "▁I", not "I" as encoding the rendered template string in one piece would give). A system
// prompt goes, followed by "\n\n", in front of the first user message's content.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "text/tokenizer.h"

namespace mixtral {

struct ChatMessage {
  std::string role;  // "system" (first message only), "user" or "assistant"
  std::string content;
};

// Roles must alternate user/assistant starting with user, after an optional leading "system"
// message (or `system_prompt`, not both); otherwise throws Error("chat: ..."). A conversation
// ending with a user turn is a generation prompt; one ending with an assistant turn is complete.
std::vector<int32_t> encode_chat_v1(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                                    const std::optional<std::string>& system_prompt = std::nullopt);

}  // namespace mixtral
