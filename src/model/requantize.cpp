#include "model/requantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "quant/quantize.h"

namespace mixtral {
namespace {

constexpr uint32_t kQuantizationVersion = 2;  // GGML_QNT_VERSION
constexpr size_t kMaxKvString = 127;          // llama-quantize's KV override strings

MixModel mix_model(const GgufFile& in, bool has_imatrix) {
  const std::string arch = in.get_string("general.architecture").value_or("");
  if (arch != "llama")
    fail(in.path(), "architecture \"" + arch + "\": quantize knows llama-quantize's rules for llama (Mistral, Mixtral) only");
  auto get = [&](const std::string& key, std::optional<int64_t> dflt) {
    const auto v = in.get_int("llama." + key);
    if (!v && !dflt) fail(in.path(), "missing key llama." + key);
    return int(v ? *v : *dflt);
  };
  MixModel m;
  m.n_layers = get("block_count", std::nullopt);
  m.n_experts = get("expert_count", 0);
  m.n_heads = get("attention.head_count", std::nullopt);
  m.n_kv_heads = get("attention.head_count_kv", m.n_heads);
  m.has_imatrix = has_imatrix;
  return m;
}

TensorDesc desc(const RawTensor& t) { return {t.name, std::vector<int64_t>(t.shape.rbegin(), t.shape.rend())}; }

// llama-quantize's imatrix: the file's sums divided by the number of chunks behind them.
std::map<std::string, std::vector<float>> imatrix_weights(const Imatrix& m) {
  std::map<std::string, std::vector<float>> out;
  for (const ImatrixEntry& e : m.entries) {
    std::vector<float> v = e.values;
    if (e.ncall > 0)
      for (float& x : v) x /= float(e.ncall);
    for (float x : v)
      if (!std::isfinite(x)) fail("imatrix", "entry " + e.name + " holds a non-finite value");
    out[e.name] = std::move(v);
  }
  return out;
}

// The importance weights of tensor t (n_expert runs of ne0 values), or null.
const std::vector<float>* weights_for(const std::map<std::string, std::vector<float>>& w, const TensorDesc& t) {
  const auto it = w.find(t.name);
  if (it == w.end()) return nullptr;
  const int64_t want = t.ne[0] * (t.ne.size() > 2 ? t.ne[2] : 1);
  if (int64_t(it->second.size()) == want) return &it->second;
  if (t.name == "token_embd.weight") return nullptr;  // (llama-quantize ignores a mismatch there)
  fail("imatrix", "entry " + t.name + " has " + std::to_string(it->second.size()) +
                      " values, the tensor needs " + std::to_string(want));
}

void to_f32(const RawTensor& t, float* dst) {
  const int64_t n = t.numel();
  switch (t.dtype) {
    case DType::F32: std::memcpy(dst, t.data, size_t(n) * 4); return;
    case DType::F16:
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        dst[i] = t.dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      return;
    default: fail("quantize", t.name + ": cannot read " + dtype_name(t.dtype));
  }
}

// Fails unless `out` can be created in its folder, and is not `in` itself.
void check_output(const std::string& in, const std::string& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(out, ec) && fs::equivalent(in, out, ec)) fail(out, "is the input file");
  if (fs::is_directory(out, ec)) fail(out, "is a directory");
  const std::string probe = out + ".tmp";
  {
    std::ofstream f(probe, std::ios::binary);
    if (!f) fail(out, "cannot be written (" + std::string(std::strerror(errno)) + ")");
  }
  fs::remove(probe, ec);
}

}  // namespace

std::vector<RequantizeTensor> plan_requantize(const GgufFile& in, const RequantizeOptions& o) {
  const FileTypeInfo& ft = file_type_info(o.type);
  const bool imatrix = o.imatrix && !o.imatrix->entries.empty();
  if (ft.needs_imatrix && !imatrix) fail("quantize", kImatrixRequiredReason);
  std::vector<TensorDesc> tensors;
  std::map<std::string, DType> from;
  for (const RawTensor& t : in.tensors()) {
    tensors.push_back(desc(t));
    from[t.name] = t.dtype;
  }
  tensors = llama_quantize_order(std::move(tensors));
  std::vector<DType> source;
  for (const auto& t : tensors) source.push_back(from[t.name]);
  const auto weights = imatrix ? imatrix_weights(*o.imatrix) : std::map<std::string, std::vector<float>>{};
  std::vector<RequantizeTensor> plan;
  for (PlannedTensor& p : plan_quant_types(o.type, mix_model(in, imatrix), tensors, source)) {
    RequantizeTensor r{p, from[p.tensor.name]};
    if (r.from != r.plan.type) {
      if (is_quantized(r.from))
        fail("quantize", p.tensor.name + " is " + dtype_name(r.from) + ": requantizing a quantized tensor is not supported (start from F32/F16/BF16)");
      r.weighted = weights_for(weights, p.tensor) != nullptr;
      if (!r.weighted && tensor_needs_imatrix(o.type, p.tensor.name, p.type))
        fail("quantize", "Missing importance matrix for tensor " + p.tensor.name + " in a very low-bit quantization");
    }
    plan.push_back(std::move(r));
  }
  return plan;
}

