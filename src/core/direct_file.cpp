#include "core/direct_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace mixtral {

DirectFile::DirectFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  direct_ = fd_ >= 0;
  if (fd_ < 0) fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
}

DirectFile::~DirectFile() {
  if (fd_ >= 0) ::close(fd_);
}

size_t DirectFile::span(uint64_t offset, size_t n) {
  const uint64_t begin = offset / kAlign * kAlign;
  const uint64_t end = (offset + n + kAlign - 1) / kAlign * kAlign;
  return size_t(end - begin);
}

uint8_t* DirectFile::read(uint64_t offset, size_t n, uint8_t* buf) const {
  const uint64_t begin = offset / kAlign * kAlign;
  const size_t want = size_t(offset + n - begin);  // bytes that must arrive
  const size_t len = span(offset, n);
  size_t got = 0;
  while (got < want) {
    // Direct reads past the end of the file stop short at it; only `want` bytes must arrive.
    const ssize_t r = ::pread(fd_, buf + got, len - got, off_t(begin + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(path_, "read of " + std::to_string(n) + " bytes at " + std::to_string(offset) + " failed: " + std::strerror(errno));
    if (r == 0) fail(path_, "file ends before byte " + std::to_string(offset + n) + " (truncated?)");
    got += size_t(r);
  }
  if (!direct_) ::posix_fadvise(fd_, off_t(begin), off_t(len), POSIX_FADV_DONTNEED);
  return buf + (offset - begin);
}

}  // namespace mixtral
