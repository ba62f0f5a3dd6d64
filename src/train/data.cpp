#include "train/data.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "train/params.h"

namespace mixtral::train {

namespace fs = std::filesystem;

std::vector<std::string> list_data_files(const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  for (const auto& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<std::string> found;
      for (const auto& e : fs::recursive_directory_iterator(p, fs::directory_options::follow_directory_symlink)) {
        if (!e.is_regular_file() || e.path().filename().string().starts_with(".")) continue;
        found.push_back(e.path().string());
      }
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(p, ec)) {
      out.push_back(p);
    } else {
      fail(p, "no such file or folder");
    }
  }
  if (out.empty()) fail("--data", "no files found");
  return out;
}

Corpus build_corpus(const std::vector<std::string>& files, const Tokenizer& tok, double eval_fraction,
                    ThreadPool& pool) {
  std::vector<std::vector<int32_t>> docs(files.size());
  std::vector<int64_t> bytes(files.size());
  std::vector<std::string> errors(files.size());
  pool.parallel_for(int64_t(files.size()), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      try {
        std::ifstream in(files[size_t(i)], std::ios::binary);
        if (!in) fail(files[size_t(i)], "cannot read");
        const std::string text((std::istreambuf_iterator<char>(in)), {});
        bytes[size_t(i)] = int64_t(text.size());
        docs[size_t(i)] = tok.encode(text, /*add_bos=*/false);
      } catch (const Error& err) {
        errors[size_t(i)] = err.what();
      }
    }
  });
  Corpus c;
  for (size_t i = 0; i < files.size(); ++i) {
    if (!errors[i].empty()) fail(files[i], errors[i]);
    const auto& d = docs[i];
    const size_t n_eval = size_t(double(d.size()) * eval_fraction);
    c.train.push_back(tok.bos());
    c.train.insert(c.train.end(), d.begin(), d.end() - int64_t(n_eval));
    c.train.push_back(tok.eos());
    if (n_eval > 0) {
      c.eval.push_back(tok.bos());
      c.eval.insert(c.eval.end(), d.end() - int64_t(n_eval), d.end());
    }
    c.bytes += bytes[i];
  }
  c.files = int64_t(files.size());
  return c;
}

void sample_batch(const std::vector<int32_t>& stream, int64_t batch, int64_t seq, uint64_t seed, int64_t step,
                  int64_t micro, int32_t* tokens, int32_t* targets) {
  const int64_t n = int64_t(stream.size());
  if (n < seq + 1) fail("training data", "fewer tokens (" + std::to_string(n) + ") than seq_len + 1");
  SplitMix64 rng{seed ^ (uint64_t(step) * 0xD1B54A32D192ED03ull) ^ (uint64_t(micro + 1) * 0x8CB92BA72F3D8DD7ull)};
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = int64_t(rng.next() % uint64_t(n - seq));
    for (int64_t i = 0; i < seq; ++i) {
      tokens[b * seq + i] = stream[size_t(start + i)];
      targets[b * seq + i] = stream[size_t(start + i + 1)];
    }
  }
}

void eval_batch(const std::vector<int32_t>& stream, int64_t batch, int64_t seq, int64_t index, int32_t* tokens,
                int32_t* targets) {
  const int64_t n = int64_t(stream.size());
  if (n < seq + 1) fail("held-out data", "fewer tokens (" + std::to_string(n) + ") than seq_len + 1");
  const int64_t windows = (n - 1) / seq;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = ((index * batch + b) % windows) * seq;
    for (int64_t i = 0; i < seq; ++i) {
      tokens[b * seq + i] = stream[size_t(start + i)];
      targets[b * seq + i] = stream[size_t(start + i + 1)];
    }
  }
}

}  // namespace mixtral::train
