// Memory sizes as the user writes them, and what the process and the machine hold.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace mixtral {

// "20G", "300M", "1.5GiB", "4096" (bytes), "512K"; K/M/G/T are powers of 1024. Throws
// Error naming `flag` for anything else, or a size below 1 MiB.
uint64_t parse_size(const std::string& text, const std::string& flag);
std::string format_size(uint64_t bytes);  // "1.50 GiB", "300.0 MiB"

uint64_t memory_available();  // MemAvailable from /proc/meminfo (0 when unknown)
uint64_t resident_bytes();     // VmRSS of this process
uint64_t peak_resident_bytes();  // VmHWM of this process
// Sets VmHWM back to the current VmRSS (Linux: "5" to /proc/self/clear_refs); false when the
// kernel refuses it.
bool reset_peak_resident();

// Anonymous read-write memory with transparent huge pages asked for (MADV_HUGEPAGE): how the
// weights read into memory, the expert slots and the benchmarks' weights are held. nullptr when
// the kernel refuses; release with munmap(p, bytes).
uint8_t* map_huge_pages(size_t bytes);

// map_huge_pages as an owner; throws Error naming `what` when the memory cannot be had.
class HugePageBuffer {
 public:
  HugePageBuffer(size_t bytes, const std::string& what);
  ~HugePageBuffer();
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;
  uint8_t* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  uint8_t* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace mixtral
