// The OpenAI wire format, kept apart from HTTP: request bodies of /v1/chat/completions and
// /v1/completions are parsed and validated into a prompt (token ids) and the engine's
// GenerationParams; the engine's events are rendered back as OpenAI response objects and
// stream chunks; failures become OpenAI's error object. Pure functions and one small class,
// so they are unit-testable without a socket.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "text/tokenizer.h"

namespace mixtral::server {

using json = nlohmann::json;

// A failure to report to the client: its HTTP status and OpenAI's error fields.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int status, const std::string& message, std::string param = {}, std::string code = {});
};

// {"error": {"message", "type", "param", "code"}}; empty param/code become null, as OpenAI sends.
json error_json(const ApiError& e);

// json::dump that never throws: invalid UTF-8 (a lone byte token in logprobs) becomes U+FFFD.
std::string dump(const json& j);

enum class Endpoint { chat, completion };

struct ApiRequest {
  Endpoint endpoint = Endpoint::chat;
  std::vector<int32_t> prompt;
  GenerationParams params;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
};

// Parse and validate a request body. Throws ApiError(400) naming the offending parameter for
// malformed JSON, a wrong type or value of a known field, an unsupported feature (n > 1, tools,
// images) or a conversation chat.h rejects. Unknown fields are ignored: clients send many.
// A chat request without max_tokens may fill the context (`n_ctx`, per sequence); a completion
// request gets OpenAI's default of 16.
ApiRequest parse_chat_request(std::string_view body, const Tokenizer& tok, int64_t n_ctx);
ApiRequest parse_completion_request(std::string_view body, const Tokenizer& tok);

// The text a token stands for, as raw bytes: ▁ becomes a space, <0xXX> the byte itself. This is
// what logprobs report ("token" and "bytes"); unlike decode() it keeps a leading space.
std::string token_text(const Tokenizer& tok, int32_t id);

// "data: <json>\n\n" — one server-sent event.
std::string sse_event(const json& j);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// Turns one request's events into OpenAI objects: stream chunks as they come, or one whole
// response at the end. Chat and completions differ only in field names, handled here.
class ResponseBuilder {
 public:
  ResponseBuilder(const ApiRequest& req, const Tokenizer& tok, std::string id, int64_t created, std::string model);

  // Streaming: the SSE text to send for `e` (possibly empty). The first call of a chat stream
  // also sends the role chunk; the final event sends the finish chunk, the usage chunk when
  // asked for, and [DONE]. A final event with finish_reason "error"/"cancelled" sends an error
  // event instead (the OpenAI client raises it as an APIError).
  std::string stream_event(const RequestEvent& e);

  // Non-streaming: add every event, then body() once `done` was seen.
  void add(const RequestEvent& e);
  json body() const;
  // Set once the final event was seen; then finish_reason() tells how it ended.
  bool done() const { return done_; }
  const std::string& finish_reason() const { return final_.finish_reason; }
  const RequestEvent& final_event() const { return final_; }

 private:
  json chunk(json choice) const;    // wraps a choice into a chunk object
  json logprobs_json(const RequestEvent& e);  // one token's logprobs entry (chat/completion style)
  json usage_json() const;

  Endpoint endpoint_;
  bool include_usage_, logprobs_wanted_;
  const Tokenizer& tok_;
  std::string id_, model_;
  int64_t created_;
  bool role_sent_ = false, done_ = false;
  std::string text_;               // non-stream: the generated text so far
  json logprobs_ = nullptr;        // non-stream: accumulated logprobs
  int64_t text_offset_ = 0;        // completions logprobs: offset of the next token
  RequestEvent final_;
};

// OpenAI's finish_reason for the engine's ("stop", "length"); others are errors.
std::string openai_finish_reason(const std::string& engine_reason);

}  // namespace mixtral::server
