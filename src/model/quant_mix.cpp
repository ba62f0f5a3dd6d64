// The rules are llama-quantize's (llama.cpp c392e509, llama_tensor_get_type), restated per
// tensor role. Where llama.cpp tests a file type in a chain of conditions, the chain is a
// switch here: each role's conditions only ever name one file type at a time, so the first
// matching link is the file type's own case.
#include "model/quant_mix.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>

#include "core/error.h"

namespace mixtral {
namespace {

using F = FileType;
using D = DType;

constexpr FileTypeInfo kFileTypes[] = {
    {F::ALL_F32, "F32", D::F32, false},          {F::MOSTLY_F16, "F16", D::F16, false},
    {F::Q4_0, "Q4_0", D::Q4_0, false},           {F::Q4_1, "Q4_1", D::Q4_1, false},
    {F::Q8_0, "Q8_0", D::Q8_0, false},           {F::Q5_0, "Q5_0", D::Q5_0, false},
    {F::Q5_1, "Q5_1", D::Q5_1, false},           {F::Q2_K, "Q2_K", D::Q2_K, false},
    {F::Q3_K_S, "Q3_K_S", D::Q3_K, false},       {F::Q3_K_M, "Q3_K_M", D::Q3_K, false},
    {F::Q3_K_L, "Q3_K_L", D::Q3_K, false},       {F::Q4_K_S, "Q4_K_S", D::Q4_K, false},
    {F::Q4_K_M, "Q4_K_M", D::Q4_K, false},       {F::Q5_K_S, "Q5_K_S", D::Q5_K, false},
    {F::Q5_K_M, "Q5_K_M", D::Q5_K, false},       {F::Q6_K, "Q6_K", D::Q6_K, false},
    {F::IQ2_XXS, "IQ2_XXS", D::IQ2_XXS, true},   {F::IQ2_XS, "IQ2_XS", D::IQ2_XS, true},
    {F::Q2_K_S, "Q2_K_S", D::Q2_K, true},        {F::IQ3_XS, "IQ3_XS", D::IQ3_S, false},
    {F::IQ3_XXS, "IQ3_XXS", D::IQ3_XXS, false},  {F::IQ1_S, "IQ1_S", D::IQ1_S, true},
    {F::IQ4_NL, "IQ4_NL", D::IQ4_NL, false},     {F::IQ3_S, "IQ3_S", D::IQ3_S, false},
    {F::IQ3_M, "IQ3_M", D::IQ3_S, false},        {F::IQ2_S, "IQ2_S", D::IQ2_XS, true},
    {F::IQ2_M, "IQ2_M", D::IQ2_S, false},        {F::IQ4_XS, "IQ4_XS", D::IQ4_XS, false},
    {F::IQ1_M, "IQ1_M", D::IQ1_M, true},         {F::MOSTLY_BF16, "BF16", D::BF16, false},
};

constexpr FileType kPublished[] = {
    F::Q4_0,   F::Q4_1,   F::Q5_0,   F::Q5_1,   F::Q8_0,    F::Q2_K,    F::Q3_K_S,
    F::Q3_K_M, F::Q3_K_L, F::Q4_K_S, F::Q4_K_M, F::Q5_K_S,  F::Q5_K_M,  F::Q6_K,
    F::IQ4_NL, F::IQ4_XS, F::IQ3_XXS, F::IQ3_S, F::IQ3_M,   F::IQ2_XXS, F::IQ2_XS,
    F::IQ2_S,  F::IQ2_M,  F::IQ1_S,  F::IQ1_M};

std::string upper(std::string s) {
  for (char& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

bool one_of(FileType ft, std::initializer_list<FileType> set) {
  return std::find(set.begin(), set.end(), ft) != set.end();
}

// The IQ mixes at or below ~2.5 bits, which llama.cpp handles by their own rules.
bool low_bit_iq(FileType ft) {
  return one_of(ft, {F::IQ2_XXS, F::IQ2_XS, F::IQ1_S, F::IQ2_S, F::IQ2_M, F::IQ1_M});
}

enum class Role { Output, TokenEmbd, AttnV, AttnK, AttnQ, AttnOutput, AttnQkv, FfnDown, FfnGate, FfnUp, Other };

Role role_of(const std::string& name, bool has_output) {
  if (name == "output.weight" || (!has_output && name == "token_embd.weight")) return Role::Output;
  if (name == "token_embd.weight") return Role::TokenEmbd;
  if (contains(name, "attn_v.weight")) return Role::AttnV;
  if (contains(name, "attn_k.weight")) return Role::AttnK;
  if (contains(name, "attn_q.weight")) return Role::AttnQ;
  if (contains(name, "ffn_down")) return Role::FfnDown;
  if (contains(name, "attn_output.weight")) return Role::AttnOutput;
  if (contains(name, "attn_qkv.weight")) return Role::AttnQkv;
  if (contains(name, "ffn_gate")) return Role::FfnGate;
  if (contains(name, "ffn_up")) return Role::FfnUp;
  return Role::Other;
}

// Layers that get more bits in the _M mixes: the first and last eighth, and every third between.
bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// The walk's running state: llama.cpp counts some roles' tensors instead of parsing the layer.
struct Counters {
  int n_attn_v = 0, i_attn_v = 0;
  int i_ffn_down = 0, i_ffn_gate = 0, i_ffn_up = 0;
};

// The layer of an FFN tensor: parsed from the name in MoE models (experts need not be in layer
// order), else the running count of that role.
int ffn_layer(const MixModel& m, const std::string& name, int counter) {
  if (m.n_experts <= 1) return counter;
  int layer = -1;
  if (std::sscanf(name.c_str(), "blk.%d.", &layer) != 1) fail("quantize", "no layer in tensor name " + name);
  if (layer < 0 || layer >= m.n_layers)
    fail("quantize", "layer " + std::to_string(layer) + " of " + name + " is not below " + std::to_string(m.n_layers));
  return layer;
}

DType output_rule(FileType ft, DType base, int64_t ne0) {
  if (ne0 % dtype_info(base).block_size != 0) return D::Q8_0;
  if (one_of(ft, {F::IQ2_XXS, F::IQ2_XS, F::IQ3_XXS, F::IQ1_S, F::IQ2_S, F::IQ2_M, F::IQ1_M})) return D::Q5_K;
  return base == D::Q8_0 ? base : D::Q6_K;
}

DType token_embd_rule(FileType ft, DType base) {
  if (one_of(ft, {F::IQ2_XXS, F::IQ2_XS, F::IQ1_S, F::IQ1_M})) return D::Q2_K;
  if (one_of(ft, {F::IQ2_S, F::IQ2_M, F::IQ3_XXS})) return D::IQ3_S;
  return base;
}

DType low_bit_iq_rule(FileType ft, const MixModel& m, Role role, DType base, Counters& c, int n_layers) {
  const bool s_or_m = ft == F::IQ2_S || ft == F::IQ2_M;
  switch (role) {
    case Role::AttnV:
      ++c.i_attn_v;
      if (m.n_gqa() >= 4 || m.n_experts >= 4) return D::Q4_K;
      return s_or_m ? D::IQ3_S : D::Q2_K;
    case Role::AttnK: return m.n_experts == 8 ? D::Q4_K : base;
    case Role::FfnDown: {
      const bool early = c.i_ffn_down < n_layers / 8;
      ++c.i_ffn_down;
      if (early) return s_or_m ? D::IQ3_S : D::Q2_K;
      return base;
    }
    case Role::AttnOutput:
      if (m.n_experts == 8) return D::Q5_K;
      if (ft == F::IQ1_S || ft == F::IQ1_M) return D::IQ2_XXS;
      if (s_or_m) return D::IQ3_S;
      return base;
    default: return base;
  }
}

DType attn_v_rule(FileType ft, const MixModel& m, DType base, int i, int n) {
  const bool gqa4 = m.n_gqa() >= 4;
  DType t = base;
  switch (ft) {
    case F::Q2_K: t = gqa4 ? D::Q4_K : D::Q3_K; break;
    case F::Q2_K_S: if (gqa4) t = D::Q4_K; break;
    case F::IQ3_XXS: t = gqa4 ? D::Q4_K : !m.has_imatrix ? D::IQ3_S : D::IQ3_XXS; break;
    case F::IQ3_XS:
    case F::IQ3_S: if (gqa4) t = D::Q4_K; break;
    case F::IQ3_M: t = D::Q4_K; break;
    case F::Q3_K_M: t = i < 2 ? D::Q5_K : D::Q4_K; break;
    case F::Q3_K_L: t = D::Q5_K; break;
    case F::IQ4_NL:
    case F::IQ4_XS: if (gqa4) t = D::Q5_K; break;
    case F::Q4_K_M:
    case F::Q5_K_M: if (use_more_bits(i, n)) t = D::Q6_K; break;
    case F::Q4_K_S: if (i < 4) t = D::Q5_K; break;
    default: break;
  }
  // 70B: eight query heads share each kv head, so attn_v is small and more bits are cheap.
  if (m.is_70b() && (t == D::Q3_K || t == D::Q4_K)) t = D::Q5_K;
  // 8 experts: attention is a small part of the model, so its k and v go to 8 bits.
  if (m.n_experts == 8) t = D::Q8_0;
  return t;
}

DType ffn_down_rule(FileType ft, const MixModel& m, DType base, int i, int n) {
  const bool first_eighth = i < n / 8;
  switch (ft) {
    case F::Q2_K: return D::Q3_K;
    case F::Q2_K_S: return first_eighth ? D::Q4_K : base;
    case F::IQ3_XXS: return m.has_imatrix ? base : first_eighth ? D::Q4_K : D::Q3_K;
    case F::Q3_K_M: return i < n / 16 ? D::Q5_K : D::Q4_K;
    case F::IQ3_M: return first_eighth || (m.n_experts == 8 && use_more_bits(i, n)) ? D::Q4_K : base;
    case F::Q3_K_L: return D::Q5_K;
    case F::Q4_K_M: return use_more_bits(i, n) ? D::Q6_K : base;
    case F::IQ4_NL:
    case F::IQ4_XS: return first_eighth && !m.has_imatrix ? D::Q5_K : base;
    case F::Q5_K_M: return use_more_bits(i, n) ? D::Q6_K : base;
    case F::Q4_K_S: return first_eighth ? D::Q5_K : base;
    // With an imatrix only (so that files made without one stay as they were).
    case F::Q4_0: return m.has_imatrix && first_eighth ? D::Q4_1 : base;
    case F::Q5_0: return m.has_imatrix && first_eighth ? D::Q5_1 : base;
    default: return base;
  }
}

DType attn_output_rule(FileType ft, const MixModel& m, DType base) {
  if (m.n_experts == 8) {
    const bool bump = one_of(ft, {F::Q2_K, F::IQ3_XS, F::IQ3_XXS, F::Q3_K_S, F::Q3_K_M, F::IQ4_NL,
                                  F::Q4_K_S, F::Q4_K_M, F::IQ3_S, F::IQ3_M, F::IQ4_XS});
    return bump ? D::Q5_K : base;
  }
  switch (ft) {
    case F::Q2_K: return D::Q3_K;
    case F::IQ3_XXS: return D::IQ3_S;
    case F::Q3_K_M: return D::Q4_K;
    case F::Q3_K_L: return D::Q5_K;
    case F::IQ3_M: return D::Q4_K;
    default: return base;
  }
}

DType attn_qkv_rule(FileType ft, DType base) {
  if (one_of(ft, {F::Q3_K_M, F::Q3_K_L, F::IQ3_M})) return D::Q4_K;
  if (ft == F::Q4_K_M) return D::Q5_K;
  if (ft == F::Q5_K_M) return D::Q6_K;
  return base;
}

// IQ3_XS keeps the middle layers' gate/up at IQ3_XXS.
DType gate_up_rule(FileType ft, DType base, int i, int n) {
  return ft == F::IQ3_XS && i >= n / 8 && i < 7 * n / 8 ? D::IQ3_XXS : base;
}

DType rule_type(FileType ft, const MixModel& m, const TensorDesc& t, Role role, DType base, Counters& c) {
  const int n = m.n_layers;
  if (role == Role::Output) return output_rule(ft, base, t.ne[0]);
  if (role == Role::TokenEmbd) return token_embd_rule(ft, base);
  if (low_bit_iq(ft)) return low_bit_iq_rule(ft, m, role, base, c, n);
  switch (role) {
    case Role::AttnV: {
      const DType r = attn_v_rule(ft, m, base, c.i_attn_v, c.n_attn_v);
      ++c.i_attn_v;
      return r;
    }
    case Role::AttnK:
      if (m.n_experts == 8) return D::Q8_0;
      if (ft == F::IQ3_XS) return D::IQ3_XXS;
      if (ft == F::IQ3_XXS) return D::IQ2_S;
      return base;
    case Role::AttnQ:
      if (ft == F::IQ3_XS) return D::IQ3_XXS;
      if (ft == F::IQ3_XXS) return D::IQ2_S;
      return base;
    case Role::FfnDown: return ffn_down_rule(ft, m, base, ffn_layer(m, t.name, c.i_ffn_down++), n);
    case Role::AttnOutput: return attn_output_rule(ft, m, base);
    case Role::AttnQkv: return attn_qkv_rule(ft, base);
    case Role::FfnGate: return gate_up_rule(ft, base, ffn_layer(m, t.name, c.i_ffn_gate++), n);
    case Role::FfnUp: return gate_up_rule(ft, base, ffn_layer(m, t.name, c.i_ffn_up++), n);
    default: return base;
  }
}

// For a row length the chosen type's block does not divide: the nearest type with 32-value
// blocks, else F16.
DType fallback_type(DType t, int64_t ne0, const std::string& name) {
  DType f;
  switch (t) {
    case D::IQ2_XXS: case D::IQ2_XS: case D::IQ2_S: case D::IQ3_XXS: case D::IQ3_S:
    case D::IQ1_S: case D::IQ1_M: case D::Q2_K: case D::Q3_K: case D::IQ4_XS: f = D::IQ4_NL; break;
    case D::Q4_K: f = D::Q5_0; break;
    case D::Q5_K: f = D::Q5_1; break;
    case D::Q6_K: f = D::Q8_0; break;
    default:
      fail("quantize", name + ": rows of " + std::to_string(ne0) + " values do not fit " + dtype_name(t) + " blocks");
  }
  return ne0 % dtype_info(f).block_size == 0 ? f : D::F16;
}

}  // namespace

std::span<const FileTypeInfo> all_file_types() { return kFileTypes; }
std::span<const FileType> published_file_types() { return kPublished; }

const FileTypeInfo& file_type_info(FileType t) {
  for (const auto& i : kFileTypes)
    if (i.id == t) return i;
  fail("file type", "unknown id " + std::to_string(uint32_t(t)));
}

std::optional<FileType> file_type_from_name(const std::string& name) {
  const std::string u = upper(name);
  if (u == "Q3_K") return F::Q3_K_M;
  if (u == "Q4_K") return F::Q4_K_M;
  if (u == "Q5_K") return F::Q5_K_M;
  for (const auto& i : kFileTypes)
    if (u == i.name) return i.id;
  return std::nullopt;
}

std::string file_type_name(uint32_t id) {
  for (const auto& i : kFileTypes)
    if (uint32_t(i.id) == id) return i.name;
  return "unknown (" + std::to_string(id) + ")";
}

bool is_quantizable(const TensorDesc& t) {
  const std::string& n = t.name;
  const bool weight = n.size() >= 6 && n.compare(n.size() - 6, 6, "weight") == 0;
  return weight && t.ne.size() >= 2 && !contains(n, "_norm.weight") && !contains(n, "ffn_gate_inp.weight");
}

std::vector<TensorDesc> llama_quantize_order(std::vector<TensorDesc> tensors) {
  auto layer = [](const std::string& name) {
    int l = -1;
    std::sscanf(name.c_str(), "blk.%d.", &l);
    return l;
  };
  std::stable_sort(tensors.begin(), tensors.end(), [&](const TensorDesc& a, const TensorDesc& b) {
    const int la = layer(a.name), lb = layer(b.name);
    return la != lb ? la < lb : a.name < b.name;
  });
  return tensors;
}

std::vector<PlannedTensor> plan_quant_types(FileType ft, const MixModel& model,
                                            const std::vector<TensorDesc>& tensors,
                                            const std::vector<DType>& source) {
  if (source.size() != tensors.size()) fail("quantize", "one source type per tensor expected");
  const DType base = file_type_info(ft).base;
  Counters c;
  bool has_output = false;
  for (const auto& t : tensors) {
    if (contains(t.name, "attn_v.weight") || contains(t.name, "attn_qkv.weight") || contains(t.name, "attn_kv_b.weight"))
      ++c.n_attn_v;
    has_output |= t.name == "output.weight";
  }
  std::vector<PlannedTensor> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorDesc& t = tensors[i];
    PlannedTensor p{t, source[i]};
    if (is_quantizable(t)) {
      p.type = base;
      if (is_quantized(base)) {
        p.type = rule_type(ft, model, t, role_of(t.name, has_output), base, c);
        if (t.ne[0] % dtype_info(p.type).block_size != 0) {
          p.type = fallback_type(p.type, t.ne[0], t.name);
          p.fallback = true;
        }
      }
    }
    out.push_back(std::move(p));
  }
  return out;
}

bool tensor_needs_imatrix(FileType ft, const std::string& name, DType type) {
  const bool embd = name == "token_embd.weight", output = name == "output.weight";
  switch (type) {
    case D::IQ2_XXS: case D::IQ2_XS: case D::IQ2_S: case D::IQ1_S: return true;
    case D::IQ1_M: return !embd && !output;
    case D::Q2_K: return ft == F::Q2_K_S && !embd;
    default: return false;
  }
}

}  // namespace mixtral
