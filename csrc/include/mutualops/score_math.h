#pragma once

// Detection-score arithmetic shared by the CPU and CUDA rescored-NMS kernels.

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mutualops/float_math.h"
#include "mutualops/macros.h"

namespace mutualops {

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

// Detection order as one integer, so that the CUDA kernels order candidates with a single radix sort or
// select them with a radix select instead of a comparison sort per key: rank_key(a) < rank_key(b) exactly
// when ranks_before(a, b), for finite or infinite float scores (-0 ranks as +0, as the comparison sees them)
// and indices in [0, 2^32). The score's bits are flipped so that unsigned order is descending score order.
constexpr int64_t kRankKeyIndices = int64_t(1) << 32;

MUTUALOPS_HD uint32_t descending_bits(float score) {
  const float s = score + 0.0f;  // -0 + 0 is +0: equal scores get equal bits
  uint32_t bits;
  memcpy(&bits, &s, sizeof(bits));
  const uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~ascending;
}

MUTUALOPS_HD uint64_t rank_key(float score, int64_t index) {
  return (static_cast<uint64_t>(descending_bits(score)) << 32) | static_cast<uint32_t>(index);
}

// The same order for a signed 64-bit sort (torch sorts int64, not uint64).
MUTUALOPS_HD int64_t signed_rank_key(uint64_t key) { return static_cast<int64_t>(key ^ (uint64_t(1) << 63)); }

}  // namespace mutualops
