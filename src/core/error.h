// Errors: every failure the user can cause (a bad file, a bad prompt, a bad flag) is an
// mixtral::Error carrying one line that names the thing and the problem. Frontends catch it,
// print it and exit non-zero; nothing below them prints or exits.
#pragma once
#include <stdexcept>
#include <string>

namespace mixtral {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws Error("<where>: <what>").
[[noreturn]] inline void fail(const std::string& where, const std::string& what) {
  throw Error(where.empty() ? what : where + ": " + what);
}

}  // namespace mixtral
