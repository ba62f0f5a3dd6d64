#include "server/metrics_text.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace mixtral::server {

namespace {

// Counters and gauges print as integers; other values in their shortest round-trip form
// ("0.005", "2.5"), as Prometheus clients print them.
std::string num(double v) {
  char b[32];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(b, sizeof b, "%.0f", v);
    return b;
  }
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(b, sizeof b, "%.*g", prec, v);
    if (std::strtod(b, nullptr) == v) break;
  }
  return b;
}

void header(std::string& out, const std::string& name, const char* type, const std::string& help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

std::string render_histogram(const std::string& name, const std::string& help, const Histogram& h) {
  std::string out;
  header(out, name, "histogram", help);
  uint64_t cum = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cum += i < h.counts.size() ? h.counts[i] : 0;
    out += name + "_bucket{le=\"" + num(h.bounds[i]) + "\"} " + std::to_string(cum) + "\n";
  }
  // +Inf holds every observation (the last per-bucket count is the overflow bucket).
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(h.count) + "\n";
  out += name + "_sum " + num(h.sum) + "\n";
  out += name + "_count " + std::to_string(h.count) + "\n";
  return out;
}

std::string render_metrics(const EngineMetrics& m, const HttpCounts& http) {
  struct Scalar {
    const char *name, *type, *help;
    double value;
  };
  const Scalar scalars[] = {
      {"mixtral_requests_total", "counter", "Generation requests accepted by the engine.", double(m.requests_total)},
      {"mixtral_requests_finished_total", "counter", "Requests ended (any finish reason).", double(m.requests_finished)},
      {"mixtral_requests_cancelled_total", "counter", "Requests cancelled (client gone, or shutdown).",
       double(m.requests_cancelled)},
      {"mixtral_requests_rejected_total", "counter", "Requests refused: queue full.", double(m.requests_rejected)},
      {"mixtral_prompt_tokens_total", "counter", "Prompt tokens of ended requests.", double(m.prompt_tokens)},
      {"mixtral_generated_tokens_total", "counter", "Tokens generated.", double(m.generated_tokens)},
      {"mixtral_cached_prompt_tokens_total", "counter", "Prompt tokens served from shared KV blocks.",
       double(m.cached_prompt_tokens)},
      {"mixtral_queue_length", "gauge", "Requests waiting to start.", double(m.queue_length)},
      {"mixtral_running_sequences", "gauge", "Sequences prefilling or decoding.", double(m.running)},
      {"mixtral_kv_blocks_total", "gauge", "KV-cache blocks in the pool.", double(m.kv_blocks_total)},
      {"mixtral_kv_blocks_used", "gauge", "KV-cache blocks held by running sequences.", double(m.kv_blocks_used)},
      {"mixtral_kv_blocks_free", "gauge", "KV-cache blocks free (cached prefixes included).", double(m.kv_blocks_free)},
      {"mixtral_engine_steps_total", "counter", "Forward steps the engine ran.", double(m.step.count)},
  };
  std::string out;
  const auto render = [&](const Scalar& s) {
    header(out, s.name, s.type, s.help);
    out += std::string(s.name) + " " + num(s.value) + "\n";
  };
  for (const Scalar& s : scalars) render(s);
  out += render_histogram("mixtral_time_to_first_token_seconds", "Time from submission to the first generated token.", m.ttft);
  out += render_histogram("mixtral_inter_token_latency_seconds", "Time between consecutive tokens of a request.", m.itl);
  out += render_histogram("mixtral_step_seconds", "Duration of each forward step (all running sequences together).", m.step);

  header(out, "mixtral_expert_tokens_total", "counter", "Tokens routed to each expert of each MoE layer (each of top-k).");
  for (size_t l = 0; l < m.expert_tokens.size(); ++l)
    for (size_t e = 0; e < m.expert_tokens[l].size(); ++e)
      out += "mixtral_expert_tokens_total{layer=\"" + std::to_string(l) + "\",expert=\"" + std::to_string(e) + "\"} " +
             std::to_string(m.expert_tokens[l][e]) + "\n";

  if (const auto& c = m.expert_cache) {  // offloaded experts (--memory-budget)
    const Scalar cache[] = {
        {"mixtral_expert_cache_slots", "gauge", "Expert slots in the cache.", double(m.expert_cache_slots)},
        {"mixtral_expert_cache_demanded_total", "counter", "Expert uses the forward pass asked for.", double(c->demanded)},
        {"mixtral_expert_cache_hits_total", "counter", "Expert uses found in a slot.", double(c->hits)},
        {"mixtral_expert_cache_loads_total", "counter", "Experts read from disk (demand and prefetch).", double(c->loads)},
        {"mixtral_expert_cache_prefetch_loads_total", "counter", "Experts loaded as prefetch.", double(c->prefetch_loads)},
        {"mixtral_expert_cache_prefetch_used_total", "counter", "Prefetched experts used before eviction.",
         double(c->prefetch_used)},
        {"mixtral_expert_cache_read_bytes_total", "counter", "Expert bytes read from disk.", double(c->bytes_read)},
        {"mixtral_expert_cache_stall_seconds_total", "counter", "Time the forward pass waited for expert reads.",
         c->stall_s},
        {"mixtral_expert_cache_tokens_total", "counter", "Tokens run through the forward pass.", double(c->tokens)},
    };
    for (const Scalar& s : cache) render(s);
  }

  header(out, "mixtral_http_responses_total", "counter", "HTTP responses by route and status.");
  for (const auto& [key, n] : http)
    out += "mixtral_http_responses_total{route=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"} " +
           std::to_string(n) + "\n";
  return out;
}

}  // namespace mixtral::server
