// The HTTP frontend of `mixtral serve`: OpenAI-compatible routes over cpp-httplib in front of
// one Engine. Each connection runs on an httplib worker thread that parses the request
// (openai_api.h), submits it to the engine and relays the engine's events to the socket — as
// server-sent events when streaming. A write that fails means the client is gone: the request
// is cancelled, so the engine frees its sequence and KV blocks at its next step.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "engine/engine.h"
#include "server/metrics_text.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace mixtral::server {

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 8080;                 // 0: any free port (printed when listening)
  std::string api_key;             // when set, /v1/* requires "Authorization: Bearer <key>"
  std::string model_id;            // what /v1/models lists and responses name
  size_t max_body = 8u << 20;      // bytes; larger request bodies get 413
  int http_threads = 0;            // 0: enough for every running and queued stream (see server.cpp)
  int timeout_s = 60;              // socket read/write timeout
  double shutdown_grace_s = 5;     // on SIGTERM, how long in-flight requests may still finish
};

class HttpServer;  // httplib::Server with a usable listen backlog (server.cpp)

class Server {
 public:
  Server(Engine& engine, ServerOptions options);
  ~Server();

  // Binds the socket (throws Error when it cannot) and returns the port.
  int bind();
  // Serves until shutdown(); returns after every connection's thread has ended.
  void run();
  // Stops accepting, lets in-flight requests run for up to the grace period, then cancels the
  // rest through Engine::shutdown. Thread-safe; meant for the signal-watching thread.
  void shutdown();

 private:
  void routes();
  void generate(const httplib::Request& req, httplib::Response& res, bool chat);
  bool authorized(const httplib::Request& req) const;
  void count(const httplib::Request& req, const httplib::Response& res);

  Engine& engine_;
  ServerOptions options_;
  std::unique_ptr<HttpServer> http_;
  int port_ = 0;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> inflight_{0};
  std::mutex counts_mutex_;
  HttpCounts counts_;
  int64_t created_ = 0;  // unix time the server started ("created" of the model object)
};

// The model id clients see: the checkpoint's file or directory name ("tiny-f32.gguf").
std::string model_id_from_path(const std::string& path);

}  // namespace mixtral::server
