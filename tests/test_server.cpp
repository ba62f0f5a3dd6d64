// `mixtral serve` as clients see it: a real server process on a loopback port, driven over
// HTTP. Batched requests give what they give alone; a client that hangs up mid-stream leaves no
// sequence or KV block behind; every bad request is a clean 4xx and the server stays up; the
// official OpenAI Node client works; SIGTERM ends the process with status 0. Every wait is
// bounded, and the server is stopped by its PID.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fcntl.h>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "model/model.h"
#include "server/metrics_text.h"
#include "server/openai_api.h"
#include "text/chat.h"
#include "test_util.h"

using namespace mixtral::testing;
using json = nlohmann::json;
using namespace mixtral;
using namespace mixtral::server;
using Clock = std::chrono::steady_clock;

namespace {

const char* kKey = "test-key";
const httplib::Headers kAuth = {{"Authorization", std::string("Bearer ") + kKey}};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A `mixtral serve` child process on 127.0.0.1 and an OS-chosen port (--port 0, read back from
// the "listening on" line), its stderr in a file.
class ServerProcess {
 public:
  ~ServerProcess() { kill_now(); }

  // Starts the server; false (with the log in *why) if it did not listen within 60 s.
  bool start(const std::vector<std::string>& extra, std::string* why) {
    log_ = ::testing::TempDir() + "mixtral_serve_" + std::to_string(getpid()) + "_" + std::to_string(++serial_) + ".log";
    std::vector<std::string> args = {mixtral_bin(), "serve", "-m", fixtures_dir() + "/gguf/tiny-f32.gguf",
                                     "--host", "127.0.0.1", "--port", "0", "-t", "2"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return *why = "cannot create " + log_, false;
    pid_ = fork();
    if (pid_ == 0) {  // child: only async-signal-safe calls until exec
      dup2(fd, 2);
      const int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(null, 1);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fd);
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    const std::string marker = "listening on http://127.0.0.1:";
    while (Clock::now() < deadline) {
      const std::string log = read_file(log_);
      if (const size_t at = log.find(marker); at != std::string::npos && log.find('\n', at) != std::string::npos) {
        port_ = std::stoi(log.substr(at + marker.size()));
        return true;
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return *why = "the server exited during startup:\n" + log, false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    *why = "the server did not listen within 60 s:\n" + read_file(log_);
    return false;
  }

  // Sends `sig` and waits up to `timeout_s` for the exit; the exit status, or -1 on timeout
  // (then the process is killed).
  int stop(int sig, int timeout_s) {
    if (pid_ <= 0) return -1;
    kill(pid_, sig);
    const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill_now();
    return -1;
  }

  void kill_now() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  int port() const { return port_; }
  std::string log() const { return read_file(log_); }
  httplib::Client client(int read_timeout_s = 60) const {
    httplib::Client c("127.0.0.1", port_);
    c.set_connection_timeout(5);
    c.set_read_timeout(read_timeout_s);
    c.set_write_timeout(10);
    return c;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_;
  static inline int serial_ = 0;
};

// The value of an unlabelled (or fully labelled) series in a Prometheus text page.
double metric(const std::string& page, const std::string& series) {
  std::istringstream in(page);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  return -1;
}

struct Streamed {
  std::string text, finish_reason;
  bool done = false;  // saw data: [DONE]
  int chunks = 0;
  json usage;
};

// Parses an SSE body into the concatenated text (chat deltas or completion text).
Streamed parse_sse(const std::string& body) {
  Streamed s;
  size_t pos = 0;
  for (size_t end; (end = body.find("\n\n", pos)) != std::string::npos; pos = end + 2) {
    const std::string ev = body.substr(pos, end - pos);
    if (ev.rfind("data: ", 0) != 0) continue;  // comments (": ping")
    const std::string data = ev.substr(6);
    if (data == "[DONE]") {
      s.done = true;
      continue;
    }
    const json j = json::parse(data);
    ++s.chunks;
    if (j.contains("usage") && !j["usage"].is_null()) s.usage = j["usage"];
    for (const json& c : j["choices"]) {
      if (c.contains("delta") && c["delta"].contains("content")) s.text += c["delta"]["content"].get<std::string>();
      if (c.contains("text")) s.text += c["text"].get<std::string>();
      if (!c["finish_reason"].is_null()) s.finish_reason = c["finish_reason"];
    }
  }
  return s;
}

json chat_body(const std::string& user, int max_tokens, bool stream = false) {
  return {{"model", "tiny"},
          {"messages", {{{"role", "user"}, {"content", user}}}},
          {"temperature", 0},
          {"max_tokens", max_tokens},
          {"stream", stream}};
}

// One non-streamed chat completion's text; fails the test on anything but 200.
std::string chat_text(const ServerProcess& srv, const json& body) {
  auto cli = srv.client();
  auto res = cli.Post("/v1/chat/completions", kAuth, body.dump(), "application/json");
  if (!res) return ADD_FAILURE() << "no response: " << httplib::to_string(res.error()), "";
  if (res->status != 200) return ADD_FAILURE() << res->status << " " << res->body, "";
  return json::parse(res->body)["choices"][0]["message"]["content"].get<std::string>();
}

// ---- The wire format alone (no process): parsing into engine parameters, chunk rendering,
// Prometheus text.

class ServeApi : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-f32.gguf");
    if (!model_) model_ = Model::load(fixtures_dir() + "/gguf/tiny-f32.gguf");
  }
  const Tokenizer& tok() const { return model_->tokenizer(); }
  static inline std::unique_ptr<Model> model_;
};

TEST_F(ServeApi, ChatRequestBecomesEngineParams) {
  const json body = {
      {"model", "m"},
      {"messages", {{{"role", "developer"}, {"content", "Be brief."}},
                    {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}},
      {"max_tokens", 99}, {"max_completion_tokens", 7}, {"temperature", 0.5}, {"top_p", 0.9}, {"stop", "x"},
      {"seed", 42}, {"presence_penalty", 0.5}, {"frequency_penalty", -0.5}, {"logprobs", true}, {"top_logprobs", 3},
      {"stream", true}, {"stream_options", {{"include_usage", true}}}, {"some_future_field", {1, 2}}};
  const ApiRequest r = parse_chat_request(body.dump(), tok(), 512);
  EXPECT_EQ(r.prompt, encode_chat_v1(tok(), {{"system", "Be brief."}, {"user", "a\nb"}}));
  EXPECT_EQ(r.params.max_tokens, 7);  // max_completion_tokens wins
  EXPECT_FLOAT_EQ(r.params.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.params.sampling.top_p, 0.9f);
  EXPECT_EQ(r.params.sampling.top_k, 0);  // OpenAI sampling: no top-k / min-p narrowing
  EXPECT_EQ(r.params.sampling.min_p, 0.0f);
  EXPECT_EQ(r.params.sampling.seed, 42u);
  EXPECT_EQ(r.params.stop, std::vector<std::string>{"x"});
  EXPECT_FLOAT_EQ(r.params.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.params.frequency_penalty, -0.5f);
  EXPECT_TRUE(r.params.logprobs);
  EXPECT_EQ(r.params.top_logprobs, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);

  const ApiRequest d = parse_chat_request(R"({"messages": [{"role": "user", "content": "hi"}]})", tok(), 512);
  EXPECT_EQ(d.params.max_tokens, 512);  // up to the context (the engine caps it)
  EXPECT_FLOAT_EQ(d.params.sampling.temperature, 1.0f);
  EXPECT_FALSE(d.stream);
  const ApiRequest c = parse_completion_request(R"({"prompt": "hi", "logprobs": 2, "stop": ["a", "b"]})", tok());
  EXPECT_EQ(c.prompt, tok().encode("hi", true));
  EXPECT_EQ(c.params.max_tokens, 16);  // OpenAI's default for completions
  EXPECT_TRUE(c.params.logprobs);
  EXPECT_EQ(c.params.top_logprobs, 2);
  EXPECT_EQ(c.params.stop.size(), 2u);
  EXPECT_EQ(parse_completion_request(R"({"prompt": [[1, 2, 3]]})", tok()).prompt, (std::vector<int32_t>{1, 2, 3}));
}

TEST_F(ServeApi, ErrorsName400AndTheParameter) {
  auto err = [&](const std::string& body) -> ApiError {
    try {
      parse_chat_request(body, tok(), 512);
    } catch (const ApiError& e) {
      return e;
    }
    return ApiError(0, "no error");
  };
  EXPECT_EQ(err(R"({"messages": [{"role": "user", "content": "a"}], "n": 2})").param, "n");
  EXPECT_EQ(err(R"({"messages": [{"role": "user", "content": "a"}], "seed": "1"})").param, "seed");
  EXPECT_EQ(err(R"({"messages": [{"role": "user", "content": "a"}], "stream_options": 1})").param, "stream_options");
  EXPECT_EQ(err(R"({"messages": [{"role": "system", "content": "a"}]})").param, "messages");  // chat.h: no user
  EXPECT_EQ(err("{").status, 400);
  const json e = error_json(err(R"({"messages": 1})"));
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["code"], "invalid_type");
}

TEST_F(ServeApi, ChatStreamChunks) {
  ApiRequest r = parse_chat_request(R"({"messages": [{"role": "user", "content": "hi"}], "stream": true,
                                        "stream_options": {"include_usage": true}})", tok(), 512);
  ResponseBuilder b(r, tok(), "chatcmpl-1", 5, "tiny");
  RequestEvent tokev;
  tokev.token = 10;
  tokev.text = "Hi";
  const Streamed first = parse_sse(b.stream_event(tokev));
  EXPECT_EQ(first.chunks, 2);  // the role chunk, then the text
  EXPECT_EQ(first.text, "Hi");
  RequestEvent fin;
  fin.done = true;
  fin.finish_reason = "length";
  fin.text = "!";
  fin.prompt_tokens = 3;
  fin.completion_tokens = 2;
  const std::string tail = b.stream_event(fin);
  const Streamed last = parse_sse(tail);
  EXPECT_EQ(last.text, "!");
  EXPECT_EQ(last.finish_reason, "length");
  EXPECT_TRUE(last.done);
  EXPECT_EQ(last.usage["total_tokens"], 5);
  EXPECT_EQ(tail.substr(tail.size() - kSseDone.size()), kSseDone);

  RequestEvent cancelled;
  cancelled.done = true;
  cancelled.finish_reason = "cancelled";
  ResponseBuilder c(r, tok(), "chatcmpl-2", 5, "tiny");
  EXPECT_NE(c.stream_event(cancelled).find("\"error\""), std::string::npos);  // in-band error event
}

TEST(ServeMetricsText, PrometheusExposition) {
  EngineMetrics m;
  m.kv_blocks_used = 40;
  m.generated_tokens = 123456789;
  m.expert_tokens = {{1, 2}, {3, 4}};
  m.ttft.bounds = {0.1, 1};
  m.ttft.counts = {1, 2, 3};  // per bucket, the last is +Inf
  m.ttft.count = 6;
  m.ttft.sum = 7.25;
  const std::string page = render_metrics(m, {{{"/health", 200}, 2}});
  EXPECT_NE(page.find("\nmixtral_kv_blocks_used 40\n"), std::string::npos) << page;
  EXPECT_NE(page.find("\nmixtral_generated_tokens_total 123456789\n"), std::string::npos);
  EXPECT_NE(page.find("# TYPE mixtral_time_to_first_token_seconds histogram\n"), std::string::npos);
  EXPECT_NE(page.find("mixtral_time_to_first_token_seconds_bucket{le=\"0.1\"} 1\n"), std::string::npos);
  EXPECT_NE(page.find("mixtral_time_to_first_token_seconds_bucket{le=\"1\"} 3\n"), std::string::npos);  // cumulative
  EXPECT_NE(page.find("mixtral_time_to_first_token_seconds_bucket{le=\"+Inf\"} 6\n"), std::string::npos);
  EXPECT_NE(page.find("mixtral_time_to_first_token_seconds_sum 7.25\n"), std::string::npos);
  EXPECT_NE(page.find("mixtral_expert_tokens_total{layer=\"1\",expert=\"0\"} 3\n"), std::string::npos);
  EXPECT_NE(page.find("mixtral_http_responses_total{route=\"/health\",status=\"200\"} 2\n"), std::string::npos);
}

// ---- A live server

// The server every test below shares: 4 sequences, a 512-token context, a key, a 64 KiB body limit.
class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(fixtures_dir() + "/gguf/tiny-f32.gguf")) return;
    srv_ = new ServerProcess;
    std::string why;
    if (!srv_->start({"--parallel", "4", "--ctx-size", "512", "--api-key", kKey, "--max-body", "65536"}, &why)) {
      start_error_ = why;
      delete srv_;
      srv_ = nullptr;
    }
  }
  static void TearDownTestSuite() {
    if (!srv_) return;
    const int status = srv_->stop(SIGTERM, 30);
    if (status != 0) ADD_FAILURE() << "shared server: exit status " << status << " after SIGTERM\n" << srv_->log();
    delete srv_;
    srv_ = nullptr;
  }
  void SetUp() override {
    REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-f32.gguf");
    ASSERT_NE(srv_, nullptr) << start_error_;
  }
  void TearDown() override {
    // Whatever a test did, the server is still up.
    if (!srv_) return;
    auto cli = srv_->client(10);
    auto res = cli.Get("/health");
    ASSERT_TRUE(res) << "server gone after the test:\n" << srv_->log();
    EXPECT_EQ(res->status, 200);
  }
  static inline ServerProcess* srv_ = nullptr;
  static inline std::string start_error_;
};

