// CPU kernel of the NMS family: candidates are bucketed by idxs (one sort by
// key, score, index), then each bucket runs greedy NMS in parallel, with IoU
// from mutualops/box_math.h. Memory O(N): no N x N matrix.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../ops/nms.h"
#include "mutualops/box_math.h"

namespace mutualops {
namespace {

template <typename scalar_t>
at::Tensor batched_nms_typed(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                             double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = boxes.size(0);
  const scalar_t* pb = boxes.data_ptr<scalar_t>();
  const scalar_t* ps = scores.data_ptr<scalar_t>();
  const int64_t* pk = idxs.data_ptr<int64_t>();
  const auto longs = at::TensorOptions().dtype(at::kLong);

  // Finite candidates, ordered by (key, score descending, index).
  at::Tensor order_t = at::empty({n}, longs);
  int64_t* order = order_t.data_ptr<int64_t>();
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t s = static_cast<acc_t>(ps[i]);
    const Box<acc_t> b = load_box<acc_t>(pb + 4 * i);
    if (std::isfinite(s) && std::isfinite(b.x1) && std::isfinite(b.y1) && std::isfinite(b.x2) &&
        std::isfinite(b.y2)) {
      order[m++] = i;
    }
  }
  std::sort(order, order + m, [&](int64_t a, int64_t b) {
    if (pk[a] != pk[b]) return pk[a] < pk[b];
    const acc_t sa = static_cast<acc_t>(ps[a]), sb = static_cast<acc_t>(ps[b]);
    if (sa != sb) return sa > sb;
    return a < b;
  });

  // Boxes in that order as planes, so that the suppression loop vectorizes.
  at::Tensor planes = at::empty({5, m}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* x1 = planes.data_ptr<acc_t>();
  acc_t *y1 = x1 + m, *x2 = y1 + m, *y2 = x2 + m, *area = y2 + m;
  std::vector<int64_t> bucket_start;
  for (int64_t p = 0; p < m; ++p) {
    const Box<acc_t> b = load_box<acc_t>(pb + 4 * order[p]);
    x1[p] = b.x1, y1[p] = b.y1, x2[p] = b.x2, y2[p] = b.y2, area[p] = box_area(b);
    if (p == 0 || pk[order[p]] != pk[order[p - 1]]) bucket_start.push_back(p);
  }
  bucket_start.push_back(m);
  const acc_t threshold = nms_threshold<acc_t>(iou_threshold);

  at::Tensor removed_t = at::zeros({m}, at::TensorOptions().dtype(at::kByte));
  uint8_t* removed = removed_t.data_ptr<uint8_t>();
  const int64_t num_buckets = static_cast<int64_t>(bucket_start.size()) - 1;
  at::parallel_for(0, num_buckets, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t e = bucket_start[k + 1];
      for (int64_t i = bucket_start[k]; i < e; ++i) {
        if (removed[i]) continue;
        const Box<acc_t> a{x1[i], y1[i], x2[i], y2[i]};
        const BoxShape<acc_t> sa{area[i], acc_t(0)};
        for (int64_t j = i + 1; j < e; ++j) {
          const Box<acc_t> b{x1[j], y1[j], x2[j], y2[j]};
          const BoxShape<acc_t> sb{area[j], acc_t(0)};
          removed[j] |= static_cast<uint8_t>(box_overlap<IouMode::kIou>(a, b, sa, sb) > threshold);
        }
      }
    }
  });

  at::Tensor keep = at::empty({m}, longs);
  int64_t* pkeep = keep.data_ptr<int64_t>();
  int64_t kept = 0;
  for (int64_t p = 0; p < m; ++p) {
    if (!removed[p]) pkeep[kept++] = order[p];
  }
  std::sort(pkeep, pkeep + kept, [&](int64_t a, int64_t b) {
    const acc_t sa = static_cast<acc_t>(ps[a]), sb = static_cast<acc_t>(ps[b]);
    return sa != sb ? sa > sb : a < b;
  });
  return keep.narrow(0, 0, kept).clone();
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_nms_args(boxes, scores, idxs, iou_threshold);
  const at::Tensor b = boxes.contiguous(), s = scores.contiguous(), k = idxs.to(at::kLong).contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "batched_nms_cpu", [&] {
    keep = batched_nms_typed<scalar_t>(b, s, k, iou_threshold);
  });
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CPU, m) {
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace mutualops
