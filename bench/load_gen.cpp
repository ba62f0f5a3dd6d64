// load_gen: a load generator for `mixtral serve`. N concurrent clients each stream completions
// back to back (fixed output length: ignore_eos) until the request budget or the time budget of
// that concurrency level is spent; it then prints aggregate generated tokens/s, time to first
// token and inter-token latency (p50/p99). Loopback only: it refuses any other host.
//
//   build/bench/load_gen --port 8080 -c 1,4,16,64 --requests 64 --max-tokens 64 --duration 120
#include <CLI/CLI.hpp>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string host = "127.0.0.1", api_key, endpoint = "completions", prompt = "Once upon a time, in a land far away,";
  int port = 8080;
  std::vector<int> levels = {1, 4, 16};
  int requests = 32;        // per level, in all
  int max_tokens = 64;      // per request
  double duration = 120;    // seconds per level, at most
  bool vary_prompt = true;  // a per-request suffix, so that prefix sharing does not flatter
};

struct Sample {  // one finished request
  double ttft = 0;
  std::vector<double> gaps;  // between consecutive token events
  int64_t tokens = 0;
  bool ok = false;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5));
  return v[i];
}

// One streamed request; timings from the moment it was sent.
Sample run_one(const Options& o, int serial) {
  Sample s;
  httplib::Client cli(o.host, o.port);
  cli.set_connection_timeout(5);
  cli.set_read_timeout(300);
  const bool chat = o.endpoint == "chat";
  const std::string prompt = o.prompt + (o.vary_prompt ? " (" + std::to_string(serial) + ")" : "");
  json body = {{"max_tokens", o.max_tokens}, {"temperature", 0}, {"ignore_eos", true}, {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  if (chat) body["messages"] = {{{"role", "user"}, {"content", prompt}}};
  else body["prompt"] = prompt;

  httplib::Request req;
  req.method = "POST";
  req.path = chat ? "/v1/chat/completions" : "/v1/completions";
  req.set_header("Content-Type", "application/json");
  if (!o.api_key.empty()) req.set_header("Authorization", "Bearer " + o.api_key);
  req.body = body.dump();

  std::string pending;  // bytes of an SSE event not yet complete
  const auto t0 = Clock::now();
  auto last = t0;
  bool first = true;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    pending.append(data, n);
    for (size_t end; (end = pending.find("\n\n")) != std::string::npos; pending.erase(0, end + 2)) {
      const std::string ev = pending.substr(0, end);
      if (ev.rfind("data: ", 0) != 0 || ev == "data: [DONE]") continue;
      const json j = json::parse(ev.substr(6), nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("usage") && j["usage"].is_object()) s.tokens = j["usage"]["completion_tokens"].get<int64_t>();
      if (!j.contains("choices") || j["choices"].empty()) continue;
      const json& c = j["choices"][0];
      const bool has_text = chat ? (c["delta"].contains("content") && !c["delta"]["content"].get<std::string>().empty())
                                 : !c["text"].get<std::string>().empty();
      if (!has_text) continue;
      const auto now = Clock::now();
      if (first) s.ttft = std::chrono::duration<double>(now - t0).count(), first = false;
      else s.gaps.push_back(std::chrono::duration<double>(now - last).count());
      last = now;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  s.ok = cli.send(req, res, err) && res.status == 200 && !first;
  if (!s.ok) std::fprintf(stderr, "load_gen: request %d failed: %s, status %d\n", serial, httplib::to_string(err).c_str(), res.status);
  return s;
}

void run_level(const Options& o, int streams) {
  std::atomic<int> next{0};
  std::mutex mu;
  std::vector<Sample> samples;
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration<double>(o.duration);
  std::vector<std::thread> workers;
  for (int w = 0; w < streams; ++w)
    workers.emplace_back([&] {
      for (int i; (i = next++) < o.requests && Clock::now() < deadline;) {
        Sample s = run_one(o, i);
        std::lock_guard<std::mutex> lock(mu);
        samples.push_back(std::move(s));
      }
    });
  for (auto& t : workers) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();

  std::vector<double> ttft, itl;
  int64_t tokens = 0;
  int ok = 0;
  for (const Sample& s : samples) {
    if (!s.ok) continue;
    ++ok;
    tokens += s.tokens;
    ttft.push_back(s.ttft);
    itl.insert(itl.end(), s.gaps.begin(), s.gaps.end());
  }
  std::printf("%7d %8d/%-4zu %8lld %8.2f %9.1f %9.1f %9.1f %9.2f %9.2f\n", streams, ok, samples.size(),
              static_cast<long long>(tokens), wall, double(tokens) / wall, 1e3 * percentile(ttft, 0.5),
              1e3 * percentile(ttft, 0.99), 1e3 * percentile(itl, 0.5), 1e3 * percentile(itl, 0.99));
  std::fflush(stdout);
}

std::vector<int> parse_levels(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(std::stoi(x));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string levels = "1,4,16";
  CLI::App app{"load_gen: concurrent streaming load against a local `mixtral serve`"};
  app.add_option("--host", o.host, "server address (loopback only)");
  app.add_option("--port", o.port, "server port");
  app.add_option("-c,--concurrency", levels, "comma-separated numbers of concurrent streams, run in turn");
  app.add_option("-n,--requests", o.requests, "requests per concurrency level");
  app.add_option("--max-tokens", o.max_tokens, "tokens generated per request");
  app.add_option("--duration", o.duration, "seconds per level at most (requests then stop starting)");
  app.add_option("--endpoint", o.endpoint, "completions or chat")->check(CLI::IsMember({"completions", "chat"}));
  app.add_option("--prompt", o.prompt, "prompt text (a request number is appended)");
  app.add_option("--api-key", o.api_key, "bearer key, when the server wants one")->envname("MIXTRAL_API_KEY");
  bool same_prompt = false;
  app.add_flag("--same-prompt", same_prompt, "send the identical prompt every time (prefix sharing)");
  CLI11_PARSE(app, argc, argv);
  o.vary_prompt = !same_prompt;
  if (o.host != "127.0.0.1" && o.host != "localhost" && o.host != "::1") {
    std::fprintf(stderr, "load_gen: refusing non-loopback host %s\n", o.host.c_str());
    return 1;
  }
  try {
    o.levels = parse_levels(levels);
  } catch (const std::exception&) {
    std::fprintf(stderr, "load_gen: bad --concurrency list '%s'\n", levels.c_str());
    return 1;
  }
  std::printf("# %s, %d requests per level of %d tokens each, at most %.0f s per level\n", o.endpoint.c_str(), o.requests,
              o.max_tokens, o.duration);
  std::printf("%7s %13s %8s %8s %9s %9s %9s %9s %9s\n", "streams", "ok/requests", "tokens", "wall_s", "tok/s", "ttft_p50",
              "ttft_p99", "itl_p50", "itl_p99");
  std::printf("%7s %13s %8s %8s %9s %9s %9s %9s %9s\n", "", "", "", "", "", "ms", "ms", "ms", "ms");
  for (int n : o.levels) {
    if (n < 1 || n > 1024) {
      std::fprintf(stderr, "load_gen: concurrency %d out of range 1..1024\n", n);
      return 1;
    }
    run_level(o, n);
  }
  return 0;
}
