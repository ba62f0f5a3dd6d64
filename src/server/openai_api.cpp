#include "server/openai_api.h"

#include <cmath>
#include <random>

#include "core/error.h"
#include "text/chat.h"

namespace mixtral::server {

ApiError::ApiError(int status_, const std::string& message, std::string param_, std::string code_)
    : std::runtime_error(message), status(status_), param(std::move(param_)), code(std::move(code_)) {
  // OpenAI's types: 4xx caused by the request are invalid_request_error (401 included, with
  // code invalid_api_key); a full queue is a rate limit; the rest is the server's fault.
  type = status == 429 ? "rate_limit_error" : status >= 500 ? "server_error" : "invalid_request_error";
}

json error_json(const ApiError& e) {
  auto or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  return {{"error", {{"message", e.what()}, {"type", e.type}, {"param", or_null(e.param)}, {"code", or_null(e.code)}}}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& j) { return "data: " + dump(j) + "\n\n"; }

std::string openai_finish_reason(const std::string& r) { return r == "length" ? "length" : "stop"; }

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& what, const std::string& code = {}) {
  throw ApiError(400, param.empty() ? what : "'" + param + "': " + what, param, code.empty() ? "invalid_value" : code);
}

const char* type_name(const json& v) {
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

[[noreturn]] void wrong_type(const std::string& param, const char* expected, const json& v) {
  bad(param, std::string("expected ") + expected + ", got " + type_name(v), "invalid_type");
}

// A known optional field: nullptr when absent or null (OpenAI treats null as "not given").
const json* field(const json& o, const char* key) {
  auto it = o.find(key);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

bool get_bool(const json& o, const char* key, bool def) {
  const json* v = field(o, key);
  if (!v) return def;
  if (!v->is_boolean()) wrong_type(key, "a boolean", *v);
  return v->get<bool>();
}

double get_number(const json& o, const char* key, double def, double lo, double hi) {
  const json* v = field(o, key);
  if (!v) return def;
  if (!v->is_number()) wrong_type(key, "a number", *v);
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) bad(key, "must be between " + dump(lo) + " and " + dump(hi));
  return x;
}

// Integers may arrive as 3 or 3.0 (some clients serialise every number as a double).
int64_t get_int(const json& o, const char* key, int64_t def, int64_t lo, int64_t hi) {
  const json* v = field(o, key);
  if (!v) return def;
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)) bad(key, "out of range");
  if (v->is_number_integer()) {
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) bad(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    return x;
  }
  if (v->is_number_float()) {
    const double x = v->get<double>();
    if (x != std::floor(x)) wrong_type(key, "an integer", *v);
    if (!(x >= double(lo) && x <= double(hi)))
      bad(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    return int64_t(x);
  }
  wrong_type(key, "an integer", *v);
}

json parse_body(std::string_view body) {
  json j;
  try {
    // nlohmann rejects ill-formed UTF-8 and lone surrogates in strings, so every string that
    // passes is valid UTF-8 (the tokenizer would refuse it otherwise).
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, std::string("malformed JSON body: ") + e.what(), "", "invalid_json");
  }
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object", "", "invalid_json");
  return j;
}

