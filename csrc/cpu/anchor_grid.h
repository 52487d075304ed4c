#pragma once

// Uniform bucket grids over the anchor points, so that the CPU task-aligned
// kernel visits the anchors near a GT's region, and the GTs near an anchor,
// instead of all of them. Regions are bucketed by an axis-aligned box that
// bounds them (the region itself for axis-aligned GTs); only which elements are
// visited changes: each is still tested by the exact predicate (the kind's
// `inside`), so results do not.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "mutualops/task_aligned_math.h"

namespace mutualops {

// Cells of an nx x ny grid laid over [x0, x1] x [y0, y1]. The map from a
// coordinate to its column (row) is monotone, as every rounding step in it is,
// so a point with lo <= x <= hi lies in a column between lo's and hi's: the
// cells of a region's corners bound every point inside it. Coordinates beyond
// the extent fall in the border cells.
class GridMap {
 public:
  GridMap(double x0, double x1, double y0, double y1, int64_t nx, int64_t ny)
      : x0_(x0),
        x1_(x1),
        y0_(y0),
        y1_(y1),
        nx_(nx),
        ny_(ny),
        sx_(x1 > x0 ? nx / (x1 - x0) : 0.0),
        sy_(y1 > y0 ? ny / (y1 - y0) : 0.0) {}

  // The same extent in at most side x side cells.
  GridMap coarser(int64_t side) const { return GridMap(x0_, x1_, y0_, y1_, std::min(nx_, side), std::min(ny_, side)); }

  int64_t nx() const { return nx_; }
  int64_t ny() const { return ny_; }
  int64_t cells() const { return nx_ * ny_; }
  int64_t column(double x) const { return cell(std::floor((x - x0_) * sx_), nx_); }
  int64_t row(double y) const { return cell(std::floor((y - y0_) * sy_), ny_); }

 private:
  static int64_t cell(double c, int64_t count) {
    if (!(c > 0)) return 0;  // NaN too (never met: regions are checked first)
    return c < static_cast<double>(count - 1) ? static_cast<int64_t>(c) : count - 1;
  }

  double x0_, x1_, y0_, y1_;
  int64_t nx_, ny_;
  double sx_, sy_;
};

// Bounds that can hold no point: tal_inside needs x1 < x < x2 and y1 < y < y2
// (false for NaN corners, which an overflowing GT may give); the bounds of an
// oriented region are widened by a margin, so that they are never this thin.
template <typename T>
bool empty_region(const Box<T>& r) {
  return !(r.x1 < r.x2) || !(r.y1 < r.y2);
}

// The anchor points bucketed by cell (compressed rows): cell c holds entries
// start[c] .. start[c + 1] - 1, in increasing anchor order, with their
// coordinates alongside so that a scan reads them contiguously.
template <typename T>
class AnchorGrid {
 public:
  AnchorGrid(const T* anchors, int64_t n) : map_(extent(anchors, n)) {
    std::vector<int64_t> cell_of(n);
    start_.assign(map_.cells() + 1, 0);
    for (int64_t a = 0; a < n; ++a) {
      cell_of[a] = map_.row(anchors[2 * a + 1]) * map_.nx() + map_.column(anchors[2 * a]);
      ++start_[cell_of[a] + 1];
    }
    for (int64_t c = 0; c < map_.cells(); ++c) start_[c + 1] += start_[c];
    std::vector<int64_t> fill(start_.begin(), start_.end() - 1);
    anchor_.resize(n), x_.resize(n), y_.resize(n);
    for (int64_t a = 0; a < n; ++a) {
      const int64_t e = fill[cell_of[a]]++;
      anchor_[e] = a, x_[e] = anchors[2 * a], y_[e] = anchors[2 * a + 1];
    }
  }

  const GridMap& map() const { return map_; }

