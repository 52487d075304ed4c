// CUDA kernels of the box-IoU family: thin grid-stride loops over
// mutualops/box_math.h, one thread per output element.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops/box_iou.h"
#include "launch.cuh"

namespace mutualops {
namespace {

template <typename scalar_t, IouMode M>
__global__ void pairwise_kernel(const scalar_t* __restrict__ boxes1, const scalar_t* __restrict__ boxes2,
                                scalar_t* __restrict__ out, int64_t n, int64_t m, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = grid_start(); idx < total; idx += grid_stride()) {
    const int64_t col = idx % m;
    const int64_t row = idx / m;  // batch * n + i
    const int64_t b = row / n;
    const Box<acc_t> a = load_box<acc_t>(boxes1 + 4 * row);
    const Box<acc_t> c = load_box<acc_t>(boxes2 + 4 * (b * m + col));
    out[pair_offset(b, row - b * n, col, n, m)] = static_cast<scalar_t>(box_overlap<M>(a, c));
  }
}

template <typename scalar_t>
__global__ void aligned_kernel(const scalar_t* __restrict__ boxes1, const scalar_t* __restrict__ boxes2,
                               scalar_t* __restrict__ out, int64_t n, IouMode mode, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    out[i] = static_cast<scalar_t>(
        box_overlap(load_box<acc_t>(boxes1 + 4 * i), load_box<acc_t>(boxes2 + 4 * i), mode, static_cast<acc_t>(eps)));
  }
}

template <typename scalar_t>
__global__ void aligned_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ boxes1,
                                        const scalar_t* __restrict__ boxes2, scalar_t* __restrict__ grad1,
                                        scalar_t* __restrict__ grad2, int64_t n, IouMode mode, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    Box<acc_t> ga{0, 0, 0, 0}, gb{0, 0, 0, 0};
    box_overlap_backward(load_box<acc_t>(boxes1 + 4 * i), load_box<acc_t>(boxes2 + 4 * i), mode,
                         static_cast<acc_t>(grad[i]), &ga, &gb, static_cast<acc_t>(eps));
    store_box(ga, grad1 + 4 * i);
    store_box(gb, grad2 + 4 * i);
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode) {
  const auto bnm = check_pairwise(boxes1, boxes2);
  const IouMode iou_mode = parse_iou_mode(mode);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const at::Tensor b1 = boxes1.contiguous();
  const at::Tensor b2 = boxes2.contiguous();
  at::Tensor out =
      boxes1.dim() == 2 ? at::empty({bnm[1], bnm[2]}, b1.options()) : at::empty({bnm[0], bnm[1], bnm[2]}, b1.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_cuda", [&] {
    dispatch_iou_mode(iou_mode, [&](auto tag) {
      pairwise_kernel<scalar_t, decltype(tag)::value><<<grid_for(total), kThreads, 0, stream>>>(
          b1.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), bnm[1], bnm[2], total);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor box_iou_aligned_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode, double eps) {
  check_aligned(boxes1, boxes2, eps);
  const IouMode iou_mode = parse_iou_mode(mode);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const at::Tensor b1 = boxes1.contiguous();
  const at::Tensor b2 = boxes2.contiguous();
  const int64_t n = b1.size(0);
  at::Tensor out = at::empty({n}, b1.options());
  if (n == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_aligned_cuda", [&] {
    aligned_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(b1.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(),
                                                                   out.data_ptr<scalar_t>(), n, iou_mode, eps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> box_iou_aligned_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes1,
                                                                 const at::Tensor& boxes2, c10::string_view mode,
                                                                 double eps) {
  check_aligned_backward(grad, boxes1, boxes2, eps);
  const IouMode iou_mode = parse_iou_mode(mode);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const at::Tensor b1 = boxes1.contiguous();
  const at::Tensor b2 = boxes2.contiguous();
  const at::Tensor g = grad.to(b1.scalar_type()).contiguous();
  at::Tensor g1 = at::empty_like(b1);
  at::Tensor g2 = at::empty_like(b2);
  const int64_t n = b1.size(0);
  if (n == 0) return {g1, g2};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_aligned_backward_cuda", [&] {
    aligned_backward_kernel<scalar_t>
        <<<grid_for(n), kThreads, 0, stream>>>(g.data_ptr<scalar_t>(), b1.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(),
                                               g1.data_ptr<scalar_t>(), g2.data_ptr<scalar_t>(), n, iou_mode, eps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {g1, g2};
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
  m.impl("box_iou_aligned", &box_iou_aligned_cuda);
  m.impl("box_iou_aligned_backward", &box_iou_aligned_backward_cuda);
}

}  // namespace mutualops
