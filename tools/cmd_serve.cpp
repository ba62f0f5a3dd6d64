// `mixtral serve`: an OpenAI-compatible HTTP server over the continuous-batching engine.
// This file is the command's flags and its process life: signals, load, bind, serve, shut down.
// The HTTP side lives in src/server, the scheduling in src/engine.
#include <CLI/CLI.hpp>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>
#include <thread>

#include "core/error.h"
#include "engine/engine.h"
#include "model/model.h"
#include "server/server.h"

using namespace mixtral;

namespace {

struct ServeFlags {
  std::string model, host = "127.0.0.1", api_key;
  int port = 8080;
  int parallel = 4;
  int64_t ctx = 0;  // 0: min(4096, the model's context)
  int threads = 0;
  int64_t max_queue = 64;
  size_t max_body = 8u << 20;
  int64_t kv_blocks = 0, block_size = 16, step_tokens = 256, experts_per_token = 0;
  bool preload = false;
  double grace = 5;
  int timeout = 60;
  int http_threads = 0;
};

int cmd_serve(const ServeFlags& f) {
  // SIGINT/SIGTERM are taken synchronously by one watcher thread (sigtimedwait), so they must
  // be blocked before any other thread exists: threads inherit the mask. SIGPIPE would kill the
  // process when a client hangs up mid-write; the failed write is handled instead.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  if (f.parallel < 1) fail("--parallel", "must be at least 1");
  if (f.max_queue < 0) fail("--max-queue", "must not be negative");
  if (f.max_body < 1) fail("--max-body", "must be positive");
  if (f.port < 0 || f.port > 65535) fail("--port", "must be 0..65535");

  LoadOptions lo;
  if (f.experts_per_token > 0) lo.experts_per_token = f.experts_per_token;
  lo.prefetch = f.preload;
  const auto model = Model::load(f.model, lo);
  if (!model->has_tokenizer()) fail(f.model, "has no tokenizer; the server needs one to read prompts");
  const int64_t max_ctx = model->config().max_context;
  if (f.ctx < 0) fail("--ctx-size", "must be positive");
  if (f.ctx > max_ctx) fail("--ctx-size", std::to_string(f.ctx) + " exceeds the model's context of " + std::to_string(max_ctx));

  EngineOptions eo;
  eo.n_parallel = f.parallel;
  eo.n_ctx = f.ctx > 0 ? f.ctx : std::min<int64_t>(4096, max_ctx);
  eo.kv_blocks = f.kv_blocks;
  eo.block_size = f.block_size;
  eo.step_tokens = f.step_tokens;
  eo.max_queue = f.max_queue;
  eo.n_threads = f.threads;
  Engine engine(*model, eo);

  server::ServerOptions so;
  so.host = f.host;
  so.port = f.port;
  so.api_key = f.api_key;
  so.model_id = server::model_id_from_path(f.model);
  so.max_body = f.max_body;
  so.http_threads = f.http_threads;
  so.timeout_s = f.timeout;
  so.shutdown_grace_s = f.grace;
  server::Server srv(engine, so);
  const int port = srv.bind();
  std::fprintf(stderr, "mixtral serve: %s, %d parallel sequences of up to %lld tokens\n", so.model_id.c_str(), eo.n_parallel,
               static_cast<long long>(eo.n_ctx));
  std::fprintf(stderr, "listening on http://%s:%d\n", f.host.c_str(), port);
  std::fflush(stderr);

  std::atomic<bool> served{false};
  std::thread watcher([&] {
    const timespec poll{0, 200 * 1000 * 1000};
    while (!served.load()) {
      const int sig = sigtimedwait(&stop_signals, nullptr, &poll);
      if (sig <= 0) continue;  // timeout or EINTR
      std::fprintf(stderr, "mixtral serve: %s, shutting down (again to force)\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
      // A second signal finds this thread unblocked and ends the process the default way.
      pthread_sigmask(SIG_UNBLOCK, &stop_signals, nullptr);
      srv.shutdown();
      return;
    }
  });
  srv.run();
  served.store(true);
  watcher.join();
  engine.shutdown(/*finish=*/false);
  std::fprintf(stderr, "mixtral serve: stopped\n");
  return 0;
}

}  // namespace

// Registers `serve` on the main app; once the command line names it, `action` runs it.
void add_serve_command(CLI::App& app, std::function<int()>& action) {
  auto f = std::make_shared<ServeFlags>();
  auto* s = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  s->add_option("-m,--model", f->model, "Hugging Face directory or .gguf file")->required();
  s->add_option("--host", f->host, "address to bind (default 127.0.0.1: this machine only)");
  s->add_option("--port", f->port, "TCP port (0: any free port; the chosen one is printed)");
  s->add_option("--parallel", f->parallel, "sequences decoded together in each step");
  s->add_option("-c,--ctx-size", f->ctx, "most tokens of one request (prompt + output); default min(4096, model)");
  s->add_option("--api-key", f->api_key, "require 'Authorization: Bearer KEY' on /v1/*")->envname("MIXTRAL_API_KEY");
  s->add_option("-t,--threads", f->threads, "compute threads (default: all cores)");
  s->add_option("--max-queue", f->max_queue, "waiting requests beyond which new ones get 429");
  s->add_option("--max-body", f->max_body, "largest request body in bytes (larger: 413)");
  s->add_option("--kv-blocks", f->kv_blocks, "KV-cache blocks in the pool (default: parallel x ctx / block size)");
  s->add_option("--block-size", f->block_size, "positions per KV-cache block");
  s->add_option("-b,--batch-size", f->step_tokens, "most tokens per engine step (decode tokens + prompt chunks)");
  s->add_option("--experts-per-token", f->experts_per_token, "override the router's top-k");
  s->add_flag("--preload", f->preload, "read all weights into memory before serving");
  s->add_option("--shutdown-grace", f->grace, "seconds in-flight requests may finish after SIGINT/SIGTERM");
  s->add_option("--timeout", f->timeout, "socket read/write timeout in seconds");
  s->add_option("--http-threads", f->http_threads, "HTTP worker threads (default: parallel + max-queue + 8)");
  s->callback([f, &action] { action = [f] { return cmd_serve(*f); }; });
}
