// The arithmetic follows llama-perplexity's (floats where it uses floats, the same order, no
// contraction) so that its base files and ours give the same figures to the printed digits.
#pragma GCC optimize("fp-contract=off")
#include "analysis/kl_divergence.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace mixtral::analysis {

namespace {

constexpr char kMagic[8] = {'_', 'l', 'o', 'g', 'i', 't', 's', '_'};
constexpr int64_t kHeaderBytes = 8 + 3 * 4;
// Bounds that keep a hostile header from asking for absurd allocations.
constexpr int64_t kMaxVocab = int64_t(1) << 24, kMaxCtx = int64_t(1) << 24;
// Below this log-probability a base entry adds nothing to the KL sum (p < e^-16).
constexpr float kLogProbFloor = -16.f;

float row_float(const uint16_t* row, int i) {
  float f;
  std::memcpy(&f, row + 2 * i, sizeof f);
  return f;
}

int64_t window_row_words(const KldBaseHeader& h) { return kld_scored_per_window(h.n_ctx) * kld_row_words(h.n_vocab); }

}  // namespace

double encode_log_probs(const float* z, int64_t n_vocab, int32_t target, uint16_t* row) {
  float hi = z[0], lo = z[0];
  for (int64_t v = 1; v < n_vocab; ++v) {
    hi = std::max(hi, z[v]);
    lo = std::min(lo, z[v]);
  }
  lo = std::max(lo, hi - 16);
  double sum = 0;
  for (int64_t v = 0; v < n_vocab; ++v) sum += std::exp(z[v] - hi);
  const float lse = float(std::log(sum));
  const float floor_log_prob = lo - hi - lse;
  const float scale = (hi - lo) / 65535.f;
  std::memcpy(row, &scale, sizeof scale);
  std::memcpy(row + 2, &floor_log_prob, sizeof floor_log_prob);
  uint16_t* q = row + 4;
  std::fill(q, q + (kld_row_words(n_vocab) - 4), uint16_t(0));
  if (scale != 0) {
    const float inv = 1 / scale;
    for (int64_t v = 0; v < n_vocab; ++v) {
      if (!(z[v] > lo)) continue;
      const float r = std::nearbyint(inv * (z[v] - lo));  // round half to even, as ggml's nearest_int
      q[v] = uint16_t(std::clamp(r, 0.f, 65535.f));
    }
  }
  return hi + lse - z[target];
}

float decoded_log_prob(const uint16_t* row, int64_t v) { return row_float(row, 0) * row[4 + v] + row_float(row, 1); }

// ---- base file ----------------------------------------------------------------------------

KldBaseWriter::KldBaseWriter(const std::string& path, const KldBaseHeader& h) : path_(path), h_(h) {
  if (h.n_ctx < 3 || h.n_vocab < 1 || h.n_chunks < 1 || int64_t(h.tokens.size()) != int64_t(h.n_chunks) * h.n_ctx)
    fail(path, "inconsistent KL-divergence base header");
  out_.open(path, std::ios::binary | std::ios::trunc);
  if (!out_) fail(path, "cannot create the KL-divergence base file");
  out_.write(kMagic, sizeof kMagic);
  for (int32_t x : {h.n_ctx, h.n_vocab, h.n_chunks}) out_.write(reinterpret_cast<const char*>(&x), sizeof x);
  out_.write(reinterpret_cast<const char*>(h.tokens.data()), std::streamsize(h.tokens.size() * sizeof(int32_t)));
  if (!out_) fail(path, "write failed");
}

void KldBaseWriter::write_window(const std::vector<uint16_t>& rows) {
  if (int64_t(rows.size()) != window_row_words(h_) || written_ >= h_.n_chunks)
    fail(path_, "KL-divergence base window of the wrong size, or one too many");
  out_.write(reinterpret_cast<const char*>(rows.data()), std::streamsize(rows.size() * sizeof(uint16_t)));
  if (!out_) fail(path_, "write failed");
  ++written_;
}

void KldBaseWriter::close() {
  if (written_ != h_.n_chunks)
    fail(path_, std::to_string(written_) + " of " + std::to_string(h_.n_chunks) + " windows written");
  out_.close();
  if (!out_) fail(path_, "write failed");
}

