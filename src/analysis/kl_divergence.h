// KL-divergence of a model under test against a reference, llama-perplexity's way and in its
// base-file format, so that a base written by either program can be compared by the other.
//
// The base file ("_logits_" file) holds, after a header, the tokens of the text and, for every
// scored position of every window, the reference's log-probabilities over the whole vocabulary
// in a compact form: a float scale s and a float offset m (4 uint16 words), then one uint16 q[v]
// per vocabulary entry (padded to an even count), log p[v] ≈ s·q[v] + m. Logits more than 16
// below the maximum are all stored as the floor (q = 0): their probabilities are < e^-16 and
// the KL sum skips them.
//
//   char[8]  "_logits_"
//   int32    n_ctx      window length; windows are scored at positions n_ctx/2 .. n_ctx-2
//   int32    n_vocab
//   int32    n_chunks   windows
//   int32    tokens[n_chunks · n_ctx]    the text's tokens (not <s>-substituted)
//   per window, per scored position: uint16 row[row_words(n_vocab)]
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace mixtral::analysis {

// uint16 words of one position's compact log-probabilities: 4 (two floats) + n_vocab rounded up to even.
inline int64_t kld_row_words(int64_t n_vocab) { return 2 * ((n_vocab + 1) / 2) + 4; }

// Positions of one window that are scored: n_ctx/2 .. n_ctx-2 (each predicts the next token).
inline int64_t kld_scored_per_window(int64_t n_ctx) { return n_ctx - 1 - n_ctx / 2; }

// Encodes the log-softmax of `logits` into `row` (kld_row_words words) and returns the negative
// log-likelihood of `target`.
double encode_log_probs(const float* logits, int64_t n_vocab, int32_t target, uint16_t* row);

// log p[v] of an encoded row.
float decoded_log_prob(const uint16_t* row, int64_t v);

struct KldBaseHeader {
  int32_t n_ctx = 0, n_vocab = 0, n_chunks = 0;
  std::vector<int32_t> tokens;  // n_chunks · n_ctx
};

// Writes a base file window by window; close() checks that every window was written.
class KldBaseWriter {
 public:
  KldBaseWriter(const std::string& path, const KldBaseHeader& h);
  // One window's rows: kld_scored_per_window(n_ctx) · kld_row_words(n_vocab) words.
  void write_window(const std::vector<uint16_t>& rows);
  void close();

 private:
  std::string path_;
  KldBaseHeader h_;
  std::ofstream out_;
  int32_t written_ = 0;
};

// Reads a base file; the constructor validates the header, the tokens and the file's exact size
// (a truncated, padded or hostile file is an Error naming the file), read_window() the rows.
class KldBaseReader {
 public:
  explicit KldBaseReader(const std::string& path);
  const KldBaseHeader& header() const { return h_; }
  // Window `i` (in order from 0): kld_scored_per_window · kld_row_words words.
  void read_window(int32_t i, std::vector<uint16_t>& rows);

 private:
  std::string path_;
  KldBaseHeader h_;
  std::ifstream in_;
  int32_t next_ = 0;
};

// Mean of values whose sum and sum of squares are given, and the standard error of that mean
// (sample variance / (count-1)); the error is 0 for 10 or fewer values, as llama-perplexity reports.
struct MeanError {
  double mean = 0, error = 0;
};
MeanError mean_and_error(double sum, double sum2, int64_t count);
// Covariance of the means of a and b (0 for fewer than 10 values).
double covariance_of_means(double sum_a, double sum_b, double sum_ab, int64_t count);
// The value at `fraction` (0..1) of sorted values, interpolated linearly between neighbours.
double percentile(const std::vector<float>& sorted, double fraction);
// The middle value (mean of the two middle ones for an even count).
double median(const std::vector<float>& sorted);

// Running sums of the comparison, one position at a time.
class KldAccumulator {
 public:
  // Compares the model's logits at one position against the base's encoded row there; `target`
  // is the token that follows. Returns that position's KL(base ‖ model).
  double add(const float* logits, const uint16_t* base_row, int64_t n_vocab, int32_t target);

  int64_t count() const { return count_; }

  struct Summary {
    int64_t count = 0;
    MeanError ppl, ppl_base;          // perplexities with their errors
    double ln_ppl_correlation = 0;    // of the two models' per-token log-likelihoods
    MeanError ln_ppl_ratio, ppl_ratio, ppl_diff;
    MeanError kld;
    double kld_max = 0, kld_p999 = 0, kld_p99 = 0, kld_median = 0, kld_p10 = 0, kld_p5 = 0, kld_p1 = 0, kld_min = 0;
    MeanError p_diff;                 // mean of p(target) − p_base(target)
    MeanError p_diff_rms;
    double p_diff_max = 0;            // largest |Δp|
    MeanError same_top;               // fraction of positions with the same most likely token
  };
  Summary summary() const;

 private:
  double sum_nll_ = 0, sum_nll2_ = 0, sum_nll_base_ = 0, sum_nll_base2_ = 0, sum_nll_nll_base_ = 0;
  double sum_kld_ = 0, sum_kld2_ = 0, sum_p_diff_ = 0, sum_p_diff2_ = 0, sum_p_diff4_ = 0;
  float max_p_diff_ = 0;
  int64_t same_top_ = 0, count_ = 0;
  std::vector<float> kld_values_;
};

}  // namespace mixtral::analysis
