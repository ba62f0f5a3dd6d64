// Readers for llama.cpp's reference outputs in ../shared/fixtures/refs/<model>/ (see that
// folder's README): prompts, token ids, top-40 records, full logit rows, greedy continuations.
#pragma once
#include <cstdint>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mixtral::testing {

struct Top40 {
  int32_t ids[40];
  float values[40];
  float lse;
};
static_assert(sizeof(Top40) == 324);

struct RefPrompt {
  std::string name, text;
  std::vector<int32_t> tokens;
  int64_t row_offset = 0;               // into top40
  std::vector<int32_t> greedy;          // 32 ids
  std::vector<float> greedy_gap;        // top1 - top2 gap of each greedy step
};

struct RefData {
  std::vector<RefPrompt> prompts;
  std::vector<Top40> top40;             // every prompt position, prompts concatenated
  std::vector<Top40> greedy_top40;      // prompt index * 32 + step
  std::vector<float> logits_last;       // [6][32000]
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

template <class T>
std::vector<T> read_records(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

// The prompts (prompts.json, tokens.json in prompt_dir) with llama.cpp's greedy ids and row
// offsets for them (greedy.json, top40.json in ref_dir). The tiny-q refs keep the prompts in the
// folder above each file type's.
inline std::vector<RefPrompt> load_ref_prompts(const std::string& prompt_dir, const std::string& ref_dir) {
  using nlohmann::json;
  const json prompts = json::parse(read_file(prompt_dir + "/prompts.json"));
  const json tokens = json::parse(read_file(prompt_dir + "/tokens.json"));
  const json greedy = json::parse(read_file(ref_dir + "/greedy.json"));
  const json top = json::parse(read_file(ref_dir + "/top40.json"));
  std::vector<RefPrompt> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    RefPrompt p;
    p.name = prompts[i]["name"];
    p.text = prompts[i]["text"];
    p.tokens = tokens[p.name].get<std::vector<int32_t>>();
    p.row_offset = top["prompts"][i]["row_offset"];
    p.greedy = greedy[p.name]["ids"].get<std::vector<int32_t>>();
    p.greedy_gap = greedy[p.name]["top1_top2_gap"].get<std::vector<float>>();
    out.push_back(std::move(p));
  }
  return out;
}

inline RefData load_refs(const std::string& dir) {
  RefData r;
  r.prompts = load_ref_prompts(dir, dir);
  r.top40 = read_records<Top40>(dir + "/top40.bin");
  r.greedy_top40 = read_records<Top40>(dir + "/greedy_top40.bin");
  r.logits_last = read_records<float>(dir + "/logits_last.f32");
  return r;
}

}  // namespace mixtral::testing
