#include "model/kv_cache.h"

#include <unistd.h>

#include "core/error.h"

namespace mixtral {

KVCache::KVCache(const Config& c, int n_seq, int64_t n_ctx) : n_seq_(n_seq), n_ctx_(n_ctx), kv_dim_(c.kv_dim()) {
  if (n_seq < 1) fail("kv cache", "needs at least one sequence");
  if (n_ctx < 1 || n_ctx > c.max_context)
    fail("--ctx-size", std::to_string(n_ctx) + " is outside [1, " + std::to_string(c.max_context) + "] (the model's context)");
  const double bytes = 2.0 * double(c.n_layers) * n_seq * double(n_ctx) * double(kv_dim_) * sizeof(float);
  const double ram = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  if (bytes > 0.9 * ram)
    fail("--ctx-size", "a KV cache for " + std::to_string(n_ctx) + " positions needs " +
                           std::to_string(int64_t(bytes / (1 << 20))) + " MiB, more than this machine has");
  const size_t n = size_t(c.n_layers) * size_t(n_seq) * size_t(n_ctx) * size_t(kv_dim_);
  n_elems_ = n;
  k_.reset(new float[n]);
  v_.reset(new float[n]);
}

}  // namespace mixtral
