// Routing traces: every router decision of a run — per evaluated token and per layer, the
// chosen experts and their weights — recorded by a RoutingObserver, kept in memory and written
// to / read from a small binary file.
//
// The recorder assumes what `mixtral routes` does: text is evaluated window by window through
// one Session (one sequence, KV cache reset per window), so every forward pass calls on_route
// for layers 0, 1, …, n_layers-1 with the same batch, and batches of one window arrive in order.
//
// Trace file, version 1 (all integers little-endian; floats IEEE-754 binary32 little-endian):
//
//   offset  size  field
//   0       8     magic "MXROUTES"
//   8       4     u32 version = 1
//   12      4     u32 n_layers
//   16      4     u32 n_experts
//   20      4     u32 k                 experts per token (top-k)
//   24      8     u64 n_rows            tokens recorded
//   32      4     u32 n_domains
//   36      …     n_domains × { u32 byte length, UTF-8 name }
//   then n_rows fixed-size records of 16 + 6·n_layers·k bytes, in evaluation order:
//           u32 window                  index of the window (sequence) the token belongs to
//           i32 token                   token id
//           i32 pos                     position in its window (0 = the window's BOS)
//           u16 domain                  index into the domain names
//           u16 reserved (0)
//           u16 experts[n_layers][k]    rank order: first choice first
//           f32 weights[n_layers][k]    softmax over the k chosen logits (each row sums to 1)
//
// The records have a fixed size so that numpy reads them in one call (docs/ROUTING.md shows how).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/routing.h"

namespace mixtral::analysis {

// The decisions of a run, one row per evaluated token, in evaluation order.
struct RouteTrace {
  int64_t n_layers = 0, n_experts = 0, k = 0;
  std::vector<std::string> domains;
  std::vector<uint32_t> window;   // [rows]
  std::vector<int32_t> token;     // [rows]
  std::vector<int32_t> pos;       // [rows]
  std::vector<uint16_t> domain;   // [rows]
  std::vector<uint16_t> experts;  // [rows][n_layers][k]
  std::vector<float> weights;     // [rows][n_layers][k]

  int64_t rows() const { return int64_t(token.size()); }
  // The k decisions of `row` at `layer`, first choice first.
  const uint16_t* experts_at(int64_t row, int64_t layer) const { return experts.data() + (row * n_layers + layer) * k; }
  const float* weights_at(int64_t row, int64_t layer) const { return weights.data() + (row * n_layers + layer) * k; }
  bool operator==(const RouteTrace&) const = default;
};

// Records every routing decision of a Session into a RouteTrace. Call begin_window() before
// evaluating each window; rows get that window's index and the domain given.
class TraceRecorder final : public RoutingObserver {
 public:
  // Throws Error for a dense model (there is no router) or more than 65,535 experts/domains.
  TraceRecorder(const Config& config, std::vector<std::string> domains);

  void begin_window(int64_t domain);
  void on_route(int64_t layer, const Batch& batch, int64_t k, int64_t n_experts, const int32_t* experts,
                const float* weights, const float* logits) override;

  const RouteTrace& trace() const { return trace_; }
  RouteTrace take() { return std::move(trace_); }

 private:
  RouteTrace trace_;
  int64_t domain_ = -1;
  int64_t window_ = -1;
  int64_t chunk_begin_ = 0;  // first row of the batch being evaluated
  int64_t next_layer_ = 0;   // the layer on_route expects next
};

// Writes the trace in the format above. Throws Error naming the path on failure.
void write_trace(const std::string& path, const RouteTrace& trace);
// Reads and validates a trace file (magic, version, bounds, exact size, expert ids < n_experts,
// domain ids < n_domains). Throws Error naming the path and the problem.
RouteTrace read_trace(const std::string& path);

}  // namespace mixtral::analysis