// Fields common to both endpoints: sampling, limits, penalties, stop, stream.
void parse_common(const json& b, ApiRequest& r, int64_t default_max_tokens) {
  if (const json* m = field(b, "model"); m && !m->is_string()) wrong_type("model", "a string", *m);
  if (get_int(b, "n", 1, 1, 128) != 1) bad("n", "only n = 1 is supported");
  if (get_int(b, "best_of", 1, 1, 128) != 1) bad("best_of", "only best_of = 1 is supported");

  GenerationParams& p = r.params;
  // max_completion_tokens is the newer name of max_tokens (chat); either caps the output.
  int64_t max_tokens = get_int(b, "max_tokens", default_max_tokens, 1, INT64_MAX);
  max_tokens = get_int(b, "max_completion_tokens", max_tokens, 1, INT64_MAX);
  p.max_tokens = max_tokens;  // the engine caps it so prompt + output fit the context

  // OpenAI's sampling is temperature + nucleus only; the sampler's other narrowing (top-k,
  // min-p) is off unless the client asks for it through the llama.cpp-style extensions.
  SamplerParams& s = p.sampling;
  s.temperature = float(get_number(b, "temperature", 1.0, 0.0, 2.0));
  s.top_p = float(get_number(b, "top_p", 1.0, 0.0, 1.0));
  s.top_k = int32_t(get_int(b, "top_k", 0, 0, INT32_MAX));
  s.min_p = float(get_number(b, "min_p", 0.0, 0.0, 1.0));
  s.repeat_penalty = float(get_number(b, "repetition_penalty", 1.0, 0.01, 10.0));
  if (const json* seed = field(b, "seed")) {
    if (!seed->is_number_integer()) wrong_type("seed", "an integer", *seed);
    s.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : uint64_t(seed->get<int64_t>());
  } else {
    // No seed: a fresh one per request, so two identical sampled requests differ (as OpenAI's).
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    s.seed = rng();
  }
  p.presence_penalty = float(get_number(b, "presence_penalty", 0.0, -2.0, 2.0));
  p.frequency_penalty = float(get_number(b, "frequency_penalty", 0.0, -2.0, 2.0));
  p.ignore_eos = get_bool(b, "ignore_eos", false);

  if (const json* stop = field(b, "stop")) {
    auto add = [&](const json& s) {
      if (!s.is_string()) wrong_type("stop", "a string or an array of strings", s);
      if (!s.get_ref<const std::string&>().empty()) p.stop.push_back(s.get<std::string>());
    };
    if (stop->is_array()) {
      if (stop->size() > 16) bad("stop", "at most 16 stop sequences");
      for (const json& s : *stop) add(s);
    } else {
      add(*stop);
    }
  }
  if (const json* lb = field(b, "logit_bias")) {
    if (!lb->is_object()) wrong_type("logit_bias", "an object", *lb);
    if (!lb->empty()) bad("logit_bias", "is not supported", "unsupported_parameter");
  }

  r.stream = get_bool(b, "stream", false);
  if (const json* so = field(b, "stream_options")) {
    if (!so->is_object()) wrong_type("stream_options", "an object", *so);
    r.include_usage = get_bool(*so, "include_usage", false);
  }
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts (joined
// with newlines, as vLLM does). Images and audio cannot be read by this model.
std::string message_content(const json& m, size_t i, const std::string& role) {
  const std::string param = "messages[" + std::to_string(i) + "].content";
  const json* c = field(m, "content");
  if (!c) {
    if (role == "assistant") return "";  // an assistant turn may carry tool calls only
    bad(param, "is required");
  }
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) wrong_type(param, "a string or an array of content parts", *c);
  std::string out;
  for (size_t k = 0; k < c->size(); ++k) {
    const json& part = (*c)[k];
    const std::string pp = param + "[" + std::to_string(k) + "]";
    if (!part.is_object()) wrong_type(pp, "an object", part);
    const json* type = field(part, "type");
    if (!type || !type->is_string()) bad(pp + ".type", "must be a string");
    if (*type != "text")
      bad(pp + ".type", "content of type '" + type->get<std::string>() + "' is not supported (text only)",
          "unsupported_value");
    const json* text = field(part, "text");
    if (!text || !text->is_string()) bad(pp + ".text", "must be a string");
    if (!out.empty()) out += "\n";
    out += text->get<std::string>();
  }
  return out;
}

}  // namespace

ApiRequest parse_chat_request(std::string_view body, const Tokenizer& tok, int64_t n_ctx) {
  const json b = parse_body(body);
  ApiRequest r;
  r.endpoint = Endpoint::chat;
  parse_common(b, r, n_ctx);

  // Chat logprobs: a boolean, plus how many alternatives per position.
  r.params.logprobs = get_bool(b, "logprobs", false);
  r.params.top_logprobs = int(get_int(b, "top_logprobs", 0, 0, 20));
  if (r.params.top_logprobs > 0 && !r.params.logprobs) bad("top_logprobs", "requires logprobs to be true");

  if (const json* tools = field(b, "tools")) {
    if (!tools->is_array()) wrong_type("tools", "an array", *tools);
    if (!tools->empty()) bad("tools", "tool calling is not supported", "unsupported_parameter");
  }
  if (const json* rf = field(b, "response_format")) {
    if (!rf->is_object()) wrong_type("response_format", "an object", *rf);
    const json* t = field(*rf, "type");
    if (t && *t != "text") bad("response_format", "only {\"type\": \"text\"} is supported", "unsupported_value");
  }

  const json* msgs = field(b, "messages");
  if (!msgs) bad("messages", "is required");
  if (!msgs->is_array()) wrong_type("messages", "an array", *msgs);
  if (msgs->empty()) bad("messages", "must contain at least one message");
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) wrong_type(param, "an object", m);
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad(param + ".role", "must be a string");
    std::string r_ = role->get<std::string>();
    if (r_ == "developer") r_ = "system";  // OpenAI's newer name for the system role
    if (r_ != "system" && r_ != "user" && r_ != "assistant")
      bad(param + ".role", "role '" + r_ + "' is not supported (system, user, assistant)", "unsupported_value");
    messages.push_back({r_, message_content(m, i, r_)});
  }
  try {
    // The same encoding as `mixtral chat`; its validation (alternating roles, one leading
    // system message) is the API's.
    r.prompt = encode_chat_v1(tok, messages);
  } catch (const Error& e) {
    bad("messages", e.what());
  }
  return r;
}

