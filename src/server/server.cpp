#include "server/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <random>
#include <thread>

#include "core/error.h"
#include "server/openai_api.h"

namespace mixtral::server {

// Debian's libcpp-httplib is compiled with a listen backlog of 5: a burst of a few dozen
// clients connecting at once overflows it, and their connections stall for a SYN retransmit
// (a second) or fail. listen() again on the bound socket raises the backlog (Linux takes the
// new value; the kernel caps it at net.core.somaxconn).
class HttpServer : public httplib::Server {
 public:
  void raise_backlog(int n) { ::listen(svr_sock_, n); }
};

namespace {

using Clock = std::chrono::steady_clock;

// While a request waits (queued, or prefilling a long prompt) nothing is written, and a client
// that left would go unnoticed: every second of silence we write something harmless (an SSE
// comment, or JSON whitespace before a non-streamed body) so that a dead socket shows up as a
// failed write.
constexpr auto kHeartbeat = std::chrono::seconds(1);
constexpr int kPollMs = 200;

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dump(j), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, error_json(e)); }

// Routes as they appear in metrics: the fixed set, everything else is "other".
std::string route_of(const std::string& path) {
  for (const char* r : {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"})
    if (path == r) return r;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

std::string random_hex() {
  std::mt19937_64 rng{std::random_device{}()};
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

// One generation request in flight: the engine's handle, the response being built, and the
// server's count of live requests (which shutdown waits on), released with the last reference
// — when httplib destroys the Response, i.e. after the last byte was written or the write
// failed.
struct Inflight {
  Inflight(std::atomic<int64_t>& n, std::shared_ptr<Request> r, ResponseBuilder b)
      : count(n), req(std::move(r)), builder(std::move(b)) {
    ++count;
  }
  ~Inflight() {
    if (!builder.done()) req->cancel();  // the client left before the end: free the sequence
    --count;
  }
  std::atomic<int64_t>& count;
  std::shared_ptr<Request> req;
  ResponseBuilder builder;
};

// Streaming: one SSE event per token (a chat stream starts with the role chunk), [DONE] last.
void stream_response(std::shared_ptr<Inflight> st, httplib::Response& res) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // proxies: do not buffer the stream
  res.set_chunked_content_provider("text/event-stream", [st](size_t, httplib::DataSink& sink) {
    RequestEvent ev;
    auto last_write = Clock::now();
    for (;;) {
      if (!st->req->next(ev, kPollMs)) {
        if (Clock::now() - last_write < kHeartbeat) continue;
        static constexpr char kPing[] = ": ping\n\n";  // an SSE comment: clients ignore it
        if (!sink.write(kPing, sizeof kPing - 1)) return false;  // gone: ~Inflight cancels
        last_write = Clock::now();
        continue;
      }
      const std::string out = st->builder.stream_event(ev);
      if (!out.empty()) {
        if (!sink.write(out.data(), out.size())) return false;
        last_write = Clock::now();
      }
      if (ev.done) break;
    }
    sink.done();
    return true;
  });
}

// Not streaming: the status line (200) goes out now and the body when generation ends, so
// that the heartbeat can notice a client that gave up. Everything the client can get wrong
// was rejected before; a failure from here on is the server's and comes as an error body.
//
// The media type carries a charset on purpose: httplib gzips exactly "application/json" for
// clients that accept it, and a compressor would swallow the heartbeat bytes.
void whole_response(std::shared_ptr<Inflight> st, httplib::Response& res) {
  res.set_chunked_content_provider("application/json; charset=utf-8", [st](size_t, httplib::DataSink& sink) {
    RequestEvent ev;
    auto last_write = Clock::now();
    for (;;) {
      const bool got = st->req->next(ev, kPollMs);
      if (got) st->builder.add(ev);
      if (got && ev.done) break;
      if (Clock::now() - last_write < kHeartbeat) continue;
      if (!sink.write(" ", 1)) return false;  // whitespace before a JSON value is still JSON
      last_write = Clock::now();
    }
    const std::string& reason = st->builder.finish_reason();
    std::string body;
    if (reason == "stop" || reason == "length") {
      body = dump(st->builder.body());
    } else if (reason == "cancelled") {  // by a shutdown: the client is still there
      body = dump(error_json(ApiError(503, "the server is shutting down")));
    } else {
      body = dump(error_json(ApiError(500, "generation failed: " + st->builder.final_event().error)));
    }
    if (!sink.write(body.data(), body.size())) return false;
    sink.done();
    return true;
  });
}

}  // namespace

std::string model_id_from_path(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.find_last_of('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

Server::Server(Engine& engine, ServerOptions options)
    : engine_(engine), options_(std::move(options)), http_(std::make_unique<HttpServer>()) {
  created_ = int64_t(std::time(nullptr));
  // Every running or queued stream holds one worker thread for its whole life, and so does an
  // idle keep-alive connection: size the pool for all of them, so that a full queue is answered
  // with 429 instead of connections silently waiting for a thread.
  const EngineOptions& eo = engine_.options();
  const int threads = options_.http_threads > 0
                          ? options_.http_threads
                          : int(std::clamp<int64_t>(int64_t(eo.n_parallel) + eo.max_queue + 8, 16, 1024));
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  http_->set_read_timeout(options_.timeout_s);
  http_->set_write_timeout(options_.timeout_s);
  http_->set_payload_max_length(options_.max_body);
  http_->set_tcp_nodelay(true);  // one small SSE chunk per token: do not let Nagle hold them
  routes();
}

Server::~Server() = default;

bool Server::authorized(const httplib::Request& req) const {
  if (options_.api_key.empty()) return true;
  return req.get_header_value("Authorization") == "Bearer " + options_.api_key;
}

void Server::count(const httplib::Request& req, const httplib::Response& res) {
  std::lock_guard<std::mutex> lock(counts_mutex_);
  ++counts_[{route_of(req.path), res.status}];
}

void Server::routes() {
  httplib::Server& h = *http_;

  // httplib's own refusals (no route, body too large, unparsable request) get OpenAI's shape.
  h.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.is_chunked_content_provider_) return;  // a handler already answered
    if (res.status == 404) {
      send_error(res, ApiError(404, "unknown route: " + req.method + " " + req.path, "", "unknown_url"));
    } else if (res.status == 413) {
      const std::string limit = std::to_string(options_.max_body);
      send_error(res, ApiError(413, "request body larger than " + limit + " bytes", "", "request_too_large"));
    } else {
      send_error(res, ApiError(res.status, "bad request"));
    }
  });
  // Nothing a client sends should get here (parsing throws ApiError); this is the last resort.
  h.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what += std::string(": ") + e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, what));
  });
  h.set_logger([this](const httplib::Request& req, const httplib::Response& res) { count(req, res); });

  h.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (draining_) return send_json(res, 503, {{"status", "shutting down"}});
    send_json(res, 200, {{"status", "ok"}});
  });
  h.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    HttpCounts http;
    {
      std::lock_guard<std::mutex> lock(counts_mutex_);
      http = counts_;
    }
    res.set_content(render_metrics(engine_.metrics(), http), "text/plain; version=0.0.4; charset=utf-8");
  });
  // The API key guards the OpenAI routes; /health and /metrics stay open for probes and
  // scrapers. Checked in the handlers, not httplib's pre-routing hook: that runs before the
  // body is read, and an unread body would be parsed as the connection's next request.
  auto v1 = [this](auto handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      if (authorized(req)) return handler(req, res);
      const bool given = req.has_header("Authorization");
      const char* what = given ? "incorrect API key provided" : "missing API key (Authorization: Bearer <key>)";
      send_error(res, ApiError(401, what, "", "invalid_api_key"));
    };
  };
  auto model_object = [this] {
    return json{{"id", options_.model_id}, {"object", "model"}, {"created", created_}, {"owned_by", "mixtral.cpp"}};
  };
  h.Get("/v1/models", v1([model_object](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"object", "list"}, {"data", json::array({model_object()})}});
  }));
  h.Get(R"(/v1/models/(.+))", v1([this, model_object](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] == options_.model_id) return send_json(res, 200, model_object());
    const std::string what = "the model '" + std::string(req.matches[1]) + "' does not exist";
    send_error(res, ApiError(404, what, "model", "model_not_found"));
  }));
  h.Post("/v1/chat/completions",
         v1([this](const httplib::Request& req, httplib::Response& res) { generate(req, res, /*chat=*/true); }));
  h.Post("/v1/completions",
         v1([this](const httplib::Request& req, httplib::Response& res) { generate(req, res, /*chat=*/false); }));
}

