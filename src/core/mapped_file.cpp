#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/memory.h"

namespace mixtral {

MappedFile::MappedFile(const std::string& path, bool in_memory, uint64_t align_at) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  size_ = size_t(st.st_size);
  if (size_ > 0 && in_memory) {
    const size_t pad = size_t((64 - align_at % 64) % 64);  // block_ is page-aligned
    block_size_ = size_ + pad;
    block_ = map_huge_pages(block_size_);
    if (!block_) {
      ::close(fd);
      fail(path, "cannot allocate " + std::to_string(size_ >> 20) + " MiB to read the file into memory");
    }
    uint8_t* p = block_ + pad;
    size_t done = 0;
    while (done < size_) {
      const ssize_t n = ::read(fd, static_cast<uint8_t*>(p) + done, size_ - done);
      if (n <= 0) {
        const int e = errno;
        ::munmap(block_, block_size_);
        ::close(fd);
        fail(path, std::string("read failed: ") + (n == 0 ? "unexpected end of file" : std::strerror(e)));
      }
      done += size_t(n);
    }
    ::mprotect(block_, block_size_, PROT_READ);
    data_ = p;
    in_memory_ = true;
  } else if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      fail(path, std::string("cannot mmap: ") + std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (in_memory_) ::munmap(block_, block_size_);
  else if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

uint8_t* MappedFile::writable() {
  if (!in_memory_) return nullptr;
  if (::mprotect(block_, block_size_, PROT_READ | PROT_WRITE) != 0)
    fail(path_, std::string("cannot make the bytes read into memory writable: ") + std::strerror(errno));
  return const_cast<uint8_t*>(data_);
}

void MappedFile::seal() {
  if (in_memory_) ::mprotect(block_, block_size_, PROT_READ);
}

uint64_t MappedFile::touch() const {
  uint64_t sum = 0;
  for (size_t i = 0; i < size_; i += 4096) sum += data_[i];
  return sum;
}

}  // namespace mixtral
