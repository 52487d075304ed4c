#pragma once

// The one place where ranks and rank correlation are defined (scipy's
// rankdata and spearmanr semantics). CPU and CUDA kernels differ only in how
// they sort and reduce; the arithmetic below is shared.

#include <math.h>
#include <stdint.h>

#include "mutualops/macros.h"

namespace mutualops {

enum class TieMethod : int { kAverage = 0, kMin = 1, kMax = 2, kDense = 3, kOrdinal = 4 };

// 1-based rank of the element at 0-based position `pos` of its group's sorted
// order, whose run of equal values spans positions [run_begin, run_end) and
// which holds the `dense`-th distinct value of the group (0-based).
MUTUALOPS_HD double tie_rank(TieMethod method, int64_t pos, int64_t run_begin, int64_t run_end, int64_t dense) {
  switch (method) {
    case TieMethod::kMin:
      return double(run_begin + 1);
    case TieMethod::kMax:
      return double(run_end);
    case TieMethod::kDense:
      return double(dense + 1);
    case TieMethod::kOrdinal:
      return double(pos + 1);
    default:  // the mean of ranks run_begin + 1 .. run_end
      return double(run_begin + 1 + run_end) / 2.0;
  }
}

// Average ranks of a group of n elements always sum to n (n + 1) / 2: their
// mean is known, so the correlation is accumulated from centred ranks in one
// pass with no cancellation.
MUTUALOPS_HD double centred_rank(double rank, int64_t n) { return rank - double(n + 1) / 2.0; }

// Pearson correlation of the (centred) ranks from their sums: NaN for fewer
// than two elements or a constant input, clipped to [-1, 1] like numpy's
// corrcoef, on which scipy's spearmanr rests.
MUTUALOPS_HD double correlation_from_sums(int64_t n, double sxy, double sxx, double syy) {
  if (n < 2 || !(sxx > 0.0) || !(syy > 0.0)) return NAN;
  const double r = sxy / sqrt(sxx * syy);
  return r > 1.0 ? 1.0 : (r < -1.0 ? -1.0 : r);
}

}  // namespace mutualops
