#include "text/chat.h"

#include "core/error.h"

namespace mixtral {

std::vector<int32_t> encode_chat_v1(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                                    const std::optional<std::string>& system_prompt) {
  size_t first = 0;
  std::optional<std::string> system = system_prompt;
  if (!messages.empty() && messages[0].role == "system") {
    if (system) fail("chat", "system prompt given twice (as an argument and as the first message)");
    system = messages[0].content;
    first = 1;
  }
  if (first == messages.size()) fail("chat", "no user message");

  std::vector<int32_t> ids;
  if (tok.bos() >= 0) ids.push_back(tok.bos());
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool user_turn = (i - first) % 2 == 0;
    const char* expected = user_turn ? "user" : "assistant";
    if (m.role != expected) {
      fail("chat", "message " + std::to_string(i) + " has role '" + m.role + "', expected '" + expected +
                       "' (roles must alternate user/assistant, starting with user, after an optional system message)");
    }
    std::vector<int32_t> part;
    if (user_turn) {
      // mistral-common v1 puts the system prompt into the first user message only.
      const std::string content = (i == first && system && !system->empty()) ? *system + "\n\n" + m.content : m.content;
      part = tok.encode("[INST] " + content + " [/INST]", /*add_bos=*/false);
    } else {
      part = tok.encode(m.content, /*add_bos=*/false);
      if (tok.eos() >= 0) part.push_back(tok.eos());
    }
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

}  // namespace mixtral
