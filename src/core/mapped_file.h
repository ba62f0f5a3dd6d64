// A read-only memory mapping of a whole file. Weights are used in place from it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace mixtral {

class MappedFile {
 public:
  // Maps `path`; throws Error naming the file when it cannot be opened or mapped. With
  // `in_memory` the file is instead read into anonymous memory (--no-mmap): the bytes then
  // cannot be dropped by the page cache, which benchmarks need (this VM evicts file pages
  // left unused for ~60 s). In memory, file offset `align_at` is placed on a 64-byte boundary
  // (a GGUF's data section: aligned 64-byte loads of its weights, weight_tiles.h).
  explicit MappedFile(const std::string& path, bool in_memory = false, uint64_t align_at = 0);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

  // A file read into memory (in_memory): its bytes, made writable until seal() — loading changes
  // weights in place through them (weight tiles, kernels/weight_tiles.h). nullptr for a mapped
  // file (its pages are the page cache's; writing would copy them).
  uint8_t* writable();
  // Read-only again (as the bytes are after construction).
  void seal();

  // Reads every page once, so later use does not wait on the disk (--no-mmap style warm-up
  // without a copy). Returns a checksum so the reads are not optimised away.
  uint64_t touch() const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool in_memory_ = false;
  uint8_t* block_ = nullptr;  // in memory: the allocation, data_ - block_ bytes before data_
  size_t block_size_ = 0;
};

}  // namespace mixtral
