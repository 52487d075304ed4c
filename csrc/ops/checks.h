#pragma once

// Argument checks every op family shares.
#include <ATen/ATen.h>

namespace mutualops {

// The floating types the kernels are compiled for (the dispatch macros' float, double, half and bfloat16). The
// float8 types are floating point too but have no kernel: they must fail here with a TypeError naming the
// argument, not with the dispatch macro's NotImplementedError.
inline bool is_kernel_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A kernel float's name as Python spells it (torch.float32 and so on), for messages.
inline const char* kernel_float_name(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kDouble:
      return "float64";
    default:
      return "float32";
  }
}

inline void check_kernel_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_kernel_float(t.scalar_type()), name,
                   " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", t.scalar_type());
}

}  // namespace mutualops
