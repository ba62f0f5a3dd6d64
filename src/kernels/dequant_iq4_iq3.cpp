#include "kernels/dequant_family.h"

namespace mixtral::ref {

DequantizeFn dequant_iq4_iq3(DType) { return nullptr; }

}  // namespace mixtral::ref
