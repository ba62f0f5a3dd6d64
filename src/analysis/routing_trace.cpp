#include "analysis/routing_trace.h"

#include <bit>
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/error.h"

namespace mixtral::analysis {

// The file stores little-endian values by copying host bytes; a big-endian port would need swaps.
static_assert(std::endian::native == std::endian::little, "trace files are written in host byte order");

namespace {

constexpr char kMagic[8] = {'M', 'X', 'R', 'O', 'U', 'T', 'E', 'S'};
constexpr uint32_t kVersion = 1;
constexpr int64_t kFixedHeader = 36;  // magic, version, n_layers, n_experts, k, n_rows, n_domains
constexpr int64_t kRecordFixed = 16;  // window, token, pos, domain, reserved

int64_t record_bytes(int64_t n_layers, int64_t k) { return kRecordFixed + 6 * n_layers * k; }

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// Bounds-checked reads from the whole file in memory.
struct Reader {
  const std::string& bytes;
  const std::string& path;
  size_t at = 0;
  template <typename T>
  T get(const char* what) {
    if (bytes.size() - at < sizeof(T)) fail(path, std::string("truncated trace (in ") + what + ")");
    T v;
    std::memcpy(&v, bytes.data() + at, sizeof v);
    at += sizeof v;
    return v;
  }
};

}  // namespace

TraceRecorder::TraceRecorder(const Config& c, std::vector<std::string> domains) {
  if (!c.is_moe()) fail("routing trace", "the model is dense: it has no router to observe");
  if (c.n_experts > 65535) fail("routing trace", "more than 65,535 experts do not fit the trace's u16 ids");
  if (domains.size() > 65535) fail("routing trace", "more than 65,535 domains");
  trace_.n_layers = c.n_layers;
  trace_.n_experts = c.n_experts;
  trace_.k = c.n_experts_used;
  trace_.domains = std::move(domains);
}

void TraceRecorder::begin_window(int64_t domain) {
  if (domain < 0 || domain >= int64_t(trace_.domains.size())) fail("routing trace", "domain index out of range");
  if (next_layer_ != 0) fail("routing trace", "a new window began in the middle of a forward pass");
  domain_ = domain;
  ++window_;
}

void TraceRecorder::on_route(int64_t layer, const Batch& b, int64_t k, int64_t n_experts, const int32_t* experts,
                             const float* weights, const float* /*logits*/) {
  RouteTrace& t = trace_;
  // The checks guard the row bookkeeping below: a caller that breaks the layer order would
  // otherwise silently mix the decisions of different tokens.
  if (domain_ < 0) fail("routing trace", "begin_window() was not called before the first forward pass");
  if (k != t.k || n_experts != t.n_experts) fail("routing trace", "the router's shape differs from the model config");
  if (layer != next_layer_) fail("routing trace", "layers observed out of order");
  const int64_t T = b.size(), L = t.n_layers;
  if (layer == 0) {
    chunk_begin_ = t.rows();
    for (int64_t i = 0; i < T; ++i) {
      t.window.push_back(uint32_t(window_));
      t.token.push_back(b.token[size_t(i)]);
      t.pos.push_back(b.pos[size_t(i)]);
      t.domain.push_back(uint16_t(domain_));
    }
    t.experts.resize(size_t(t.rows() * L * k));
    t.weights.resize(size_t(t.rows() * L * k));
  } else if (t.rows() - chunk_begin_ != T) {
    fail("routing trace", "batch size changed between layers of one forward pass");
  }
  for (int64_t i = 0; i < T; ++i) {
    const size_t dst = size_t(((chunk_begin_ + i) * L + layer) * k);
    for (int64_t r = 0; r < k; ++r) {
      t.experts[dst + size_t(r)] = uint16_t(experts[i * k + r]);
      t.weights[dst + size_t(r)] = weights[i * k + r];
    }
  }
  next_layer_ = (layer + 1 == L) ? 0 : layer + 1;
}

void write_trace(const std::string& path, const RouteTrace& t) {
  const int64_t n = t.rows(), per = t.n_layers * t.k;
  if (int64_t(t.window.size()) != n || int64_t(t.pos.size()) != n || int64_t(t.domain.size()) != n ||
      int64_t(t.experts.size()) != n * per || int64_t(t.weights.size()) != n * per)
    fail(path, "inconsistent trace (column lengths differ)");
  std::string head;
  head.append(kMagic, sizeof kMagic);
  put(head, kVersion);
  put(head, uint32_t(t.n_layers));
  put(head, uint32_t(t.n_experts));
  put(head, uint32_t(t.k));
  put(head, uint64_t(n));
  put(head, uint32_t(t.domains.size()));
  for (const auto& d : t.domains) {
    put(head, uint32_t(d.size()));
    head += d;
  }
  std::ofstream out(path, std::ios::binary);
  if (!out) fail(path, "cannot open for writing");
  out.write(head.data(), std::streamsize(head.size()));
  // Records are assembled in blocks so that a long trace costs a few large writes.
  std::string block;
  for (int64_t r = 0; r < n; ++r) {
    put(block, t.window[size_t(r)]);
    put(block, t.token[size_t(r)]);
    put(block, t.pos[size_t(r)]);
    put(block, t.domain[size_t(r)]);
    put(block, uint16_t(0));
    block.append(reinterpret_cast<const char*>(t.experts_at(r, 0)), size_t(per) * sizeof(uint16_t));
    block.append(reinterpret_cast<const char*>(t.weights_at(r, 0)), size_t(per) * sizeof(float));
    if (block.size() >= (1u << 20) || r + 1 == n) {
      out.write(block.data(), std::streamsize(block.size()));
      block.clear();
    }
  }
  if (!out.flush()) fail(path, "write failed");
}

RouteTrace read_trace(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open trace");
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  Reader rd{bytes, path};
  if (bytes.size() < size_t(kFixedHeader) || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0)
    fail(path, "not a routing trace (bad magic)");
  rd.at = sizeof kMagic;
  if (const uint32_t v = rd.get<uint32_t>("header"); v != kVersion)
    fail(path, "unsupported trace version " + std::to_string(v));
  RouteTrace t;
  t.n_layers = rd.get<uint32_t>("header");
  t.n_experts = rd.get<uint32_t>("header");
  t.k = rd.get<uint32_t>("header");
  const uint64_t n = rd.get<uint64_t>("header");
  const uint32_t n_domains = rd.get<uint32_t>("header");
  if (t.n_layers < 1 || t.n_layers > 65536 || t.n_experts < 1 || t.n_experts > 65535 || t.k < 1 || t.k > t.n_experts)
    fail(path, "implausible trace shape");
  if (n_domains > 65535) fail(path, "implausible domain count");
  for (uint32_t d = 0; d < n_domains; ++d) {
    const uint32_t len = rd.get<uint32_t>("domain names");
    if (bytes.size() - rd.at < len) fail(path, "truncated trace (in domain names)");
    t.domains.emplace_back(bytes.data() + rd.at, len);
    rd.at += len;
  }
  // Size check before allocating: n comes from the file.
  const uint64_t rec = uint64_t(record_bytes(t.n_layers, t.k));
  const uint64_t body = bytes.size() - rd.at;
  if (body / rec != n || body % rec != 0)
    fail(path, "trace body has " + std::to_string(body) + " bytes, expected " + std::to_string(n) + " records of " +
                   std::to_string(rec));
  const size_t per = size_t(t.n_layers * t.k);
  t.window.resize(n);
  t.token.resize(n);
  t.pos.resize(n);
  t.domain.resize(n);
  t.experts.resize(n * per);
  t.weights.resize(n * per);
  for (uint64_t r = 0; r < n; ++r) {
    t.window[r] = rd.get<uint32_t>("records");
    t.token[r] = rd.get<int32_t>("records");
    t.pos[r] = rd.get<int32_t>("records");
    t.domain[r] = rd.get<uint16_t>("records");
    rd.get<uint16_t>("records");
    if (t.domain[r] >= n_domains) fail(path, "record " + std::to_string(r) + ": domain index out of range");
    std::memcpy(t.experts.data() + r * per, bytes.data() + rd.at, per * sizeof(uint16_t));
    rd.at += per * sizeof(uint16_t);
    std::memcpy(t.weights.data() + r * per, bytes.data() + rd.at, per * sizeof(float));
    rd.at += per * sizeof(float);
    for (size_t i = 0; i < per; ++i)
      if (t.experts[r * per + i] >= t.n_experts)
        fail(path, "record " + std::to_string(r) + ": expert id out of range");
  }
  return t;
}

}  // namespace mixtral::analysis