TEST_F(Serve, HealthModelsMetrics) {
  auto cli = srv_->client();
  auto models = cli.Get("/v1/models", kAuth);
  ASSERT_TRUE(models);
  ASSERT_EQ(models->status, 200) << models->body;
  const json m = json::parse(models->body);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "tiny-f32.gguf");

  chat_text(*srv_, chat_body("Hello", 4));  // so that routing counters are non-zero
  auto page = cli.Get("/metrics");
  ASSERT_TRUE(page);
  ASSERT_EQ(page->status, 200);
  for (const char* name : {"mixtral_requests_total", "mixtral_prompt_tokens_total", "mixtral_generated_tokens_total",
                           "mixtral_queue_length", "mixtral_running_sequences", "mixtral_kv_blocks_used",
                           "mixtral_kv_blocks_free", "mixtral_time_to_first_token_seconds_count",
                           "mixtral_inter_token_latency_seconds_count"})
    EXPECT_GE(metric(page->body, name), 0) << name << " missing:\n" << page->body;
  EXPECT_GT(metric(page->body, "mixtral_generated_tokens_total"), 0);
  EXPECT_GT(metric(page->body, "mixtral_step_seconds_count"), 0);
  EXPECT_NE(page->body.find("mixtral_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), std::string::npos);
  // The tiny model: 2 layers of 8 experts, top-2 — every token counted twice per layer.
  double routed = 0;
  for (int e = 0; e < 8; ++e)
    routed += std::max(0.0, metric(page->body, "mixtral_expert_tokens_total{layer=\"1\",expert=\"" + std::to_string(e) + "\"}"));
  EXPECT_GT(routed, 0) << page->body;
}

TEST_F(Serve, StreamedChatEqualsWholeChat) {
  json body = chat_body("Tell me a story about a lighthouse.", 24);
  const std::string whole = chat_text(*srv_, body);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  auto cli = srv_->client();
  auto res = cli.Post("/v1/chat/completions", kAuth, body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  const Streamed s = parse_sse(res->body);
  EXPECT_TRUE(s.done) << res->body;
  EXPECT_EQ(s.text, whole);
  EXPECT_FALSE(s.finish_reason.empty());
  ASSERT_TRUE(s.usage.is_object()) << res->body;
  EXPECT_GT(s.usage["prompt_tokens"].get<int>(), 0);
  EXPECT_LE(s.usage["completion_tokens"].get<int>(), 24);
}

TEST_F(Serve, CompletionsEndpoint) {
  auto cli = srv_->client();
  const json body = {{"prompt", "The capital of France is"}, {"max_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}};
  auto res = cli.Post("/v1/completions", kAuth, body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json j = json::parse(res->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
}

// Continuous batching must not change greedy output: each of 16 concurrent requests (more than
// the 4 parallel slots, so some wait and join mid-flight) gives exactly its text alone.
TEST_F(Serve, ConcurrentRequestsEqualEachAlone) {
  std::vector<json> bodies;
  for (int i = 0; i < 16; ++i) {
    json b = chat_body("Request number " + std::to_string(i) + ": " + std::string(size_t(i % 5) * 7, 'x') + " say something.", 24);
    b["ignore_eos"] = true;  // full-length outputs: more tokens to compare
    bodies.push_back(b);
  }
  std::vector<std::string> alone;
  for (const json& b : bodies) alone.push_back(chat_text(*srv_, b));
  for (const std::string& t : alone) ASSERT_FALSE(t.empty());
  std::vector<std::future<std::string>> together;
  for (size_t i = 0; i < bodies.size(); ++i) together.push_back(std::async(std::launch::async, [&, i] {
    // Half stream, half not: both paths go through the same batches.
    if (i % 2) return chat_text(*srv_, bodies[i]);
    json s = bodies[i];
    s["stream"] = true;
    auto cli = srv_->client();
    auto res = cli.Post("/v1/chat/completions", kAuth, s.dump(), "application/json");
    return res && res->status == 200 ? parse_sse(res->body).text : std::string("<failed>");
  }));
  for (size_t i = 0; i < bodies.size(); ++i) {
    ASSERT_EQ(together[i].wait_for(std::chrono::seconds(120)), std::future_status::ready);
    EXPECT_EQ(together[i].get(), alone[i]) << "request " << i;
  }
}

// A client that hangs up mid-stream: the server notices on its next write, cancels, and the
// engine gives every KV block back.
TEST_F(Serve, DisconnectMidStreamFreesEverything) {
  auto cli = srv_->client();
  auto before = cli.Get("/metrics");
  ASSERT_TRUE(before);
  const double cancelled0 = metric(before->body, "mixtral_requests_cancelled_total");

  json body = chat_body("Write a very long essay about the sea.", 480, true);
  body["ignore_eos"] = true;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.headers = kAuth;
  req.set_header("Content-Type", "application/json");
  req.body = body.dump();
  int chunks = 0;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    chunks += int(std::count(data, data + n, '\n'));
    return chunks < 6;  // hang up after a few events
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  auto streamer = srv_->client();
  streamer.send(req, res, err);
  EXPECT_EQ(err, httplib::Error::Canceled);
  streamer.stop();

  const auto deadline = Clock::now() + std::chrono::seconds(20);
  std::string page;
  for (;;) {
    auto m = cli.Get("/metrics");
    ASSERT_TRUE(m);
    page = m->body;
    if (metric(page, "mixtral_running_sequences") == 0 && metric(page, "mixtral_kv_blocks_used") == 0 &&
        metric(page, "mixtral_queue_length") == 0)
      break;
    ASSERT_LT(Clock::now(), deadline) << "blocks not given back:\n" << page;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(metric(page, "mixtral_requests_cancelled_total"), cancelled0 + 1) << page;
}

struct Case {
  const char* what;
  std::string path, body;
  int status;
  std::string param = "";
};

// Every malformed, mistyped or unsupported request is a 4xx with OpenAI's error object, and the
// server answers the next one.
TEST_F(Serve, BadRequestsAreClean4xx) {
  const std::string chat = "/v1/chat/completions", comp = "/v1/completions";
  const std::string msgs = R"("messages": [{"role": "user", "content": "hi"}])";
  const std::vector<Case> cases = {
      {"malformed JSON", chat, R"({"messages": [)", 400},
      {"not an object", chat, "[1, 2]", 400},
      {"empty body", chat, "", 400},
      {"messages missing", chat, R"({"max_tokens": 2})", 400, "messages"},
      {"messages empty", chat, R"({"messages": []})", 400, "messages"},
      {"messages a string", chat, R"({"messages": "hi"})", 400, "messages"},
      {"content a number", chat, R"({"messages": [{"role": "user", "content": 5}]})", 400, "messages[0].content"},
      {"image part", chat, R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})", 400, "messages[0].content[0].type"},
      {"unknown role", chat, R"({"messages": [{"role": "tool", "content": "x"}]})", 400, "messages[0].role"},
      {"roles not alternating", chat, R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})", 400, "messages"},
      {"assistant first", chat, R"({"messages": [{"role": "assistant", "content": "a"}]})", 400, "messages"},
      {"temperature a string", chat, "{" + msgs + R"(, "temperature": "hot"})", 400, "temperature"},
      {"temperature out of range", chat, "{" + msgs + R"(, "temperature": 3})", 400, "temperature"},
      {"max_tokens a string", chat, "{" + msgs + R"(, "max_tokens": "10"})", 400, "max_tokens"},
      {"max_tokens fractional", chat, "{" + msgs + R"(, "max_tokens": 2.5})", 400, "max_tokens"},
      {"max_tokens zero", chat, "{" + msgs + R"(, "max_tokens": 0})", 400, "max_tokens"},
      {"stream a string", chat, "{" + msgs + R"(, "stream": "yes"})", 400, "stream"},
      {"stop a number", chat, "{" + msgs + R"(, "stop": 5})", 400, "stop"},
      {"n = 2", chat, "{" + msgs + R"(, "n": 2})", 400, "n"},
      {"top_logprobs without logprobs", chat, "{" + msgs + R"(, "top_logprobs": 2})", 400, "top_logprobs"},
      {"tools", chat, "{" + msgs + R"(, "tools": [{"type": "function", "function": {"name": "f"}}]})", 400, "tools"},
      {"invalid UTF-8", chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xC3(\xff\"}]}", 400},
      {"lone surrogate", chat, R"({"messages": [{"role": "user", "content": "\ud800"}]})", 400},
      {"prompt missing", comp, R"({"max_tokens": 2})", 400, "prompt"},
      {"prompt a number", comp, R"({"prompt": 5})", 400, "prompt"},
      {"token id out of range", comp, R"({"prompt": [1, 99999999]})", 400, "prompt"},
      {"echo", comp, R"({"prompt": "a", "echo": true})", 400, "echo"},
      {"prompt longer than the context", comp, R"({"prompt": ")" + [] {
         std::string s;
         for (int i = 0; i < 600; ++i) s += "word ";
         return s;
       }() + R"("})", 400, "prompt"},
      {"unknown route", "/v1/nope", "{}", 404},
      {"unknown fields are ignored", chat, "{" + msgs + R"(, "max_tokens": 2, "frobnicate": {"x": [1]}, "user": "u", "metadata": null})", 200},
      {"integral float accepted", chat, "{" + msgs + R"(, "max_tokens": 2.0, "seed": 7, "stop": ["\n\n"]})", 200},
  };
  auto cli = srv_->client();
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto res = cli.Post(c.path, kAuth, c.body, "application/json");
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, c.status) << res->body;
    if (c.status == 200) continue;
    json j;
    ASSERT_NO_THROW(j = json::parse(res->body)) << res->body;
    ASSERT_TRUE(j.contains("error")) << res->body;
    EXPECT_TRUE(j["error"]["message"].is_string());
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    if (!c.param.empty()) {
      EXPECT_EQ(j["error"]["param"], c.param) << res->body;
    }
  }
}

TEST_F(Serve, BodyTooLargeIs413) {
  auto cli = srv_->client();
  const std::string big = R"({"messages": [{"role": "user", "content": ")" + std::string(70000, 'a') + R"("}]})";
  auto res = cli.Post("/v1/chat/completions", kAuth, big, "application/json");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 413) << res->body;
}