KldBaseReader::KldBaseReader(const std::string& path) : path_(path) {
  const std::string what = "not a KL-divergence base file (llama-perplexity --kl-divergence-base)";
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) fail(path, "cannot read the KL-divergence base file");
  in_.open(path, std::ios::binary);
  if (!in_) fail(path, "cannot read the KL-divergence base file");
  char magic[8] = {};
  int32_t dims[3] = {};
  in_.read(magic, sizeof magic);
  in_.read(reinterpret_cast<char*>(dims), sizeof dims);
  if (!in_ || std::memcmp(magic, kMagic, sizeof kMagic) != 0) fail(path, what);
  h_.n_ctx = dims[0];
  h_.n_vocab = dims[1];
  h_.n_chunks = dims[2];
  if (h_.n_ctx < 3 || h_.n_ctx > kMaxCtx || h_.n_vocab < 1 || h_.n_vocab > kMaxVocab || h_.n_chunks < 1)
    fail(path, what + ": bad header (n_ctx " + std::to_string(h_.n_ctx) + ", n_vocab " + std::to_string(h_.n_vocab) +
                   ", windows " + std::to_string(h_.n_chunks) + ")");
  // per_window < 2^50 (n_ctx, n_vocab <= 2^24); bounding n_chunks by the file's size first keeps
  // the product below from overflowing.
  const int64_t per_window = int64_t(h_.n_ctx) * 4 + window_row_words(h_) * 2;
  if (int64_t(size) < kHeaderBytes || int64_t(h_.n_chunks) > (int64_t(size) - kHeaderBytes) / per_window)
    fail(path, "truncated KL-divergence base file: " + std::to_string(size) + " bytes cannot hold the " +
                   std::to_string(h_.n_chunks) + " windows of n_ctx " + std::to_string(h_.n_ctx) + ", n_vocab " +
                   std::to_string(h_.n_vocab) + " its header announces");
  const int64_t expected = kHeaderBytes + per_window * h_.n_chunks;
  if (int64_t(size) != expected)
    fail(path, std::string(int64_t(size) < expected ? "truncated" : "oversized") + " KL-divergence base file: " +
                   std::to_string(size) + " bytes, the header (n_ctx " + std::to_string(h_.n_ctx) + ", n_vocab " +
                   std::to_string(h_.n_vocab) + ", " + std::to_string(h_.n_chunks) + " windows) implies " +
                   std::to_string(expected));
  h_.tokens.resize(size_t(h_.n_chunks) * size_t(h_.n_ctx));
  in_.read(reinterpret_cast<char*>(h_.tokens.data()), std::streamsize(h_.tokens.size() * sizeof(int32_t)));
  if (!in_) fail(path, "cannot read the tokens of the KL-divergence base file");
  for (size_t i = 0; i < h_.tokens.size(); ++i)
    if (h_.tokens[i] < 0 || h_.tokens[i] >= h_.n_vocab)
      fail(path, "token " + std::to_string(i) + " (" + std::to_string(h_.tokens[i]) + ") is outside the vocabulary of " +
                     std::to_string(h_.n_vocab));
}

void KldBaseReader::read_window(int32_t i, std::vector<uint16_t>& rows) {
  if (i != next_ || i >= h_.n_chunks) fail(path_, "KL-divergence base windows must be read in order");
  rows.resize(size_t(window_row_words(h_)));
  in_.read(reinterpret_cast<char*>(rows.data()), std::streamsize(rows.size() * sizeof(uint16_t)));
  if (!in_) fail(path_, "cannot read window " + std::to_string(i) + " of the KL-divergence base file");
  const int64_t words = kld_row_words(h_.n_vocab);
  for (int64_t r = 0; r < kld_scored_per_window(h_.n_ctx); ++r) {
    const float scale = row_float(rows.data() + r * words, 0), offset = row_float(rows.data() + r * words, 1);
    if (!std::isfinite(scale) || !std::isfinite(offset) || scale < 0 || offset > 0)
      fail(path_, "window " + std::to_string(i) + " position " + std::to_string(r) +
                      ": corrupt log-probabilities (scale " + std::to_string(scale) + ", offset " +
                      std::to_string(offset) + ")");
  }
  ++next_;
}

// ---- statistics ---------------------------------------------------------------------------

MeanError mean_and_error(double sum, double sum2, int64_t count) {
  if (count < 1) return {};
  const double mean = sum / double(count), var = sum2 / double(count) - mean * mean;
  return {mean, var > 0 && count > 10 ? std::sqrt(var / double(count - 1)) : 0.0};
}

double covariance_of_means(double sum_a, double sum_b, double sum_ab, int64_t count) {
  if (count < 10) return 0;
  const double n = double(count);
  return (sum_ab / n - (sum_a / n) * (sum_b / n)) / (n - 1);
}

double percentile(const std::vector<float>& sorted, double fraction) {
  if (sorted.empty()) return 0;
  if (fraction <= 0) return sorted.front();
  if (fraction >= 1) return sorted.back();
  const double p = fraction * double(sorted.size() - 1);
  const size_t i = size_t(p);
  const double t = p - double(i);
  return (1 - t) * sorted[i] + t * sorted[std::min(i + 1, sorted.size() - 1)];
}

double median(const std::vector<float>& sorted) {
  const size_t n = sorted.size();
  if (n == 0) return 0;
  return n % 2 ? sorted[n / 2] : 0.5 * (double(sorted[n / 2 - 1]) + double(sorted[n / 2]));
}

// ---- comparison ---------------------------------------------------------------------------

