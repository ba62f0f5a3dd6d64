#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <unordered_map>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/transformer.h"
#include "text/tokenizer.h"

namespace mixtral {

using Clock = std::chrono::steady_clock;

// ---- Request / Histogram ------------------------------------------------------------------

void Request::push(RequestEvent e) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(std::move(e));
  }
  cv_.notify_one();
}

bool Request::next(RequestEvent& out, int timeout_ms) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return !events_.empty(); })) return false;
  out = std::move(events_.front());
  events_.pop_front();
  return true;
}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v;
  ++count;
}

namespace {

Histogram latency_histogram() {
  Histogram h;
  h.bounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  h.counts.assign(h.bounds.size() + 1, 0);
  return h;
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Counts the tokens routed to each expert of each layer (for /metrics). Runs on the engine
// thread inside forward(), so it needs no lock; the engine copies it out under its mutex.
struct ExpertCounter : RoutingObserver {
  std::vector<std::vector<uint64_t>> counts;  // [layer][expert]
  void on_route(int64_t layer, const Batch& b, int64_t k, int64_t n_experts, const int32_t* experts, const float*,
                const float*) override {
    if (counts.size() <= size_t(layer)) counts.resize(size_t(layer) + 1);
    auto& c = counts[size_t(layer)];
    if (c.size() < size_t(n_experts)) c.resize(size_t(n_experts), 0);
    for (int64_t i = 0; i < b.size() * k; ++i) ++c[size_t(experts[i])];
  }
};

}  // namespace

// ---- the engine ---------------------------------------------------------------------------

struct Engine::Impl {
  // One running sequence.
  struct Seq {
    std::shared_ptr<Request> req;
    int slot = -1;
    std::vector<int32_t> tokens;  // prompt, then every sampled token
    int64_t n_prompt = 0;
    int64_t n_computed = 0;       // positions whose K/V are in the cache
    int64_t n_generated = 0;
    int64_t max_tokens = 0;
    int64_t cached = 0;           // prompt positions reused from shared blocks
    Sampler sampler;
    StreamDecoder decoder;
    std::string held;             // decoded text not yet sent (could start a stop string)
    std::unordered_map<int32_t, int32_t> counts;  // generated token counts (penalties)
    Clock::time_point t_submit, t_last;
    Seq(const Tokenizer& tok, const GenerationParams& p) : sampler(p.sampling), decoder(tok, !p.continuation) {}
  };

  Impl(const Model& m, const EngineOptions& o)
      : model(m),
        opt(o),
        pool(o.n_threads > 0 ? o.n_threads : ThreadPool::default_threads()),
        kv(m.config(), o.kv_blocks, o.block_size),
        state(m.config(), o.step_tokens, pool.size()) {
    state.reserve_logit_rows(o.n_parallel);  // a step samples one token of each running sequence
    metrics.ttft = latency_histogram();
    metrics.itl = latency_histogram();
    metrics.step = latency_histogram();
    metrics.kv_blocks_total = kv.n_blocks();
    loop = std::thread([this] { run(); });
  }

  const Model& model;
  EngineOptions opt;
  ThreadPool pool;
  KVCache kv;
  State state;
  Batch batch;
  ExpertCounter experts;
  std::vector<std::unique_ptr<Seq>> running;
  std::vector<float> scratch;  // one row of logits, penalised

  std::mutex mutex;  // guards queue, stop flags and metrics
  std::condition_variable wake;
  std::deque<std::shared_ptr<Request>> queue;
  bool stopping = false, finish_on_stop = false;
  uint64_t next_id = 1;
  EngineMetrics metrics;
  std::thread loop;

  void run();
  void admit();
  bool step();
  void sample(Seq& s, const float* logits);
  void emit_text(Seq& s, std::string text, RequestEvent& ev);
  void finish(Seq& s, const std::string& reason, const std::string& error = "", bool flush_text = true);
  void prune() {  // drops the sequences finish() has ended
    running.erase(std::remove_if(running.begin(), running.end(), [](const auto& s) { return !s || s->slot < 0; }),
                  running.end());
  }
};

void Engine::Impl::run() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex);
      wake.wait(lock, [&] { return stopping || !queue.empty() || !running.empty(); });
      if (stopping && !finish_on_stop) {
        for (auto& r : queue) r->cancel();
        for (auto& s : running) s->req->cancel();
      }
      if (stopping && queue.empty() && running.empty()) return;
    }
    admit();
    // Cancelled requests leave before the step and give their blocks back.
    for (auto& s : running)
      if (s->req->cancelled()) finish(*s, "cancelled");
    prune();
    if (!running.empty() && !step()) {
      // Nothing could run: the KV pool is exhausted. Fail the newest sequence to make room.
      finish(*running.back(), "error", "the KV cache is full (raise --ctx-size or lower --parallel)");
    }
    prune();
    std::lock_guard<std::mutex> lock(mutex);
    metrics.running = int64_t(running.size());
    metrics.queue_length = int64_t(queue.size());
    metrics.kv_blocks_used = kv.blocks_used();
    metrics.kv_blocks_free = kv.n_blocks() - kv.blocks_used();
    metrics.expert_tokens = experts.counts;
  }
}

