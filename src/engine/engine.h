// The serving engine: one loop thread that owns the model's forward pass and runs every active
// request together (continuous batching). Each step builds one Batch from
//   - one decode token of every running sequence, and
//   - a chunk of the prompt of sequences still prefilling (bounded by step_tokens, and by
//     prefill_chunk while any sequence decodes, so long prompts never stall running streams for long),
// so the MoE layer groups tokens of *different* requests by expert. New requests join between
// steps; cancelled ones leave between steps and give their KV blocks back.
//
// Frontends (the HTTP server) submit a Request and read its events; they never touch the model.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "model/model.h"
#include "sample/sampler.h"

namespace mixtral {

struct EngineOptions {
  int n_parallel = 4;          // sequences decoding at once
  int64_t n_ctx = 4096;        // most positions of one sequence (prompt + generated)
  int64_t kv_blocks = 0;       // KV blocks in the pool; 0: n_parallel * n_ctx / block_size
  int64_t block_size = 16;     // positions per KV block
  int64_t step_tokens = 256;   // most tokens per forward step (decode tokens + prefill chunks)
  // Most prompt tokens per step while any sequence is decoding (0: step_tokens bounds them). Each
  // prompt token in a decode step adds to every running stream's inter-token latency.
  int64_t prefill_chunk = 32;
  int64_t max_queue = 64;      // waiting requests beyond which submit() refuses
  int n_threads = 0;           // 0: all cores
};

struct GenerationParams {
  int64_t max_tokens = 256;     // capped so prompt + generated <= n_ctx
  SamplerParams sampling;       // temperature, top_p, seed, ...
  float presence_penalty = 0;   // OpenAI semantics: logit -= presence·[count>0] + frequency·count
  float frequency_penalty = 0;
  std::vector<std::string> stop;  // generation ends before any of these strings
  int top_logprobs = 0;         // 0..20: also report the n most likely tokens at each step
  bool logprobs = false;        // report the chosen token's log-probability
  bool ignore_eos = false;
  // The output continues the prompt's text (completions): keep the first token's leading space.
  // Off for chat, whose answer is a text of its own (SentencePiece drops its dummy-prefix space).
  bool continuation = false;
};

struct TopLogprob {
  int32_t token;
  std::string text;
  float logprob;
};

// One step of a request's life, in order: zero or more token events, then exactly one final
// event (done = true) carrying the finish reason.
struct RequestEvent {
  std::string text;             // new text, whole UTF-8 characters only (may be empty)
  int32_t token = -1;           // the sampled token (-1 on the final event)
  float logprob = 0;
  std::vector<TopLogprob> top;  // when top_logprobs > 0
  bool done = false;
  std::string finish_reason;    // "stop", "length", "cancelled", "error" (on the final event)
  std::string error;            // when finish_reason == "error"
  int64_t prompt_tokens = 0;    // on the final event: usage
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;    // prompt tokens served from shared KV blocks
};

// A submitted request. The engine thread pushes events; one consumer thread reads them.
class Request {
 public:
  uint64_t id() const { return id_; }
  // Waits up to `timeout_ms` for the next event; false on timeout.
  bool next(RequestEvent& out, int timeout_ms);
  // Asks the engine to stop this request (a client disconnected); it frees its sequence and KV
  // blocks at the next step and emits a final "cancelled" event.
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

 private:
  friend class Engine;
  void push(RequestEvent e);
  uint64_t id_ = 0;
  std::vector<int32_t> prompt_;
  GenerationParams params_;
  std::atomic<bool> cancelled_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<RequestEvent> events_;
};

// A fixed-bucket latency histogram (seconds), Prometheus-style cumulative on output.
struct Histogram {
  std::vector<double> bounds;    // upper bounds, ascending
  std::vector<uint64_t> counts;  // per bucket (not cumulative), last = +Inf
  double sum = 0;
  uint64_t count = 0;
  void observe(double v);
};

struct EngineMetrics {
  uint64_t requests_total = 0, requests_finished = 0, requests_cancelled = 0, requests_rejected = 0;
  uint64_t prompt_tokens = 0, generated_tokens = 0, cached_prompt_tokens = 0;
  int64_t queue_length = 0, running = 0;
  int64_t kv_blocks_total = 0, kv_blocks_used = 0, kv_blocks_free = 0;
  Histogram ttft, itl;                             // time to first token, inter-token latency
  Histogram step;                                  // duration of each forward step (count: steps run)
  std::vector<std::vector<uint64_t>> expert_tokens;  // [layer][expert]: tokens routed (all ranks)
  std::optional<ExpertCacheStats> expert_cache;      // offloaded experts only
  int64_t expert_cache_slots = 0;
};

class Engine {
 public:
  Engine(const Model& model, const EngineOptions& options);
  ~Engine();  // stops the loop (cancelling what runs)

  // Queues a request. Throws Error("prompt: ...") for an empty prompt or one that leaves no
  // room to generate within n_ctx, and returns nullptr when the queue is full (→ 429/503).
  std::shared_ptr<Request> submit(std::vector<int32_t> prompt, const GenerationParams& params);

  // Stops accepting work; with finish = true lets running and queued requests complete, else
  // cancels them. Returns when the loop thread has exited.
  void shutdown(bool finish);

  EngineMetrics metrics() const;
  const Model& model() const { return model_; }
  const EngineOptions& options() const { return options_; }

 private:
  struct Impl;
  const Model& model_;
  EngineOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mixtral
