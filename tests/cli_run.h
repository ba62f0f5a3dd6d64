// Runs the `mixtral` binary from a test: `mixtral ARGS...` with a time limit, stdout and stderr
// captured; scratch files in a per-process directory removed when the process ends.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "test_util.h"

namespace mixtral::testing {

struct CliResult {
  int status = -1;
  std::string out, err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// A file name in this test process's scratch directory.
inline std::string scratch_path(const std::string& name) {
  struct Dir {
    const std::string path = ::testing::TempDir() + "/mixtral-cli-run-" + std::to_string(::getpid());
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir;
  std::filesystem::create_directories(dir.path);
  return dir.path + "/" + name;
}

inline CliResult run_mixtral(const std::vector<std::string>& args, int timeout_s = 300) {
  const std::string out = scratch_path("stdout"), err = scratch_path("stderr");
  std::string cmd = "timeout " + std::to_string(timeout_s) + " " + shell_quote(mixtral_bin());
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " </dev/null >" + shell_quote(out) + " 2>" + shell_quote(err);
  const int raw = std::system(cmd.c_str());
  CliResult r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

}  // namespace mixtral::testing
