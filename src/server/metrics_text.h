// Prometheus text exposition (format 0.0.4) of the engine's metrics and the server's HTTP
// counters, for GET /metrics. Pure functions: what is rendered is exactly what was passed in.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "engine/engine.h"

namespace mixtral::server {

// HTTP responses by (route, status). Routes are the server's fixed set plus "other", so the
// number of series stays bounded whatever paths clients try.
using HttpCounts = std::map<std::pair<std::string, int>, uint64_t>;

std::string render_metrics(const EngineMetrics& m, const HttpCounts& http);

// One histogram in Prometheus' cumulative form: NAME_bucket{le="..."}, NAME_sum, NAME_count.
std::string render_histogram(const std::string& name, const std::string& help, const Histogram& h);

}  // namespace mixtral::server