TEST_F(Serve, ApiKeyRequired) {
  auto cli = srv_->client();
  const std::string body = chat_body("hi", 2).dump();
  auto none = cli.Post("/v1/chat/completions", body, "application/json");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(json::parse(none->body)["error"]["code"], "invalid_api_key");
  auto wrong = cli.Post("/v1/chat/completions", {{"Authorization", "Bearer nope"}}, body, "application/json");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  auto models = cli.Get("/v1/models", {{"Authorization", "Bearer nope"}});
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 401);
}

// The official OpenAI Node client against this server (tests/server/openai.test.mjs).
TEST_F(Serve, OpenAINodeClient) {
  const std::filesystem::path dir = std::filesystem::path(__FILE__).parent_path() / "server";
  if (!std::filesystem::exists(dir / "node_modules" / "openai") || std::system("node --version >/dev/null 2>&1") != 0) {
    if (in_ci()) FAIL() << "node or " << (dir / "node_modules") << " missing (run scripts/install-node-deps.sh)";
    GTEST_SKIP() << "node or tests/server/node_modules missing: run scripts/install-node-deps.sh";
  }
  const std::string cmd = "cd '" + dir.string() + "' && OPENAI_BASE_URL=http://127.0.0.1:" + std::to_string(srv_->port()) +
                          "/v1 OPENAI_API_KEY=" + kKey + " timeout 300 node --test openai.test.mjs 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int status = pclose(p);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
}

