#pragma once

// Detection-score arithmetic shared by the CPU and CUDA rescored-NMS kernels.

#include <math.h>

#include "mutualops/macros.h"

namespace mutualops {

MUTUALOPS_HD float sqrt_of(float x) { return sqrtf(x); }

MUTUALOPS_HD double sqrt_of(double x) { return sqrt(x); }

MUTUALOPS_HD float pow_of(float x, float y) { return powf(x, y); }

MUTUALOPS_HD double pow_of(double x, double y) { return pow(x, y); }

MUTUALOPS_HD float exp_of(float x) { return expf(x); }

MUTUALOPS_HD double exp_of(double x) { return exp(x); }

template <typename T>
MUTUALOPS_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp_of(-x));
}

// IoU rescoring (docs/method.md, section 1): s = cls^(1 - alpha) * iou^alpha. alpha = 0.5
// is computed as sqrt(cls * iou), the form FCOS uses for sqrt(cls *
// centerness): the same value, one rounding fewer, and bit-identical to it.
template <typename T>
MUTUALOPS_HD T rescore(T cls, T iou, T alpha) {
  if (alpha == T(0)) return cls;
  if (alpha == T(1)) return iou;
  if (alpha == T(0.5)) return sqrt_of(cls * iou);
  return pow_of(cls, T(1) - alpha) * pow_of(iou, alpha);
}

// A head output as a probability: itself, or its sigmoid when the head gives logits.
template <typename T>
MUTUALOPS_HD T probability(T value, bool logits) {
  return logits ? sigmoid(value) : value;
}

// Detection order: higher score first, then lower index.
template <typename T>
MUTUALOPS_HD bool ranks_before(T score_a, int64_t index_a, T score_b, int64_t index_b) {
  return score_a != score_b ? score_a > score_b : index_a < index_b;
}

}  // namespace mutualops
