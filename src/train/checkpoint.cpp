#include "train/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/fp16.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"

namespace mixtral::train {

namespace fs = std::filesystem;

namespace {

void write_json(const std::string& path, const nlohmann::json& j) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    if (!out) fail(tmp, "cannot open for writing");
    out << j.dump(2) << "\n";
    if (!out) fail(tmp, "write failed");
  }
  fs::rename(tmp, path);
}

// model.safetensors: every tensor under its HF name, converted to `dtype`.
void write_model(const std::string& path, const ParamLayout& layout, const float* params, const std::string& dtype) {
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  for (const ParamInfo& p : layout.tensors()) {
    const float* x = params + p.offset;
    if (dtype == "f32") {
      w.add_tensor(p.name, DType::F32, p.shape, x, p.numel * sizeof(float));
      continue;
    }
    std::vector<uint8_t> bytes(p.numel * 2);
    for (size_t i = 0; i < p.numel; ++i) {
      const uint16_t h = dtype == "bf16" ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
      std::memcpy(&bytes[i * 2], &h, 2);
    }
    w.add_tensor(p.name, dtype == "bf16" ? DType::BF16 : DType::F16, p.shape, std::move(bytes));
  }
  w.write(path);
}

std::vector<float> read_f32(const SafetensorsFile& f, const std::string& name, size_t n) {
  const RawTensor* t = f.find(name);
  if (!t || t->dtype != DType::F32 || size_t(t->numel()) != n)
    fail(f.path(), "\"" + name + "\" missing or not F32 [" + std::to_string(n) + "] (does the config match?)");
  std::vector<float> v(n);
  std::memcpy(v.data(), t->data, n * sizeof(float));
  return v;
}

}  // namespace

void save_checkpoint(const std::string& dir, const TrainConfig& config, const ParamLayout& layout,
                     const float* params, AdamW& opt, const TrainProgress& progress, const std::string& tokenizer) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, "cannot create folder: " + ec.message());
  const std::string torch_dtype = config.train.save_dtype == "f32" ? "float32"
                                  : config.train.save_dtype == "bf16" ? "bfloat16" : "float16";
  write_json(dir + "/config.json", config.hf_config(torch_dtype));
  write_model(dir + "/model.safetensors", layout, params, config.train.save_dtype);
  const fs::path tok_dst = fs::path(dir) / "tokenizer.model";
  if (!tokenizer.empty() && !(fs::exists(tok_dst) && fs::equivalent(tokenizer, tok_dst)))
    fs::copy_file(tokenizer, tok_dst, fs::copy_options::overwrite_existing);

  SafetensorsWriter st;
  st.set_metadata("format", "mixtral.cpp trainer state");
  const size_t n = layout.size();
  st.add_tensor("params", DType::F32, {int64_t(n)}, params, n * sizeof(float));
  st.add_tensor("adam_m", DType::F32, {int64_t(n)}, opt.m().data(), n * sizeof(float));
  st.add_tensor("adam_v", DType::F32, {int64_t(n)}, opt.v().data(), n * sizeof(float));
  st.write(dir + "/trainer_state.safetensors");
  write_json(dir + "/trainer_state.json", {{"step", progress.step},
                                           {"tokens_seen", progress.tokens_seen},
                                           {"elapsed_s", progress.elapsed_s},
                                           {"eval_loss", progress.eval_loss},
                                           {"config", config.to_json()}});
}

LoadedCheckpoint load_checkpoint(const std::string& dir) {
  const std::string state_path = dir + "/trainer_state.json";
  std::ifstream in(state_path);
  if (!in) fail(state_path, "cannot read (not a checkpoint written by 'mixtral train'?)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(state_path, std::string("invalid JSON: ") + e.what());
  }
  LoadedCheckpoint c;
  c.config = TrainConfig::from_json(j.at("config"), state_path);
  c.progress.step = j.value("step", int64_t(0));
  c.progress.tokens_seen = j.value("tokens_seen", int64_t(0));
  c.progress.elapsed_s = j.value("elapsed_s", 0.0);
  c.progress.eval_loss = j.value("eval_loss", 0.0);
  const size_t n = ParamLayout(c.config).size();
  SafetensorsFile f(dir + "/trainer_state.safetensors", /*in_memory=*/true);
  c.params = read_f32(f, "params", n);
  c.adam_m = read_f32(f, "adam_m", n);
  c.adam_v = read_f32(f, "adam_v", n);
  return c;
}

}  // namespace mixtral::train