// A non-streamed request whose client gives up: the server's heartbeat (whitespace ahead of
// the JSON body, once a second) fails to write, and the request is cancelled long before its
// 32000 tokens would be done.
TEST(ServeLifecycle, NonStreamedClientGoneIsCancelled) {
  REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-f32.gguf");
  ServerProcess srv;
  std::string why;
  ASSERT_TRUE(srv.start({"--parallel", "1", "--ctx-size", "32768"}, &why)) << why;
  {
    auto impatient = srv.client(/*read_timeout_s=*/1);
    const json body = {{"prompt", "Once upon a time"}, {"max_tokens", 32000}, {"temperature", 0}, {"ignore_eos", true}};
    auto res = impatient.Post("/v1/completions", body.dump(), "application/json");
    EXPECT_FALSE(res);  // timed out: nothing but heartbeat whitespace came
  }
  auto cli = srv.client();
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  for (;;) {
    auto m = cli.Get("/metrics");
    ASSERT_TRUE(m);
    if (metric(m->body, "mixtral_requests_cancelled_total") == 1 && metric(m->body, "mixtral_running_sequences") == 0 &&
        metric(m->body, "mixtral_kv_blocks_used") == 0)
      break;
    ASSERT_LT(Clock::now(), deadline) << m->body;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(srv.stop(SIGTERM, 30), 0) << srv.log();
}

// A server whose experts are offloaded (--memory-budget): same greedy text as in memory, and
// /metrics carries the expert cache's counters.
TEST(ServeLifecycle, OffloadedExpertsServeAndReportTheCache) {
  REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-f32.gguf");
  ServerProcess plain, offloaded;
  std::string why;
  ASSERT_TRUE(plain.start({"--parallel", "2"}, &why)) << why;
  ASSERT_TRUE(offloaded.start({"--parallel", "2", "--memory-budget", "300M", "--expert-slots", "3"}, &why)) << why;
  const json body = {{"prompt", "The experts of a layer"}, {"max_tokens", 12}, {"temperature", 0}};
  auto a = plain.client().Post("/v1/completions", body.dump(), "application/json");
  auto b = offloaded.client().Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(a && b);
  ASSERT_EQ(b->status, 200) << b->body;
  EXPECT_EQ(json::parse(a->body)["choices"][0]["text"], json::parse(b->body)["choices"][0]["text"]);
  auto m = offloaded.client().Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(metric(m->body, "mixtral_expert_cache_slots"), 3);
  EXPECT_GT(metric(m->body, "mixtral_expert_cache_demanded_total"), 0);
  EXPECT_GT(metric(m->body, "mixtral_expert_cache_loads_total"), 0);  // 3 of 16 experts: misses happen
  EXPECT_GT(metric(m->body, "mixtral_expert_cache_read_bytes_total"), 0);
  auto pm = plain.client().Get("/metrics");
  ASSERT_TRUE(pm);
  EXPECT_EQ(pm->body.find("mixtral_expert_cache"), std::string::npos);  // nothing offloaded there
  EXPECT_EQ(plain.stop(SIGTERM, 30), 0) << plain.log();
  EXPECT_EQ(offloaded.stop(SIGTERM, 30), 0) << offloaded.log();
}

// Overload and shutdown on a server of its own: one slot and a queue of one, so a third
// concurrent request is refused with 429; SIGTERM while streams run ends it with status 0.
TEST(ServeLifecycle, QueueFullIs429AndSigtermExitsZero) {
  REQUIRE_PATH(fixtures_dir() + "/gguf/tiny-f32.gguf");
  ServerProcess srv;
  std::string why;
  ASSERT_TRUE(srv.start({"--parallel", "1", "--max-queue", "1", "--ctx-size", "2048", "--shutdown-grace", "1"}, &why)) << why;

  // Two long streams: one runs, one waits. Each stays open until the server ends it.
  std::atomic<int> started{0};
  auto long_stream = [&] {
    json body = {{"prompt", "Once upon a time"}, {"max_tokens", 2000}, {"temperature", 0}, {"ignore_eos", true}, {"stream", true}};
    auto cli = srv.client();
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.set_header("Content-Type", "application/json");
    req.body = body.dump();
    bool counted = false;
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      if (!counted) counted = true, ++started;
      return true;
    };
    httplib::Response res;
    httplib::Error err;
    cli.send(req, res, err);
    return res.status;
  };
  auto a = std::async(std::launch::async, long_stream);
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (started.load() < 1 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(started.load(), 1) << srv.log();
  auto b = std::async(std::launch::async, long_stream);
  // Wait until the second one is queued, then the third must be refused.
  auto cli = srv.client();
  for (;;) {
    auto m = cli.Get("/metrics");
    ASSERT_TRUE(m);
    if (metric(m->body, "mixtral_queue_length") >= 1) break;
    ASSERT_LT(Clock::now(), deadline) << m->body;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto third = cli.Post("/v1/completions", R"({"prompt": "hi", "max_tokens": 2})", "application/json");
  ASSERT_TRUE(third);
  EXPECT_EQ(third->status, 429) << third->body;
  EXPECT_EQ(json::parse(third->body)["error"]["code"], "queue_full");

  EXPECT_EQ(srv.stop(SIGTERM, 30), 0) << srv.log();
  ASSERT_EQ(a.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  ASSERT_EQ(b.wait_for(std::chrono::seconds(30)), std::future_status::ready);
}

}  // namespace