void Engine::Impl::admit() {
  const Tokenizer& tok = model.tokenizer();
  for (;;) {
    std::shared_ptr<Request> r;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (queue.empty() || int(running.size()) >= opt.n_parallel) return;
      r = queue.front();
      queue.pop_front();
    }
    auto s = std::make_unique<Seq>(tok, r->params_);
    s->req = r;
    s->t_submit = s->t_last = Clock::now();
    if (r->cancelled()) {
      finish(*s, "cancelled");
      continue;
    }
    s->tokens = r->prompt_;
    s->n_prompt = int64_t(s->tokens.size());
    s->max_tokens = std::min(r->params_.max_tokens, opt.n_ctx - s->n_prompt);
    s->slot = kv.add_seq();
    s->cached = s->n_computed = kv.attach_prefix(s->slot, s->tokens);
    running.push_back(std::move(s));
  }
}

// One forward pass over every running sequence. Returns false when no sequence could get KV
// blocks for its next tokens.
bool Engine::Impl::step() {
  batch.clear();
  std::vector<Seq*> rows;  // the sequence of each logits row, in batch order
  int64_t budget = opt.step_tokens;
  // Decode tokens first (one each: bounded latency for running streams), then prefill chunks,
  // at most prefill_chunk of them when the step also decodes.
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1 && !rows.empty() && opt.prefill_chunk > 0) budget = std::min(budget, opt.prefill_chunk);
    for (auto& sp : running) {
      Seq& s = *sp;
      const int64_t todo = int64_t(s.tokens.size()) - s.n_computed;
      const bool decoding = s.n_computed >= s.n_prompt;
      if ((pass == 0) != decoding || todo <= 0 || budget <= 0) continue;
      const int64_t n = std::min(todo, budget);
      if (!kv.ensure(s.slot, s.n_computed + n)) continue;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t pos = s.n_computed + i;
        const bool last = pos + 1 == int64_t(s.tokens.size());
        batch.add(s.tokens[size_t(pos)], int32_t(pos), s.slot, last);
        if (last) rows.push_back(&s);
      }
      s.n_computed += n;
      budget -= n;
    }
  }
  if (batch.size() == 0) return false;
  const auto t0 = Clock::now();
  forward(model, batch, kv, state, pool, &experts);
  const double dt = seconds(Clock::now() - t0);
  const int64_t V = model.config().vocab_size;
  for (size_t i = 0; i < rows.size(); ++i) sample(*rows[i], &state.logits[int64_t(i) * V]);
  for (auto& sp : running)
    if (sp->slot >= 0) kv.register_blocks(sp->slot, sp->tokens, sp->n_computed);
  std::lock_guard<std::mutex> lock(mutex);
  metrics.step.observe(dt);
  return true;
}

void Engine::Impl::sample(Seq& s, const float* logits) {
  const GenerationParams& p = s.req->params_;
  const Tokenizer& tok = model.tokenizer();
  const int64_t V = model.config().vocab_size;
  const float* row = logits;
  if ((p.presence_penalty != 0 || p.frequency_penalty != 0) && !s.counts.empty()) {
    scratch.assign(logits, logits + V);
    for (const auto& [id, n] : s.counts) scratch[size_t(id)] -= p.presence_penalty + p.frequency_penalty * float(n);
    row = scratch.data();
  }
  const int32_t id = s.sampler.sample(row, V, s.tokens);
  const auto now = Clock::now();
  RequestEvent ev;
  ev.token = id;
  if (p.logprobs || p.top_logprobs > 0) {  // the model's distribution, before sampling tweaks
    double m = logits[0];
    for (int64_t i = 1; i < V; ++i) m = std::max(m, double(logits[i]));
    double z = 0;
    for (int64_t i = 0; i < V; ++i) z += std::exp(double(logits[i]) - m);
    const double lse = m + std::log(z);
    ev.logprob = float(double(logits[id]) - lse);
    std::vector<int32_t> top(static_cast<size_t>(V));
    for (int64_t i = 0; i < V; ++i) top[size_t(i)] = int32_t(i);
    const size_t n = size_t(std::clamp(p.top_logprobs, 0, 20));
    std::partial_sort(top.begin(), top.begin() + n, top.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    for (size_t i = 0; i < n; ++i) ev.top.push_back({top[i], tok.decode({top[i]}), float(double(logits[top[i]]) - lse)});
  }
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (s.n_generated == 0) metrics.ttft.observe(seconds(now - s.t_submit));
    else metrics.itl.observe(seconds(now - s.t_last));
    ++metrics.generated_tokens;
  }
  s.t_last = now;
  if (id == tok.eos() && !p.ignore_eos) {
    finish(s, "stop");
    return;
  }
  s.tokens.push_back(id);
  ++s.counts[id];
  ++s.n_generated;
  emit_text(s, s.decoder.feed(id), ev);
  if (s.slot < 0) return;  // a stop string ended it
  if (s.n_generated >= s.max_tokens) finish(s, "length");
}

