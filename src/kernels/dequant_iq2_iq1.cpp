#include "kernels/dequant_family.h"

namespace mixtral::ref {

DequantizeFn dequant_iq2_iq1(DType) { return nullptr; }

}  // namespace mixtral::ref
