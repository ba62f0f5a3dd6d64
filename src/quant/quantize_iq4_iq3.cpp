#include "quant/quantize_family.h"

namespace mixtral::quant {

bool quantize_iq4_iq3(DType, const float*, uint8_t*, int64_t, int64_t, const float*) { return false; }

}  // namespace mixtral::quant