bool has_quantizer(DType t, bool weighted) {
  constexpr int64_t n = 256;  // a multiple of every block size
  std::vector<float> x(n), w(n, 1.0f);
  for (int64_t i = 0; i < n; ++i) x[size_t(i)] = std::sin(float(i)) * 0.02f;
  std::vector<uint8_t> dst(quantized_bytes(t, n));
  try {
    quantize_rows(t, x.data(), dst.data(), 1, n, weighted ? w.data() : nullptr);
    return true;
  } catch (const Error&) {
    return false;
  }
}

std::vector<DType> missing_quantizers(const std::vector<RequantizeTensor>& plan) {
  std::vector<DType> out;
  for (const RequantizeTensor& r : plan)
    if (r.from != r.plan.type && !has_quantizer(r.plan.type, r.weighted) &&
        std::find(out.begin(), out.end(), r.plan.type) == out.end())
      out.push_back(r.plan.type);
  return out;
}

void requantize_gguf(const std::string& in_path, const std::string& out_path, const RequantizeOptions& o) {
  check_output(in_path, out_path);
  const GgufFile in(in_path);
  const auto plan = plan_requantize(in, o);
  // (The probe runs each quantizer once on this thread, so tables a quantizer builds on first
  // use exist before the worker threads start.)
  const auto missing = missing_quantizers(plan);
  if (!missing.empty()) {
    for (const RequantizeTensor& r : plan)
      if (r.plan.type == missing[0])
        fail("quantize", std::string("no quantizer for ") + dtype_name(missing[0]) + " (needed for " + r.plan.tensor.name + ") in this build");
  }

  GgufWriter w;
  for (const std::string& key : in.keys())
    if (key != "general.quantization_version" && key != "general.file_type" && key.rfind("split.", 0) != 0)
      w.copy_kv(in, key);
  w.set_u32("general.quantization_version", kQuantizationVersion);
  w.set_u32("general.file_type", uint32_t(o.type));
  const bool imatrix = o.imatrix && !o.imatrix->entries.empty();
  const auto weights = imatrix ? imatrix_weights(*o.imatrix) : std::map<std::string, std::vector<float>>{};
  if (imatrix) {
    auto set_string = [&](const std::string& key, const std::string& v) {
      w.remove(key);
      w.set_string(key, v.substr(0, kMaxKvString));
    };
    auto set_i32 = [&](const std::string& key, int32_t v) {
      w.remove(key);
      w.set_i32(key, v);
    };
    set_string("quantize.imatrix.file", o.imatrix_file);
    if (!o.imatrix->dataset.empty()) set_string("quantize.imatrix.dataset", o.imatrix->dataset);
    set_i32("quantize.imatrix.entries_count", int32_t(weights.size()));
    if (o.imatrix->last_call > 0) set_i32("quantize.imatrix.chunks_count", o.imatrix->last_call);
  }

  ThreadPool pool(std::max(1, o.threads));
  for (size_t i = 0; i < plan.size(); ++i) {
    const RequantizeTensor& r = plan[i];
    const RawTensor& src = *in.find(r.plan.tensor.name);
    if (r.from == r.plan.type) {
      w.add_tensor(src.name, src.dtype, src.shape, src.data, src.nbytes);
      continue;
    }
    const int64_t ne0 = r.plan.tensor.ne[0];
    const int64_t rows = src.numel() / ne0;
    const int64_t rows_per_expert = r.plan.tensor.ne.size() > 1 ? r.plan.tensor.ne[1] : 1;
    const size_t row_size = row_bytes(r.plan.type, ne0);
    const std::vector<float>* iw = r.weighted ? weights_for(weights, r.plan.tensor) : nullptr;
    w.add_tensor(src.name, r.plan.type, src.shape, row_size * size_t(rows), [&, i, ne0, rows, rows_per_expert, row_size, iw](uint8_t* dst) {
      if (o.progress) o.progress(i, plan.size(), plan[i].plan);
      const RawTensor& s = *in.find(plan[i].plan.tensor.name);
      std::vector<float> f32(size_t(s.numel()));
      to_f32(s, f32.data());
      const DType to = plan[i].plan.type;
      // Each chunk is cut at expert boundaries: an expert's rows share its importance weights.
      pool.parallel_for(rows, [&](int64_t begin, int64_t end) {
        for (int64_t r0 = begin; r0 < end;) {
          const int64_t e = r0 / rows_per_expert;
          const int64_t r1 = std::min(end, (e + 1) * rows_per_expert);
          quantize_rows(to, f32.data() + r0 * ne0, dst + size_t(r0) * row_size, r1 - r0, ne0,
                        iw ? iw->data() + e * ne0 : nullptr);
          r0 = r1;
        }
      }, 16);
    });
  }
  w.write(out_path);
}

}  // namespace mixtral
