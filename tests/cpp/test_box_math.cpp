// Plain C++ test of the shared host-and-device math (no torch): known values,
// the zero-union convention, 64-bit output offsets and the analytic gradient
// against central finite differences.
#include <cmath>
#include <cstdio>

#include "mutualops/box_math.h"

using mutualops::Box;
using mutualops::IouMode;

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

static void test_values() {
  const Box<double> a{0, 0, 2, 2}, b{1, 1, 3, 3};
  check(near(mutualops::box_iou(a, b), 1.0 / 7.0, 1e-15), "iou of two offset squares is 1/7");
  check(near(mutualops::box_overlap(a, b, IouMode::kGiou), 1.0 / 7.0 - 2.0 / 9.0, 1e-15),
        "giou subtracts the empty part of the enclosing box");
  check(near(mutualops::box_overlap(a, b, IouMode::kIof), 0.25, 1e-15), "iof is over the first box");
  check(near(mutualops::box_overlap(a, b, IouMode::kDiou), 1.0 / 7.0 - 2.0 / (18.0 + 1e-7), 1e-15),
        "diou subtracts centre distance over diagonal");
  check(mutualops::box_iou(a, a) == 1.0, "a box overlaps itself fully");
  const Box<float> p{5, 5, 5, 5};
  check(mutualops::box_iou(p, p) == 0.0f, "zero union gives 0, not NaN");
  check(mutualops::box_overlap(p, p, IouMode::kGiou) == 0.0f, "zero enclosing box gives 0");
  check(mutualops::box_overlap(p, p, IouMode::kCiou) == 0.0f, "ciou of two points is 0");
  const Box<float> flipped{3, 3, 1, 1};
  check(mutualops::box_area(flipped) == 0.0f, "x2 < x1 has area 0");
  check(mutualops::box_iou(flipped, Box<float>{0, 0, 4, 4}) == 0.0f, "a flipped box overlaps nothing");
  const Box<float> point{4, 4, 4, 4};
  check(std::fabs(mutualops::box_overlap(point, flipped, IouMode::kDiou)) <= 1.0f,
        "a flipped box stays inside the enclosing box: diou is bounded");
  const Box<float> touching{2, 0, 4, 2};
  check(mutualops::box_iou(Box<float>{0, 0, 2, 2}, touching) == 0.0f, "touching boxes do not overlap");
}

static void test_offsets() {
  // 50000 x 50000 outputs pass 2^31 elements: the last offset must not wrap.
  const int64_t n = 50000, m = 50000;
  check(mutualops::pair_offset(0, n - 1, m - 1, n, m) == n * m - 1, "offset past 2^31 in one image");
  check(mutualops::pair_offset(3, n - 1, m - 1, n, m) == 4 * n * m - 1, "offset past 2^33 in a batch");
  check(mutualops::pair_offset(1, 0, 0, 46341, 46341) == int64_t(46341) * 46341, "batch stride");
}

static double overlap_at(const double* c, IouMode mode) {
  return mutualops::box_overlap(Box<double>{c[0], c[1], c[2], c[3]}, Box<double>{c[4], c[5], c[6], c[7]}, mode);
}

static void test_gradient() {
  const IouMode modes[] = {IouMode::kIou, IouMode::kGiou, IouMode::kDiou, IouMode::kCiou, IouMode::kIof};
  const double cases[][8] = {{0.1, 0.2, 2.3, 1.9, 1.1, 0.7, 3.2, 3.5},
                             {0.0, 0.0, 5.0, 1.0, 4.0, -2.0, 6.0, 3.0},
                             {1.0, 1.0, 2.0, 4.0, 0.5, 0.2, 1.5, 1.7},
                             {0.0, 0.0, 1.0, 1.0, 3.0, 4.0, 5.0, 7.0}};
  for (const auto& c : cases) {
    for (IouMode mode : modes) {
      Box<double> ga{0, 0, 0, 0}, gb{0, 0, 0, 0};
      mutualops::box_overlap_backward(Box<double>{c[0], c[1], c[2], c[3]}, Box<double>{c[4], c[5], c[6], c[7]}, mode,
                                      1.0, &ga, &gb);
      const double analytic[8] = {ga.x1, ga.y1, ga.x2, ga.y2, gb.x1, gb.y1, gb.x2, gb.y2};
      bool ok = true;
      for (int k = 0; k < 8; ++k) {
        double up[8], down[8];
        for (int t = 0; t < 8; ++t) up[t] = down[t] = c[t];
        const double h = 1e-6;
        up[k] += h;
        down[k] -= h;
        double numeric = (overlap_at(up, mode) - overlap_at(down, mode)) / (2 * h);
        if (mode == IouMode::kCiou) {
          // CIoU treats alpha as a constant: differentiate with alpha frozen.
          const double* base = c;
          auto frozen = [&](const double* x) {
            Box<double> a{x[0], x[1], x[2], x[3]}, b{x[4], x[5], x[6], x[7]};
            Box<double> a0{base[0], base[1], base[2], base[3]}, b0{base[4], base[5], base[6], base[7]};
            const double iou0 = mutualops::box_iou(a0, b0);
            const double dt0 = mutualops::aspect_angle(mutualops::box_width(a0), mutualops::box_height(a0)) -
                               mutualops::aspect_angle(mutualops::box_width(b0), mutualops::box_height(b0));
            const double v0 = 0.40528473456935109 * dt0 * dt0;
            const double alpha = v0 / (1 - iou0 + v0 + 1e-7);
            const double dt = mutualops::aspect_angle(mutualops::box_width(a), mutualops::box_height(a)) -
                              mutualops::aspect_angle(mutualops::box_width(b), mutualops::box_height(b));
            return mutualops::box_overlap(a, b, IouMode::kDiou) - alpha * 0.40528473456935109 * dt * dt;
          };
          numeric = (frozen(up) - frozen(down)) / (2 * h);
        }
        ok = ok && near(analytic[k], numeric, 1e-5);
      }
      check(ok, "analytic gradient matches finite differences");
    }
  }
}

int main() {
  test_values();
  test_offsets();
  test_gradient();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