void Server::generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  std::shared_ptr<Inflight> st;
  bool stream = false;
  try {
    if (draining_) throw ApiError(503, "the server is shutting down", "", "shutting_down");
    const Tokenizer& tok = engine_.model().tokenizer();
    const int64_t n_ctx = engine_.options().n_ctx;
    ApiRequest ar = chat ? parse_chat_request(req.body, tok, n_ctx) : parse_completion_request(req.body, tok);
    std::shared_ptr<Request> r;
    try {
      r = engine_.submit(ar.prompt, ar.params);
    } catch (const Error& e) {
      // The engine refuses prompts that leave no room to generate (or are empty).
      const bool too_long = int64_t(ar.prompt.size()) >= n_ctx;
      throw ApiError(400, e.what(), chat ? "messages" : "prompt",
                     too_long ? "context_length_exceeded" : "invalid_value");
    }
    if (!r) throw ApiError(429, "the server is busy (request queue full); retry later", "", "queue_full");
    const std::string id = (chat ? "chatcmpl-" : "cmpl-") + random_hex() + std::to_string(r->id());
    ResponseBuilder builder(ar, tok, id, int64_t(std::time(nullptr)), options_.model_id);
    st = std::make_shared<Inflight>(inflight_, std::move(r), std::move(builder));
    stream = ar.stream;
  } catch (const ApiError& e) {
    return send_error(res, e);
  }

  if (stream) stream_response(std::move(st), res);
  else whole_response(std::move(st), res);
}

int Server::bind() {
  if (options_.port == 0) {
    port_ = http_->bind_to_any_port(options_.host);
    if (port_ < 0) fail("--host", "cannot bind " + options_.host + " to any port");
  } else {
    if (!http_->bind_to_port(options_.host, options_.port))
      fail("--port", "cannot bind " + options_.host + ":" + std::to_string(options_.port) +
                         " (in use, or not an address of this machine?)");
    port_ = options_.port;
  }
  http_->raise_backlog(1024);
  return port_;
}

void Server::run() {
  if (draining_) return;
  http_->listen_after_bind();
}

void Server::shutdown() {
  if (draining_.exchange(true)) return;
  // stop() is a no-op until listen has started; the window is tiny, but do not lose a signal.
  for (int i = 0; i < 100 && !http_->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  http_->stop();  // no new connections; live ones keep their threads
  const auto deadline = Clock::now() + std::chrono::duration<double>(options_.shutdown_grace_s);
  while (inflight_.load() > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  // Whatever still runs is cancelled; its streams end with an error event and their threads
  // return, which lets run() return.
  engine_.shutdown(/*finish=*/false);
}

}  // namespace mixtral::server
