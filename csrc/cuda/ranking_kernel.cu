// CUDA kernels of the ranking family. A segmented sort (two stable device
// sorts: by value, then by group) orders each group's values; run boundaries
// come from a scan of run starts; ranks and correlations use mutualops/rank_math.h.
// No host synchronisation besides sizing the output (resolve_groups).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops/ranking.h"
#include "launch.cuh"

namespace mutualops {
namespace {

// At each sorted position: whether a run of equal values begins there (a new
// group always begins one), and, where a group begins, its first position.
__global__ void run_starts_kernel(const int64_t* __restrict__ group, const double* __restrict__ value, int64_t n,
                                  int64_t* __restrict__ new_run, int64_t* __restrict__ group_start) {
  for (int64_t p = grid_start(); p < n; p += grid_stride()) {
    const bool new_group = p == 0 || group[p] != group[p - 1];
    new_run[p] = new_group || value[p] != value[p - 1] ? 1 : 0;
    if (new_group) group_start[group[p]] = p;
  }
}

// run_start[r] = the first position of run r, from the inclusive count of runs.
__global__ void run_start_positions_kernel(const int64_t* __restrict__ new_run, const int64_t* __restrict__ runs_so_far,
                                           int64_t n, int64_t* __restrict__ run_start) {
  for (int64_t p = grid_start(); p < n; p += grid_stride()) {
    if (new_run[p]) run_start[runs_so_far[p] - 1] = p;
  }
}

__global__ void assign_ranks_kernel(const int64_t* __restrict__ perm, const int64_t* __restrict__ group,
                                    const int64_t* __restrict__ group_start, const int64_t* __restrict__ runs_so_far,
                                    const int64_t* __restrict__ run_start, const int64_t* __restrict__ nan_count,
                                    int64_t n, TieMethod method, double* __restrict__ out) {
  for (int64_t p = grid_start(); p < n; p += grid_stride()) {
    const int64_t gb = group_start[group[p]];
    // A run ends where the next begins; run_start[number of runs] is n.
    const int64_t run = runs_so_far[p] - 1;
    const int64_t dense = runs_so_far[p] - runs_so_far[gb];
    out[perm[p]] =
        nan_count[group[p]] > 0 ? NAN : tie_rank(method, p - gb, run_start[run] - gb, run_start[run + 1] - gb, dense);
  }
}

__global__ void centred_rank_sums_kernel(const int64_t* __restrict__ ids, const double* __restrict__ rx,
                                         const double* __restrict__ ry, const int64_t* __restrict__ sizes, int64_t n,
                                         int64_t num_groups, double* __restrict__ sums) {
  for (int64_t p = grid_start(); p < n; p += grid_stride()) {
    const int64_t g = ids[p];
    const double cx = centred_rank(rx[p], sizes[g]), cy = centred_rank(ry[p], sizes[g]);
    atomicAdd(sums + g, cx * cy);
    atomicAdd(sums + num_groups + g, cx * cx);
    atomicAdd(sums + 2 * num_groups + g, cy * cy);
  }
}

__global__ void correlation_kernel(const int64_t* __restrict__ count, const double* __restrict__ sums,
                                   int64_t num_groups, double* __restrict__ out) {
  for (int64_t g = grid_start(); g < num_groups; g += grid_stride()) {
    out[g] = correlation_from_sums(count[g], sums[g], sums[num_groups + g], sums[2 * num_groups + g]);
  }
}

// Ranks of `values` (float64) within groups `ids` (int64, in [0, num_groups)).
at::Tensor rank_groups(const at::Tensor& values, const at::Tensor& ids, int64_t num_groups, TieMethod method) {
  const int64_t n = values.size(0);
  at::Tensor out = at::empty({n}, values.options());
  if (n == 0) return out;
  // Stable sorts: by value, then by group, so that each group is contiguous,
  // ascending, with equal values in order of appearance (ordinal ties).
  auto by_value = at::sort(values, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor perm_v = std::get<1>(by_value);
  auto by_group = at::sort(ids.index_select(0, perm_v), /*stable=*/true, 0, false);
  const at::Tensor group_sorted = std::get<0>(by_group);
  const at::Tensor perm = perm_v.index_select(0, std::get<1>(by_group));
  const at::Tensor value_sorted = values.index_select(0, perm);
  const at::Tensor nan_count = at::zeros({num_groups}, ids.options()).index_add_(0, ids, values.isnan().to(at::kLong));

  // Run boundaries by a scan of run starts and a scatter, not by min/max
  // scans of positions: torch's cummax/cummin took most of the time.
  const auto longs = ids.options();
  at::Tensor new_run = at::empty({n}, longs);
  at::Tensor group_start = at::empty({num_groups}, longs);
  const auto stream = at::cuda::getCurrentCUDAStream();
  run_starts_kernel<<<grid_for(n), kThreads, 0, stream>>>(group_sorted.data_ptr<int64_t>(),
                                                          value_sorted.data_ptr<double>(), n,
                                                          new_run.data_ptr<int64_t>(), group_start.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor runs_so_far = new_run.cumsum(0);
  at::Tensor run_start = at::full({n + 1}, n, longs);
  run_start_positions_kernel<<<grid_for(n), kThreads, 0, stream>>>(
      new_run.data_ptr<int64_t>(), runs_so_far.data_ptr<int64_t>(), n, run_start.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  assign_ranks_kernel<<<grid_for(n), kThreads, 0, stream>>>(
      perm.data_ptr<int64_t>(), group_sorted.data_ptr<int64_t>(), group_start.data_ptr<int64_t>(),
      runs_so_far.data_ptr<int64_t>(), run_start.data_ptr<int64_t>(), nan_count.data_ptr<int64_t>(), n, method,
      out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor rank_cuda(const at::Tensor& x, const std::optional<at::Tensor>& groups, c10::string_view ties) {
  check_values(x, "x");
  const TieMethod method = parse_tie_method(ties);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [ids, num_groups] = dense_groups(resolve_groups(x, groups, std::nullopt));
  return rank_groups(x.to(at::kDouble).contiguous(), ids, num_groups, method);
}

at::Tensor spearman_cuda(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& groups,
                         std::optional<int64_t> num_groups) {
  check_values(x, "x");
  check_values(y, "y");
  TORCH_CHECK_VALUE(x.size(0) == y.size(0), "x and y must have the same length, got ", x.size(0), " and ", y.size(0));
  TORCH_CHECK_VALUE(x.device() == y.device(), "x and y must be on the same device");
  const c10::cuda::CUDAGuard guard(x.device());
  auto [ids, count] = resolve_groups(x, groups, num_groups);
  at::Tensor out = at::empty({count}, x.options().dtype(at::kDouble));
  if (count == 0) return out;
  const at::Tensor rx = rank_groups(x.to(at::kDouble).contiguous(), ids, count, TieMethod::kAverage);
  const at::Tensor ry = rank_groups(y.to(at::kDouble).contiguous(), ids, count, TieMethod::kAverage);
  const at::Tensor sizes = at::zeros({count}, ids.options()).index_add_(0, ids, at::ones_like(ids));
  at::Tensor sums = at::zeros({3, count}, out.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = x.size(0);
  if (n > 0) {
    centred_rank_sums_kernel<<<grid_for(n), kThreads, 0, stream>>>(ids.data_ptr<int64_t>(), rx.data_ptr<double>(),
                                                                   ry.data_ptr<double>(), sizes.data_ptr<int64_t>(), n,
                                                                   count, sums.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  correlation_kernel<<<grid_for(count), kThreads, 0, stream>>>(sizes.data_ptr<int64_t>(), sums.data_ptr<double>(),
                                                               count, out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CUDA, m) {
  m.impl("rank", &rank_cuda);
  m.impl("spearman", &spearman_cuda);
}

}  // namespace mutualops