// Sends new text, holding back any tail that could be the start of a stop string, and ends the
// request ("stop") when a stop string appears.
void Engine::Impl::emit_text(Seq& s, std::string text, RequestEvent& ev) {
  const auto& stops = s.req->params_.stop;
  s.held += text;
  size_t cut = std::string::npos;
  for (const auto& st : stops)
    if (!st.empty()) cut = std::min(cut, s.held.find(st));
  if (cut != std::string::npos) {
    ev.text = s.held.substr(0, cut);
    s.held.clear();
    s.req->push(std::move(ev));
    finish(s, "stop", "", /*flush_text=*/false);
    return;
  }
  size_t keep = 0;  // longest suffix of held that is a proper prefix of a stop string
  for (const auto& st : stops)
    for (size_t n = std::min(st.size() - (st.empty() ? 0 : 1), s.held.size()); n > keep; --n)
      if (s.held.compare(s.held.size() - n, n, st, 0, n) == 0) {
        keep = n;
        break;
      }
  ev.text = s.held.substr(0, s.held.size() - keep);
  s.held.erase(0, s.held.size() - keep);
  s.req->push(std::move(ev));
}

// Ends a sequence: the final event (with any text still held back, unless a stop string ended
// it), KV blocks back to the pool, metrics. run() prunes it from `running` (slot < 0).
void Engine::Impl::finish(Seq& s, const std::string& reason, const std::string& error, bool flush_text) {
  RequestEvent ev;
  ev.done = true;
  ev.finish_reason = reason;
  ev.error = error;
  if (flush_text && (reason == "stop" || reason == "length")) ev.text = s.held + s.decoder.flush();
  ev.prompt_tokens = s.n_prompt;
  ev.completion_tokens = s.n_generated;
  ev.cached_tokens = s.cached;
  if (s.slot >= 0) kv.free_seq(s.slot);
  s.slot = -1;
  {
    std::lock_guard<std::mutex> lock(mutex);
    ++metrics.requests_finished;
    if (reason == "cancelled") ++metrics.requests_cancelled;
    metrics.kv_blocks_used = kv.blocks_used();
    metrics.kv_blocks_free = kv.n_blocks() - kv.blocks_used();
    metrics.prompt_tokens += uint64_t(s.n_prompt);
    metrics.cached_prompt_tokens += uint64_t(s.cached);
  }
  s.req->push(std::move(ev));  // last: whoever reads the final event sees the metrics updated
}

Engine::Engine(const Model& model, const EngineOptions& options) : model_(model), options_(options) {
  EngineOptions& o = options_;
  const Config& c = model.config();
  if (o.n_parallel < 1 || o.n_parallel > 1024) fail("--parallel", "must be in [1, 1024]");
  if (o.n_ctx < 2 || o.n_ctx > c.max_context)
    fail("--ctx-size", std::to_string(o.n_ctx) + " is outside [2, " + std::to_string(c.max_context) + "]");
  if (o.kv_blocks <= 0) o.kv_blocks = int64_t(o.n_parallel) * ((o.n_ctx + o.block_size - 1) / o.block_size);
  o.step_tokens = std::max<int64_t>(o.step_tokens, o.n_parallel);
  model.tokenizer();  // throws when the model has none
  impl_ = std::make_unique<Impl>(model, o);
}

Engine::~Engine() { shutdown(false); }

std::shared_ptr<Request> Engine::submit(std::vector<int32_t> prompt, const GenerationParams& params) {
  if (prompt.empty()) fail("prompt", "is empty");
  for (int32_t t : prompt)
    if (t < 0 || t >= model_.config().vocab_size) fail("prompt", "token id " + std::to_string(t) + " is outside the vocabulary");
  if (int64_t(prompt.size()) >= options_.n_ctx)
    fail("prompt", std::to_string(prompt.size()) + " tokens leave no room to generate in the context of " +
                       std::to_string(options_.n_ctx));
  if (params.max_tokens < 1) fail("max_tokens", "must be at least 1");
  auto r = std::make_shared<Request>();
  r->prompt_ = std::move(prompt);
  r->params_ = params;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->stopping || int64_t(impl_->queue.size()) >= options_.max_queue) {
      ++impl_->metrics.requests_rejected;
      return nullptr;
    }
    r->id_ = impl_->next_id++;
    impl_->queue.push_back(r);
    ++impl_->metrics.requests_total;
    impl_->metrics.queue_length = int64_t(impl_->queue.size());
  }
  impl_->wake.notify_one();
  return r;
}

void Engine::shutdown(bool finish) {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
    impl_->finish_on_stop = finish;
  }
  impl_->wake.notify_one();
  if (impl_->loop.joinable()) impl_->loop.join();
}

EngineMetrics Engine::metrics() const {
  EngineMetrics m;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    m = impl_->metrics;
  }
  if (const ExpertCache* cache = model_.expert_cache()) {
    m.expert_cache = cache->stats();
    m.expert_cache_slots = cache->n_slots();
  }
  return m;
}

}  // namespace mixtral