ApiRequest parse_completion_request(std::string_view body, const Tokenizer& tok) {
  const json b = parse_body(body);
  ApiRequest r;
  r.endpoint = Endpoint::completion;
  parse_common(b, r, /*OpenAI's default for completions*/ 16);
  r.params.continuation = true;  // " Paris" after "The capital of France is", as OpenAI returns

  // Completions logprobs: an integer, the number of alternatives (0 = the chosen token only).
  if (field(b, "logprobs")) {
    r.params.logprobs = true;
    r.params.top_logprobs = int(get_int(b, "logprobs", 0, 0, 20));
  }
  if (get_bool(b, "echo", false)) bad("echo", "is not supported", "unsupported_parameter");
  if (const json* s = field(b, "suffix")) {
    if (!s->is_string()) wrong_type("suffix", "a string", *s);
    if (!s->get_ref<const std::string&>().empty()) bad("suffix", "is not supported", "unsupported_parameter");
  }

  // prompt: a string, an array of token ids, or either wrapped in a one-element array (OpenAI
  // accepts batches; this server does one prompt per request).
  const json* p = field(b, "prompt");
  if (!p) bad("prompt", "is required");
  const json* one = p;
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) one = &(*p)[0];
  try {
    if (one->is_string()) {
      r.prompt = tok.encode(one->get_ref<const std::string&>(), /*add_bos=*/true);
    } else if (one->is_array()) {
      for (const json& id : *one) {
        if (!id.is_number_integer())
          bad("prompt", "must be a string, an array of token ids, or a one-element array of either");
        const int64_t v = id.get<int64_t>();
        if (v < 0 || v >= tok.n_vocab()) bad("prompt", "token id " + std::to_string(v) + " is outside the vocabulary");
        r.prompt.push_back(int32_t(v));
      }
    } else {
      wrong_type("prompt", "a string or an array of token ids", *one);
    }
  } catch (const Error& e) {
    bad("prompt", e.what());
  }
  return r;
}

std::string token_text(const Tokenizer& tok, int32_t id) {
  if (id < 0 || id >= tok.n_vocab()) return {};
  const std::string& piece = tok.piece(id);
  if (tok.is_byte(id)) return std::string(1, char(std::stoi(piece.substr(3, 2), nullptr, 16)));  // "<0xAB>"
  static constexpr std::string_view kSpace = "\xE2\x96\x81";  // ▁ U+2581
  std::string s;
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpace.size(), kSpace) == 0) s += ' ', i += kSpace.size();
    else s += piece[i++];
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Responses

ResponseBuilder::ResponseBuilder(const ApiRequest& req, const Tokenizer& tok, std::string id, int64_t created,
                                 std::string model)
    : endpoint_(req.endpoint),
      include_usage_(req.include_usage),
      logprobs_wanted_(req.params.logprobs),
      tok_(tok),
      id_(std::move(id)),
      model_(std::move(model)),
      created_(created) {}

json ResponseBuilder::chunk(json choice) const {
  const bool chat = endpoint_ == Endpoint::chat;
  json c = {{"id", id_},
            {"object", chat ? "chat.completion.chunk" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"system_fingerprint", nullptr},
            {"choices", json::array({std::move(choice)})}};
  if (include_usage_) c["usage"] = nullptr;  // OpenAI: null on every chunk but the last
  return c;
}

