// Importance matrices in llama.cpp's (legacy) .imatrix format, as llama-imatrix writes them and
// llama-quantize --imatrix reads them:
//   int32 n_entries; n_entries × (int32 name length, name bytes, int32 ncall, int32 nval,
//   float32 values[nval]); then optionally int32 last_call, int32 length, dataset name bytes.
// An entry is a weight tensor's name ("blk.0.ffn_up_exps.weight"); its values are per input
// column c statistics of x[c]² over the activations x that multiplied the tensor (for a stacked
// expert tensor: n_expert runs of n_per_row values, expert by expert), which llama-quantize
// passes to the quantizers as importance weights.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mixtral {

struct ImatrixEntry {
  std::string name;
  int32_t ncall = 0;          // chunks that contributed
  std::vector<float> values;  // nval values
};

struct Imatrix {
  std::vector<ImatrixEntry> entries;  // in file order
  int32_t last_call = 0;              // chunks processed (trailer; 0 when absent)
  std::string dataset;                // the text file it was computed from (trailer)
  const ImatrixEntry* find(const std::string& name) const;  // nullptr when absent
};

// Throws Error("PATH: problem") on a truncated or malformed file (counts, lengths, NaN/negative
// values are all checked: a hostile file cannot make a later reader misbehave).
Imatrix read_imatrix(const std::string& path);
void write_imatrix(const Imatrix& m, const std::string& path);

}  // namespace mixtral
