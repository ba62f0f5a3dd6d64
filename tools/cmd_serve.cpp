// `mixtral serve`: an OpenAI-compatible HTTP server over the continuous-batching engine.
// This file is the command's flags and its process life: signals, load, bind, serve, shut down.
// The HTTP side lives in src/server, the scheduling in src/engine.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>

#include "cli_common.h"
#include "engine/engine.h"
#include "server/server.h"

namespace mixtral::cli {
namespace {

struct ServeFlags {
  ModelFlags model;  // -m, -t, -c (per-request context), -b (tokens per engine step), ...
  std::string host = "127.0.0.1", api_key;
  int port = 8080;
  int parallel = 4;
  int64_t max_queue = 64;
  size_t max_body = 8u << 20;
  int64_t kv_blocks = 0, block_size = 16;
  int64_t prefill_chunk = EngineOptions{}.prefill_chunk;
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
  if (f.prefill_chunk < 0) fail("--prefill-chunk", "must not be negative");

  ModelFlags mf = f.model;
  mf.kv_sequences = f.parallel;  // the KV cache --memory-budget must leave room for
  const auto model = mf.load();
  if (!model->has_tokenizer()) fail(f.model.model, "has no tokenizer; the server needs one to read prompts");

  EngineOptions eo;
  eo.n_parallel = f.parallel;
  eo.n_ctx = f.model.context(*model);
  eo.kv_blocks = f.kv_blocks;
  eo.block_size = f.block_size;
  eo.step_tokens = f.model.batch;
  eo.prefill_chunk = f.prefill_chunk;
  eo.max_queue = f.max_queue;
  eo.n_threads = f.model.threads;
  Engine engine(*model, eo);

  server::ServerOptions so;
  so.host = f.host;
  so.port = f.port;
  so.api_key = f.api_key;
  so.model_id = server::model_id_from_path(f.model.model);
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

void add_serve_command(CLI::App& app, Commands& commands) {
  auto f = std::make_shared<ServeFlags>();
  f->model.batch = 256;  // tokens per engine step: bounds how long a prompt chunk delays decoding
  auto* s = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  f->model.add(s);
  s->add_option("--host", f->host, "address to bind (default 127.0.0.1: this machine only)");
  s->add_option("--port", f->port, "TCP port (0: any free port; the chosen one is printed)");
  s->add_option("--parallel", f->parallel, "sequences decoded together in each step");
  s->add_option("--api-key", f->api_key, "require 'Authorization: Bearer KEY' on /v1/*")->envname("MIXTRAL_API_KEY");
  s->add_option("--max-queue", f->max_queue, "waiting requests beyond which new ones get 429");
  s->add_option("--max-body", f->max_body, "largest request body in bytes (larger: 413)");
  s->add_option("--prefill-chunk", f->prefill_chunk,
                 "most prompt tokens per step while other sequences decode (0: up to -b); smaller keeps "
                 "running streams' inter-token latency lower, larger gives new requests their first token sooner");
  s->add_option("--kv-blocks", f->kv_blocks, "KV-cache blocks in the pool (default: parallel x ctx / block size)");
  s->add_option("--block-size", f->block_size, "positions per KV-cache block");
  s->add_option("--shutdown-grace", f->grace, "seconds in-flight requests may finish after SIGINT/SIGTERM");
  s->add_option("--timeout", f->timeout, "socket read/write timeout in seconds");
  s->add_option("--http-threads", f->http_threads, "HTTP worker threads (default: parallel + max-queue + 8)");
  commands.emplace_back(s, [f] { return cmd_serve(*f); });
}

}  // namespace mixtral::cli
