// Reads byte ranges of a file into the caller's memory, bypassing the page cache (O_DIRECT)
// where the file system allows it, so that what is read counts once: in the destination.
// Where O_DIRECT is refused (tmpfs, some overlay file systems) it reads normally and then tells
// the kernel to drop the pages (POSIX_FADV_DONTNEED).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace mixtral {

class DirectFile {
 public:
  static constexpr size_t kAlign = 4096;  // offsets, lengths and buffers of direct reads

  explicit DirectFile(const std::string& path);  // throws Error naming the file
  ~DirectFile();
  DirectFile(const DirectFile&) = delete;
  DirectFile& operator=(const DirectFile&) = delete;

  // Bytes a buffer needs to receive [offset, offset + n): the range widened to kAlign.
  static size_t span(uint64_t offset, size_t n);
  // Reads the widened range into `buf` (kAlign-aligned, span(offset, n) bytes) and returns where
  // byte `offset` landed in it. Throws Error naming the file when the range cannot be read.
  uint8_t* read(uint64_t offset, size_t n, uint8_t* buf) const;

  const std::string& path() const { return path_; }
  bool direct() const { return direct_; }  // false: the page-cache fallback is in use

 private:
  std::string path_;
  int fd_ = -1;
  bool direct_ = false;
};

}  // namespace mixtral