  // The anchors within `bounds` that `inside(x, y)` accepts, in no particular
  // order, into `found` (which can hold every anchor); returns their count.
  template <typename Inside>
  int64_t inside(const Box<T>& bounds, Inside inside, int64_t* found) const {
    if (empty_region(bounds)) return 0;
    const int64_t c0 = map_.column(bounds.x1), c1 = map_.column(bounds.x2);
    const int64_t r0 = map_.row(bounds.y1), r1 = map_.row(bounds.y2);
    int64_t count = 0;
    for (int64_t r = r0; r <= r1; ++r) {
      const int64_t lo = start_[r * map_.nx() + c0], hi = start_[r * map_.nx() + c1 + 1];
      for (int64_t e = lo; e < hi; ++e) {
        found[count] = anchor_[e];
        count += inside(x_[e], y_[e]);
      }
    }
    return count;
  }

 private:
  static GridMap extent(const T* anchors, int64_t n) {
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int64_t a = 0; a < n; ++a) {
      x0 = std::min<double>(x0, anchors[2 * a]), x1 = std::max<double>(x1, anchors[2 * a]);
      y0 = std::min<double>(y0, anchors[2 * a + 1]), y1 = std::max<double>(y1, anchors[2 * a + 1]);
    }
    // About two anchors per cell; one column (row) when every anchor shares its x (y).
    const int64_t side = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(std::sqrt(n / 2.0))), 1, 2048);
    return GridMap(x0, x1, y0, y1, x1 > x0 ? side : 1, y1 > y0 ? side : 1);
  }

  GridMap map_;
  std::vector<int64_t> start_, anchor_;
  std::vector<T> x_, y_;
};

// The real GTs of one image bucketed by the cells of `map` that the bounds of
// their regions overlap, each cell's GTs in increasing order: the GTs whose
// region may hold a point are those of the point's cell.
template <typename T>
class RegionGrid {
 public:
  struct Gts {
    const int64_t *first, *last;
    const int64_t* begin() const { return first; }
    const int64_t* end() const { return last; }
  };

  explicit RegionGrid(const GridMap& map) : map_(map) {}

  // Buckets GTs 0 .. gmax - 1 of `bounds` [gmax, 4] that `valid` marks. Returns false, holding nothing, when
  // that would take more than `max_entries` entries (regions spanning many cells), for the caller to visit
  // every GT instead.
  bool build(const T* bounds, const bool* valid, int64_t gmax, int64_t max_entries) {
    start_.assign(map_.cells() + 1, 0);
    int64_t entries = 0;
    for (int64_t g = 0; g < gmax; ++g) {
      if (!cells_of(bounds, valid, g)) continue;
      entries += (c1_ - c0_ + 1) * (r1_ - r0_ + 1);
      if (entries > max_entries) return false;
      for (int64_t r = r0_; r <= r1_; ++r) {
        for (int64_t c = c0_; c <= c1_; ++c) ++start_[r * map_.nx() + c + 1];
      }
    }
    for (int64_t c = 0; c < map_.cells(); ++c) start_[c + 1] += start_[c];
    std::vector<int64_t> fill(start_.begin(), start_.end() - 1);
    gt_.resize(entries);
    for (int64_t g = 0; g < gmax; ++g) {
      if (!cells_of(bounds, valid, g)) continue;
      for (int64_t r = r0_; r <= r1_; ++r) {
        for (int64_t c = c0_; c <= c1_; ++c) gt_[fill[r * map_.nx() + c]++] = g;
      }
    }
    return true;
  }

  Gts at(T x, T y) const {
    const int64_t c = map_.row(y) * map_.nx() + map_.column(x);
    return {gt_.data() + start_[c], gt_.data() + start_[c + 1]};
  }

 private:
  bool cells_of(const T* bounds, const bool* valid, int64_t g) {
    const Box<T> region = load_box<T>(bounds + 4 * g);
    if (!valid[g] || empty_region(region)) return false;
    c0_ = map_.column(region.x1), c1_ = map_.column(region.x2);
    r0_ = map_.row(region.y1), r1_ = map_.row(region.y2);
    return true;
  }

  GridMap map_;
  int64_t c0_ = 0, c1_ = 0, r0_ = 0, r1_ = 0;
  std::vector<int64_t> start_, gt_;
};

}  // namespace mutualops
