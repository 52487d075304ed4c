// CPU kernels of the box-IoU family: loops over mutualops/box_math.h.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../ops/box_iou.h"
#include "simd.h"

namespace mutualops {
namespace {

// Rows of the output handled by one task: enough pairs to amortise the
// scheduling cost, whatever the number of columns.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1)); }

// One output row: box a against the planes of boxes2 (contiguous lanes).
template <IouMode M, typename acc_t, typename scalar_t>
MUTUALOPS_CPU_CLONES void overlap_row(const Box<acc_t>& a, const BoxShape<acc_t>& sa, const acc_t* __restrict__ x1,
                                      const acc_t* __restrict__ y1, const acc_t* __restrict__ x2,
                                      const acc_t* __restrict__ y2, const acc_t* __restrict__ area,
                                      const acc_t* __restrict__ angle, scalar_t* __restrict__ row, int64_t m) {
  for (int64_t j = 0; j < m; ++j) {
    row[j] = static_cast<scalar_t>(
        box_overlap<M>(a, Box<acc_t>{x1[j], y1[j], x2[j], y2[j]}, sa, BoxShape<acc_t>{area[j], angle[j]}));
  }
}

template <typename scalar_t, IouMode M>
void pairwise_rows(const scalar_t* boxes1, const scalar_t* boxes2, scalar_t* out, int64_t batch, int64_t n, int64_t m) {
  using acc_t = at::opmath_type<scalar_t>;
  // boxes2 as six planes (x1, y1, x2, y2, area, angle) in the math type: O(B*M)
  // scratch that lets the inner loop load contiguous lanes and vectorize.
  at::Tensor planes = at::empty({6, batch * m}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* px1 = planes.data_ptr<acc_t>();
  acc_t* py1 = px1 + batch * m;
  acc_t* px2 = py1 + batch * m;
  acc_t* py2 = px2 + batch * m;
  acc_t* parea = py2 + batch * m;
  acc_t* pangle = parea + batch * m;
  at::parallel_for(0, batch * m, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Box<acc_t> b = load_box<acc_t>(boxes2 + 4 * k);
      px1[k] = b.x1;
      py1[k] = b.y1;
      px2[k] = b.x2;
      py2[k] = b.y2;
      const BoxShape<acc_t> shape = box_shape<M>(b);
      parea[k] = shape.area;
      pangle[k] = shape.angle;
    }
  });
  at::parallel_for(0, batch * n, row_grain(m), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / n;
      const Box<acc_t> a = load_box<acc_t>(boxes1 + 4 * r);
      const BoxShape<acc_t> sa = box_shape<M>(a);
      const int64_t base = b * m;
      overlap_row<M>(a, sa, px1 + base, py1 + base, px2 + base, py2 + base, parea + base, pangle + base,
                     out + pair_offset(b, r - b * n, 0, n, m), m);
    }
  });
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode) {
  const auto sizes = check_pairwise(boxes1, boxes2);
  const IouMode iou_mode = parse_iou_mode(mode);
  const at::Tensor b1 = boxes1.contiguous();
  const at::Tensor b2 = boxes2.contiguous();
  at::Tensor out = boxes1.dim() == 2 ? at::empty({sizes[1], sizes[2]}, b1.options())
                                     : at::empty({sizes[0], sizes[1], sizes[2]}, b1.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_cpu", [&] {
    dispatch_iou_mode(iou_mode, [&](auto tag) {
      pairwise_rows<scalar_t, decltype(tag)::value>(b1.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(),
                                                    out.data_ptr<scalar_t>(), sizes[0], sizes[1], sizes[2]);
    });
  });
  return out;
}

at::Tensor box_iou_aligned_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode, double eps) {
  check_aligned(boxes1, boxes2, eps);
  const IouMode iou_mode = parse_iou_mode(mode);
  const at::Tensor b1 = boxes1.contiguous();
  const at::Tensor b2 = boxes2.contiguous();
  at::Tensor out = at::empty({b1.size(0)}, b1.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_aligned_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p1 = b1.data_ptr<scalar_t>();
    const scalar_t* p2 = b2.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, b1.size(0), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        o[i] = static_cast<scalar_t>(
            box_overlap(load_box<acc_t>(p1 + 4 * i), load_box<acc_t>(p2 + 4 * i), iou_mode, static_cast<acc_t>(eps)));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> box_iou_aligned_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes1,
                                                                const at::Tensor& boxes2, c10::string_view mode,
                                                                double eps) {
  check_aligned_backward(grad, boxes1, boxes2, eps);
  const IouMode iou_mode = parse_iou_mode(mode);
  const at::Tensor b1 = boxes1.contiguous();
  const at::Tensor b2 = boxes2.contiguous();
  const at::Tensor g = grad.to(b1.scalar_type()).contiguous();
  at::Tensor g1 = at::empty_like(b1);
  at::Tensor g2 = at::empty_like(b2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_aligned_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p1 = b1.data_ptr<scalar_t>();
    const scalar_t* p2 = b2.data_ptr<scalar_t>();
    const scalar_t* pg = g.data_ptr<scalar_t>();
    scalar_t* o1 = g1.data_ptr<scalar_t>();
    scalar_t* o2 = g2.data_ptr<scalar_t>();
    at::parallel_for(0, b1.size(0), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        Box<acc_t> ga{0, 0, 0, 0}, gb{0, 0, 0, 0};
        box_overlap_backward(load_box<acc_t>(p1 + 4 * i), load_box<acc_t>(p2 + 4 * i), iou_mode,
                             static_cast<acc_t>(pg[i]), &ga, &gb, static_cast<acc_t>(eps));
        store_box(ga, o1 + 4 * i);
        store_box(gb, o2 + 4 * i);
      }
    });
  });
  return {g1, g2};
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
  m.impl("box_iou_aligned", &box_iou_aligned_cpu);
  m.impl("box_iou_aligned_backward", &box_iou_aligned_backward_cpu);
}

}  // namespace mutualops
