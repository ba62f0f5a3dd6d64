#include "kernels/dequant_family.h"

namespace mixtral::ref {

DequantizeFn dequant_legacy_k(DType) { return nullptr; }

}  // namespace mixtral::ref
