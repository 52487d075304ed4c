#pragma once

// Argument checks every op family shares.
#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

namespace mutualops {

// The floating types the kernels are compiled for (the dispatch macros' float, double, half and bfloat16). The
// float8 types are floating point too but have no kernel: they must fail here with a TypeError naming the
// argument, not with the dispatch macro's NotImplementedError.
inline bool is_kernel_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_kernel_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_kernel_float(t.scalar_type()), name,
                   " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", t.scalar_type());
}

// Checks on the values of device tensors, gathered so that an op reads them back once: each read makes the
// host wait for the device. add() a 0-dim bool tensor, true when the data is right, with the ValueError's
// message for false; verify() raises the first that failed. An op verifies after its checks of types and
// shapes, so those come first.
class DataChecks {
 public:
  void add(at::Tensor ok, std::string message) {
    flags_.push_back(std::move(ok));
    messages_.push_back(std::move(message));
  }

  void verify() const {
    if (flags_.empty()) return;
    const at::Tensor ok = at::stack(flags_).cpu();
    const bool* values = ok.data_ptr<bool>();
    for (size_t i = 0; i < messages_.size(); ++i) TORCH_CHECK_VALUE(values[i], messages_[i]);
  }

 private:
  std::vector<at::Tensor> flags_;
  std::vector<std::string> messages_;
};

}  // namespace mutualops
