// Schemas of the ranking family (docs/method.md, section 2.4). Kernels live in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mutualops, m) {
  // Ranks of x within each group (a group id per element; None: one group),
  // 1-based, float64. ties: average, min, max, dense, ordinal.
  m.def("rank(Tensor x, Tensor? groups, str ties=\"average\") -> Tensor");
  // Spearman's rho per group, float64 [num_groups]; num_groups None means
  // max(groups) + 1 (a data-dependent size).
  m.def("spearman(Tensor x, Tensor y, Tensor? groups, int? num_groups=None) -> Tensor");
}

// Not differentiable (indices, selections, ranks, targets): autograd hands the call straight to the kernels,
// so that no output claims requires_grad (torch's fallback would set it and then backpropagate nothing).
TORCH_LIBRARY_IMPL(mutualops, Autograd, m) {
  m.impl("rank", torch::CppFunction::makeFallthrough());
  m.impl("spearman", torch::CppFunction::makeFallthrough());
}
