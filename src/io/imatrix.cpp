#include "io/imatrix.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/error.h"

namespace mixtral {

const ImatrixEntry* Imatrix::find(const std::string& name) const {
  for (const ImatrixEntry& e : entries)
    if (e.name == name) return &e;
  return nullptr;
}

namespace {

struct Reader {
  const std::string& path;
  const std::vector<char>& b;
  size_t pos = 0;
  bool at_end() const { return pos == b.size(); }
  void need(size_t n, const char* what) {
    if (b.size() - pos < n) fail(path, std::string("imatrix file ends inside ") + what);
  }
  int32_t i32(const char* what) {
    need(4, what);
    int32_t v;
    std::memcpy(&v, b.data() + pos, 4);
    pos += 4;
    return v;
  }
  std::string bytes(int32_t n, const char* what) {
    if (n < 0 || n > (1 << 20)) fail(path, std::string("imatrix ") + what + " has a bad length " + std::to_string(n));
    need(size_t(n), what);
    std::string s(b.data() + pos, size_t(n));
    pos += size_t(n);
    return s;
  }
};

}  // namespace

Imatrix read_imatrix(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open the importance matrix");
  const std::vector<char> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Reader r{path, b};
  const int32_t n = r.i32("the entry count");
  if (n <= 0 || size_t(n) > b.size() / 12) fail(path, "imatrix has a bad entry count " + std::to_string(n));
  Imatrix m;
  for (int32_t i = 0; i < n; ++i) {
    ImatrixEntry e;
    e.name = r.bytes(r.i32("an entry name length"), "an entry name");
    e.ncall = r.i32("an entry's call count");
    const int32_t nval = r.i32("an entry's value count");
    if (nval <= 0 || size_t(nval) > (b.size() - r.pos) / 4)
      fail(path, "imatrix entry " + e.name + " has a bad value count " + std::to_string(nval));
    e.values.resize(size_t(nval));
    std::memcpy(e.values.data(), b.data() + r.pos, 4 * size_t(nval));
    r.pos += 4 * size_t(nval);
    for (float v : e.values)
      if (!std::isfinite(v) || v < 0) fail(path, "imatrix entry " + e.name + " holds a negative or non-finite value");
    if (m.find(e.name)) fail(path, "imatrix entry " + e.name + " appears twice");
    m.entries.push_back(std::move(e));
  }
  if (!r.at_end()) {
    m.last_call = r.i32("the trailer");
    if (!r.at_end()) m.dataset = r.bytes(r.i32("the dataset name length"), "the dataset name");
  }
  return m;
}

void write_imatrix(const Imatrix& m, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail(path, "cannot write the importance matrix");
  auto i32 = [&](int32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); };
  i32(int32_t(m.entries.size()));
  for (const ImatrixEntry& e : m.entries) {
    i32(int32_t(e.name.size()));
    out.write(e.name.data(), std::streamsize(e.name.size()));
    i32(e.ncall);
    i32(int32_t(e.values.size()));
    out.write(reinterpret_cast<const char*>(e.values.data()), std::streamsize(4 * e.values.size()));
  }
  i32(m.last_call);
  i32(int32_t(m.dataset.size()));
  out.write(m.dataset.data(), std::streamsize(m.dataset.size()));
  if (!out) fail(path, "writing the importance matrix failed");
}

}  // namespace mixtral
