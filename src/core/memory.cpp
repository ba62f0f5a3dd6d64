#include "core/memory.h"

#include <sys/mman.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace mixtral {

uint64_t parse_size(const std::string& text, const std::string& flag) {
  const auto bad = [&] { fail(flag, "\"" + text + "\" is not a size (examples: 20G, 300M, 1.5GiB)"); };
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    bad();
  }
  std::string unit = text.substr(used);
  for (auto& ch : unit) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  if (unit.size() > 1 && unit.back() == 'B') unit.pop_back();  // GB, GiB, MB ...
  if (unit.size() > 1 && unit.back() == 'I') unit.pop_back();
  double mult = 1;
  if (unit == "K") mult = 1024.0;
  else if (unit == "M") mult = 1024.0 * 1024;
  else if (unit == "G") mult = 1024.0 * 1024 * 1024;
  else if (unit == "T") mult = 1024.0 * 1024 * 1024 * 1024;
  else if (!unit.empty() && unit != "B") bad();
  if (!std::isfinite(v) || v <= 0) bad();
  const double bytes = v * mult;
  if (bytes < 1024.0 * 1024) fail(flag, "\"" + text + "\" is below 1 MiB");
  if (bytes > 1e18) bad();
  return uint64_t(bytes);
}

std::string format_size(uint64_t bytes) {
  char buf[32];
  if (bytes >= (uint64_t(1) << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", double(bytes) / double(1 << 30));
  else std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(1 << 20));
  return buf;
}

namespace {
// The value in kB of `key` in a /proc file of "Key:   123 kB" lines, in bytes; 0 when absent.
uint64_t proc_kb(const char* path, const char* key) {
  std::ifstream in(path);
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(in, line))
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') {
      std::istringstream v(line.substr(n + 1));
      uint64_t kb = 0;
      v >> kb;
      return kb * 1024;
    }
  return 0;
}
}  // namespace

uint64_t memory_available() { return proc_kb("/proc/meminfo", "MemAvailable"); }
uint64_t resident_bytes() { return proc_kb("/proc/self/status", "VmRSS"); }
uint64_t peak_resident_bytes() { return proc_kb("/proc/self/status", "VmHWM"); }

uint8_t* map_huge_pages(size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  ::madvise(p, bytes, MADV_HUGEPAGE);
  return static_cast<uint8_t*>(p);
}

HugePageBuffer::HugePageBuffer(size_t bytes, const std::string& what) : p_(map_huge_pages(bytes)), n_(bytes) {
  if (!p_) fail(what, "cannot reserve " + format_size(bytes) + " of memory");
}

HugePageBuffer::~HugePageBuffer() { ::munmap(p_, n_); }

bool reset_peak_resident() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

}  // namespace mixtral
