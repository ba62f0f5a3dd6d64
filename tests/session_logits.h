// Logits of a teacher-forced run, for tests that compare ways of loading or running a model bit
// for bit (expert cache, weight tiles).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "engine/session.h"

namespace mixtral {

// Prefill all but the last n_decode tokens in chunks of 7 (several tokens per expert, grouped),
// then the last n_decode one at a time: every logit of every step, concatenated.
inline std::vector<float> teacher_forced_logits(const Model& m, const std::vector<int32_t>& tokens, size_t n_decode,
                                                int threads = 2) {
  Session s(m, {128, 7, threads});
  std::vector<float> all;
  const size_t n_prompt = tokens.size() - n_decode;
  for (size_t i = 0; i < n_prompt; i += 7) {
    const std::vector<int32_t> chunk(tokens.begin() + long(i), tokens.begin() + long(std::min(n_prompt, i + 7)));
    const auto& l = s.eval(chunk, true);
    all.insert(all.end(), l.begin(), l.end());
  }
  for (size_t i = n_prompt; i < tokens.size(); ++i) {
    const auto& l = s.eval({tokens[i]});
    all.insert(all.end(), l.begin(), l.end());
  }
  return all;
}

inline void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what << ": logits differ";
}

}  // namespace mixtral
