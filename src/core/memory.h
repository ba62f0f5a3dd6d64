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

}  // namespace mixtral