json ResponseBuilder::usage_json() const {
  return {{"prompt_tokens", final_.prompt_tokens},
          {"completion_tokens", final_.completion_tokens},
          {"total_tokens", final_.prompt_tokens + final_.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", final_.cached_tokens}}}};
}

json ResponseBuilder::logprobs_json(const RequestEvent& e) {
  auto bytes_of = [](const std::string& s) {
    json a = json::array();
    for (unsigned char ch : s) a.push_back(int(ch));
    return a;
  };
  const std::string t = token_text(tok_, e.token);
  if (endpoint_ == Endpoint::chat) {
    json top = json::array();
    for (const TopLogprob& tl : e.top) {
      const std::string tt = token_text(tok_, tl.token);
      top.push_back({{"token", tt}, {"logprob", tl.logprob}, {"bytes", bytes_of(tt)}});
    }
    return {{"token", t}, {"logprob", e.logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", std::move(top)}};
  }
  // Completions' column layout: parallel arrays, top_logprobs as {token: logprob} maps.
  json top = json::object();
  for (const TopLogprob& tl : e.top) top[token_text(tok_, tl.token)] = tl.logprob;
  json lp = {{"tokens", json::array({t})},
             {"token_logprobs", json::array({e.logprob})},
             {"top_logprobs", json::array({top})},
             {"text_offset", json::array({text_offset_})}};
  text_offset_ += int64_t(t.size());
  return lp;
}

std::string ResponseBuilder::stream_event(const RequestEvent& e) {
  const bool chat = endpoint_ == Endpoint::chat;
  std::string out;
  if (chat && !role_sent_) {
    // OpenAI's first chat chunk announces the role with empty content.
    out += sse_event(chunk({{"index", 0},
                            {"delta", {{"role", "assistant"}, {"content", ""}}},
                            {"logprobs", nullptr},
                            {"finish_reason", nullptr}}));
    role_sent_ = true;
  }
  if (!e.done) {
    const bool with_lp = logprobs_wanted_;
    // Empty text: part of a UTF-8 character, or text held back while it may begin a stop string.
    if (e.text.empty() && !with_lp) return out;
    json lp = nullptr;
    if (with_lp) {
      lp = logprobs_json(e);
      if (chat) lp = {{"content", json::array({lp})}};
    }
    json choice = chat ? json{{"index", 0}, {"delta", {{"content", e.text}}}, {"logprobs", lp}}
                       : json{{"index", 0}, {"text", e.text}, {"logprobs", lp}};
    choice["finish_reason"] = nullptr;
    return out + sse_event(chunk(std::move(choice)));
  }

  done_ = true;
  final_ = e;
  if (e.finish_reason != "stop" && e.finish_reason != "length") {
    // Cancelled by a server shutdown, or an engine failure: tell the client in-band (the status
    // line went out with the first chunk), then end the stream.
    const bool shutdown = e.finish_reason == "cancelled";
    ApiError err(shutdown ? 503 : 500, shutdown ? "the server is shutting down" : "generation failed: " + e.error);
    return out + sse_event(error_json(err)) + std::string(kSseDone);
  }
  const std::string reason = openai_finish_reason(e.finish_reason);
  // The final event may carry the last characters (held-back bytes, text before a stop string).
  const json delta = e.text.empty() ? json::object() : json{{"content", e.text}};
  json choice = chat ? json{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", reason}}
                     : json{{"index", 0}, {"text", e.text}, {"logprobs", nullptr}, {"finish_reason", reason}};
  out += sse_event(chunk(std::move(choice)));
  if (include_usage_) {
    json u = chunk(json::object());
    u["choices"] = json::array();
    u["usage"] = usage_json();
    out += sse_event(u);
  }
  return out + std::string(kSseDone);
}

void ResponseBuilder::add(const RequestEvent& e) {
  text_ += e.text;
  if (e.done) {
    done_ = true;
    final_ = e;
    return;
  }
  if (!logprobs_wanted_) return;
  json lp = logprobs_json(e);
  if (endpoint_ == Endpoint::chat) {
    if (logprobs_.is_null()) logprobs_ = {{"content", json::array()}};
    logprobs_["content"].push_back(std::move(lp));
  } else {
    for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
      if (!logprobs_.contains(k)) logprobs_[k] = json::array();
      logprobs_[k].push_back(lp[k][0]);
    }
  }
}

json ResponseBuilder::body() const {
  const bool chat = endpoint_ == Endpoint::chat;
  const std::string reason = openai_finish_reason(final_.finish_reason);
  json choice = chat ? json{{"index", 0},
                            {"message", {{"role", "assistant"}, {"content", text_}, {"refusal", nullptr}}},
                            {"logprobs", logprobs_},
                            {"finish_reason", reason}}
                     : json{{"index", 0}, {"text", text_}, {"logprobs", logprobs_}, {"finish_reason", reason}};
  return {{"id", id_},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", created_},
          {"model", model_},
          {"system_fingerprint", nullptr},
          {"choices", json::array({std::move(choice)})},
          {"usage", usage_json()}};
}

}  // namespace mixtral::server
