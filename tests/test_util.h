// Shared helpers for tests: where ../shared and the generated fixture models are, and the rule
// for when they are absent (skip with a message; fail when CI=true).
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace mixtral::testing {

inline std::string shared_dir() { return MIXTRAL_SHARED_DIR; }
inline std::string fixtures_dir() { return MIXTRAL_FIXTURES_DIR; }
// A fixture model by its path under fixtures_dir(), e.g. "gguf/tiny-q8_0.gguf".
inline std::string fixture(const std::string& rel) { return fixtures_dir() + "/" + rel; }
inline std::string mixtral_bin() { return MIXTRAL_BIN; }
inline bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// ‖a − b‖₂ / ‖b‖₂ over n values, in double.
inline double rel_l2(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace mixtral::testing

// Skips the test when `path` (a file or folder from ../shared or the fixtures built from it) is
// missing; under CI=true a missing path is a failure instead.
#define REQUIRE_PATH(path)                                                                   \
  do {                                                                                       \
    const std::string _p = (path);                                                           \
    if (!std::filesystem::exists(_p)) {                                                      \
      if (::mixtral::testing::in_ci()) FAIL() << "required reference data missing: " << _p;  \
      GTEST_SKIP() << "reference data missing (../shared absent?): " << _p;                  \
    }                                                                                        \
  } while (0)
