// Plain C++ test of the oriented-box math (no torch): exact IoU on shapes whose overlap is known in closed
// form, the degenerate conventions, and probiou's fixed points.
#include <cmath>
#include <cstdio>

#include "mutualops/rotated_math.h"

using mutualops::RotatedBox;

static int passed = 0, failed = 0;

static void check(bool ok, const char* what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s\n", what);
  }
}

static bool near(double a, double b, double tol) { return std::fabs(a - b) <= tol * (1.0 + std::fabs(b)); }

static void test_exact_iou() {
  const double pi = 3.14159265358979323846;
  const RotatedBox<double> square{0, 0, 2, 2, 0};
  check(mutualops::rotated_iou(square, square) == 1.0, "a box overlaps itself fully");
  check(near(mutualops::rotated_iou(square, RotatedBox<double>{1, 0, 2, 2, 0}), 1.0 / 3.0, 1e-15),
        "half a square's width apart: IoU 1/3");
  check(near(mutualops::rotated_iou(square, RotatedBox<double>{0, 0, 2, 2, pi / 2}), 1.0, 1e-15),
        "a square turned a quarter is itself");
  // A square and the same square turned 45 degrees meet in a regular octagon of area 8 (sqrt(2) - 1) s^2 / 2
  // for side s = 2: IoU = octagon / (2 * 4 - octagon).
  const double octagon = 8.0 * (std::sqrt(2.0) - 1.0);
  check(near(mutualops::rotated_iou(square, RotatedBox<double>{0, 0, 2, 2, pi / 4}), octagon / (8.0 - octagon), 1e-14),
        "a square and its 45-degree turn meet in an octagon");
  check(near(mutualops::rotated_iou(RotatedBox<double>{0, 0, 4, 2, 0}, RotatedBox<double>{0, 0, 2, 4, pi / 2}), 1.0,
             1e-15),
        "w and h swapped and turned a quarter: the same box");
  check(mutualops::rotated_iou(square, RotatedBox<double>{2, 0, 2, 2, 0}) == 0.0, "a shared edge has no area");
  check(mutualops::rotated_iou(square, RotatedBox<double>{2, 2, 2, 2, 0}) == 0.0, "touching corners have no area");
  check(mutualops::rotated_iou(square, RotatedBox<double>{50, 0, 2, 2, 0.3}) == 0.0, "far boxes do not overlap");
  check(near(mutualops::rotated_iou(square, RotatedBox<double>{0, 0, 1, 1, 0.7}), 0.25, 1e-15),
        "a nested box: IoU is the area ratio");
  const RotatedBox<float> point{3, 3, 0, 0, 0};
  check(mutualops::rotated_iou(point, point) == 0.0f, "zero union gives 0, not NaN");
  check(mutualops::rotated_iou(RotatedBox<float>{0, 0, -2, 2, 0}, RotatedBox<float>{0, 0, 2, 2, 0}) == 0.0f,
        "a negative width is area 0");
  check(std::isnan(mutualops::rotated_iou(RotatedBox<float>{NAN, 0, 2, 2, 0}, RotatedBox<float>{0, 0, 2, 2, 0})),
        "a non-finite box gives NaN");
  const RotatedBox<float> far_a{1e6f, -1e6f, 10, 6, 0.2f}, far_b{1e6f + 3, -1e6f + 1, 10, 6, 0.2f};
  const RotatedBox<double> near_a{0, 0, 10, 6, 0.2}, near_b{3, 1, 10, 6, 0.2};
  check(near(mutualops::rotated_iou(far_a, far_b), mutualops::rotated_iou(near_a, near_b), 1e-5),
        "boxes at 1e6 overlap as they do at the origin (float32)");
}

static void test_probiou() {
  const RotatedBox<double> a{10, 20, 8, 4, 0.3};
  const double eps = 1e-7;
  const double self = mutualops::rotated_overlap(a, a, mutualops::RotatedMode::kProbiou, eps);
  // bd clamps to eps: 1 - sqrt(1 - exp(-eps) + eps).
  check(near(self, 1.0 - std::sqrt(1.0 - std::exp(-eps) + eps), 1e-12), "probiou of a box with itself");
  const RotatedBox<double> b{40, -30, 5, 9, 1.1};
  const double ab = mutualops::rotated_overlap(a, b, mutualops::RotatedMode::kProbiou, eps);
  const double ba = mutualops::rotated_overlap(b, a, mutualops::RotatedMode::kProbiou, eps);
  check(near(ab, ba, 1e-14) && ab < 1e-3, "probiou is symmetric and small for far boxes");
  const RotatedBox<double> turned{10, 20, 8, 4, 0.3 + 3.14159265358979323846};
  check(near(mutualops::rotated_overlap(a, turned, mutualops::RotatedMode::kProbiou, eps), self, 1e-12),
        "a half turn does not change the Gaussian");
}

int main() {
  test_exact_iou();
  test_probiou();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
