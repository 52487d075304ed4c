#pragma once

// The two kinds of box the NMS kernels suppress with: axis-aligned xyxy (box_math.h) and oriented xywhr
// (rotated_math.h). A kernel templated on the kind reads kCoords values per box and asks the kind whether a
// box is finite and how much two boxes overlap; the greedy machinery itself is written once.
#include "mutualops/box_math.h"
#include "mutualops/macros.h"
#include "mutualops/rotated_math.h"

namespace mutualops {

struct AxisAlignedBoxes {
  static constexpr int kCoords = 4;
  template <typename T, typename S>
  static MUTUALOPS_HD bool finite(const S* p) {
    return finite_box(load_box<T>(p));
  }
  template <typename T>
  static MUTUALOPS_HD T iou(const T* a, const T* b) {
    return box_iou(load_box<T>(a), load_box<T>(b));
  }
};

struct RotatedBoxes {
  static constexpr int kCoords = 5;
  template <typename T, typename S>
  static MUTUALOPS_HD bool finite(const S* p) {
    return finite_rotated_box(load_rotated_box<T>(p));
  }
  template <typename T>
  static MUTUALOPS_HD T iou(const T* a, const T* b) {
    return rotated_iou(load_rotated_box<T>(a), load_rotated_box<T>(b));
  }
};

}  // namespace mutualops
