#include "core/dtype.h"

#include <algorithm>
#include <cctype>

namespace mixtral {

std::optional<DType> dtype_from_name(const std::string& name) {
  std::string up = name;
  std::transform(up.begin(), up.end(), up.begin(), [](unsigned char c) { return std::toupper(c); });
  for (DType t : kAllDTypes)
    if (up == dtype_name(t)) return t;
  return std::nullopt;
}

}  // namespace mixtral