double KldAccumulator::add(const float* z, const uint16_t* base_row, int64_t n_vocab, int32_t target) {
  float hi = z[0];
  int64_t top = 0;
  for (int64_t v = 1; v < n_vocab; ++v)
    if (z[v] > hi) {
      hi = z[v];
      top = v;
    }
  double sum = 0;
  for (int64_t v = 0; v < n_vocab; ++v) sum += std::exp(z[v] - hi);
  const float lse = float(std::log(sum));
  const float scale = row_float(base_row, 0), offset = row_float(base_row, 1);
  const uint16_t* q = base_row + 4;

  const float nll = hi + lse - z[target];
  const float nll_base = -(scale * q[target] + offset);
  sum_nll_ += nll;
  sum_nll2_ += nll * nll;
  sum_nll_base_ += nll_base;
  sum_nll_base2_ += nll_base * nll_base;
  sum_nll_nll_base_ += nll * nll_base;

  // KL(base ‖ model) = Σ p_base · (log p_base − log p_model), log p_model = z − (hi + lse).
  const float log_norm = hi + lse;
  double kl = 0;
  int64_t top_base = 0;
  float best = 0;
  for (int64_t v = 0; v < n_vocab; ++v) {
    const float lp = scale * q[v] + offset;
    if (v == 0 || lp > best) {
      best = lp;
      top_base = v;
    }
    if (lp > kLogProbFloor) {
      const float p = std::exp(lp);
      kl += p * (lp - z[v] + log_norm);
    }
  }
  sum_kld_ += kl;
  sum_kld2_ += kl * kl;
  ++count_;
  if (top == top_base) ++same_top_;

  const float p_diff = std::exp(-nll) - std::exp(-nll_base);
  sum_p_diff_ += p_diff;
  const double p_diff2 = p_diff * p_diff;
  sum_p_diff2_ += p_diff2;
  sum_p_diff4_ += p_diff2 * p_diff2;
  max_p_diff_ = std::max(max_p_diff_, std::fabs(p_diff));
  kld_values_.push_back(float(kl));
  return kl;
}

KldAccumulator::Summary KldAccumulator::summary() const {
  Summary s;
  s.count = count_;
  if (count_ == 0) return s;
  const MeanError ln_ppl = mean_and_error(sum_nll_, sum_nll2_, count_);
  const MeanError ln_base = mean_and_error(sum_nll_base_, sum_nll_base2_, count_);
  s.ppl = {std::exp(ln_ppl.mean), std::exp(ln_ppl.mean) * ln_ppl.error};
  s.ppl_base = {std::exp(ln_base.mean), std::exp(ln_base.mean) * ln_base.error};
  const double cov = covariance_of_means(sum_nll_, sum_nll_base_, sum_nll_nll_base_, count_);
  const double err_product = ln_ppl.error * ln_base.error;
  s.ln_ppl_correlation = err_product > 0 ? cov / err_product : 0;
  s.ln_ppl_ratio = {ln_ppl.mean - ln_base.mean,
                    std::sqrt(std::max(0.0, ln_ppl.error * ln_ppl.error + ln_base.error * ln_base.error - 2 * cov))};
  s.ppl_ratio = {std::exp(s.ln_ppl_ratio.mean), std::exp(s.ln_ppl_ratio.mean) * s.ln_ppl_ratio.error};
  const double ppl_cov = s.ppl.mean * s.ppl_base.mean * cov;
  s.ppl_diff = {s.ppl.mean - s.ppl_base.mean,
                std::sqrt(std::max(0.0, s.ppl.error * s.ppl.error + s.ppl_base.error * s.ppl_base.error - 2 * ppl_cov))};

  s.kld = mean_and_error(sum_kld_, sum_kld2_, count_);
  std::vector<float> sorted = kld_values_;
  std::sort(sorted.begin(), sorted.end());
  s.kld_max = sorted.back();
  s.kld_p999 = percentile(sorted, 0.999);
  s.kld_p99 = percentile(sorted, 0.99);
  s.kld_median = median(sorted);
  s.kld_p10 = percentile(sorted, 0.10);
  s.kld_p5 = percentile(sorted, 0.05);
  s.kld_p1 = percentile(sorted, 0.01);
  s.kld_min = sorted.front();

  s.p_diff = mean_and_error(sum_p_diff_, sum_p_diff2_, count_);
  const MeanError mse = mean_and_error(sum_p_diff2_, sum_p_diff4_, count_);
  const double rms = std::sqrt(mse.mean);
  s.p_diff_rms = {rms, rms > 0 ? 0.5 / rms * mse.error : 0.0};
  s.p_diff_max = max_p_diff_;
  const double p = double(same_top_) / double(count_);
  s.same_top = {p, count_ > 1 ? std::sqrt(p * (1 - p) / double(count_ - 1)) : 0.0};
  return s;
}

}  // namespace mixtral::analysis
