#pragma once

// Host-side helpers shared by the CPU and CUDA ranking kernels.
#include <ATen/ATen.h>

#include <limits>

#include "checks.h"
#include "mutualops/rank_math.h"

namespace mutualops {

inline TieMethod parse_tie_method(c10::string_view ties) {
  if (ties == "average") return TieMethod::kAverage;
  if (ties == "min") return TieMethod::kMin;
  if (ties == "max") return TieMethod::kMax;
  if (ties == "dense") return TieMethod::kDense;
  if (ties == "ordinal") return TieMethod::kOrdinal;
  TORCH_CHECK_VALUE(false, "ties must be one of average, min, max, dense, ordinal; got '", ties, "'");
}

inline void check_values(const at::Tensor& x, const char* name) {
  check_kernel_float(x, name);
  TORCH_CHECK_VALUE(x.dim() == 1, name, " must be 1-D, got shape ", x.sizes());
}

// Group ids as contiguous int64 (zeros when absent) and the number of groups.
// Validates ids: the one host synchronisation, which also sizes the output.
inline std::pair<at::Tensor, int64_t> resolve_groups(const at::Tensor& x, const std::optional<at::Tensor>& groups,
                                                     std::optional<int64_t> num_groups) {
  const int64_t n = x.size(0);
  if (!groups.has_value()) {
    TORCH_CHECK_VALUE(!num_groups.has_value() || *num_groups == 1, "num_groups must be 1 without groups");
    return {at::zeros({n}, x.options().dtype(at::kLong)), 1};
  }
  const at::Tensor& g = *groups;
  TORCH_CHECK_TYPE(at::isIntegralType(g.scalar_type(), /*includeBool=*/false), "groups must be an integer tensor, got ",
                   g.scalar_type());
  TORCH_CHECK_VALUE(g.dim() == 1 && g.size(0) == n, "groups must have shape [", n, "], got ", g.sizes());
  TORCH_CHECK_VALUE(g.device() == x.device(), "groups must be on ", x.device(), ", got ", g.device());
  at::Tensor ids = g.to(at::kLong).contiguous();
  int64_t count = num_groups.value_or(0);
  TORCH_CHECK_VALUE(count >= 0, "num_groups must be >= 0, got ", count);
  if (n > 0) {
    auto [lo, hi] = at::aminmax(ids);
    const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
    TORCH_CHECK_VALUE(lo_v >= 0, "groups must be non-negative, got ", lo_v);
    TORCH_CHECK_VALUE(hi_v < std::numeric_limits<int64_t>::max(), "groups must be < 2^63 - 1, got ", hi_v);
    if (num_groups.has_value()) {
      TORCH_CHECK_VALUE(hi_v < count, "groups must be < num_groups = ", count, ", got ", hi_v);
    } else {
      count = hi_v + 1;
    }
  }
  return {ids, count};
}

// Ranks do not depend on how groups are numbered: ids that run past the number
// of elements are renumbered densely, so memory stays O(n) whatever the ids
// (one id of 2^31 once asked for 17 GB of per-group slots).
inline std::pair<at::Tensor, int64_t> dense_groups(std::pair<at::Tensor, int64_t> groups) {
  const auto& [ids, count] = groups;
  if (count <= ids.numel()) return groups;
  const auto [values, inverse, counts] = at::_unique2(ids, /*sorted=*/true, /*return_inverse=*/true);
  return {inverse.contiguous(), values.size(0)};
}

}  // namespace mutualops
