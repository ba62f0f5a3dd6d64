#include "core/dtype.h"

#include <algorithm>
#include <cctype>

namespace mixtral {

std::optional<DType> dtype_from_name(const std::string& name) {
  std::string up = name;
  std::transform(up.begin(), up.end(), up.begin(), [](unsigned char c) { return std::toupper(c); });
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K})
    if (up == dtype_name(t)) return t;
  return std::nullopt;
}

}  // namespace mixtral
