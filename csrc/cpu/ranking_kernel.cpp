// CPU kernels of the ranking family: a counting sort buckets elements by
// group, then groups are sorted and ranked in parallel, using the shared
// arithmetic of mutualops/rank_math.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "../ops/ranking.h"

namespace mutualops {
namespace {

// Element indices bucketed by group, in their original order within a group,
// and the bucket offsets: O(n + G), no comparison sort. Scratch is allocated
// as tensors so that memory profiling sees it.
struct GroupBuckets {
  at::Tensor order;    // [n]
  at::Tensor offsets;  // [G + 1]
};

GroupBuckets bucket_by_group(const int64_t* groups, int64_t n, int64_t num_groups) {
  const auto opts = at::TensorOptions().dtype(at::kLong);
  GroupBuckets b{at::empty({n}, opts), at::zeros({num_groups + 1}, opts)};
  int64_t* off = b.offsets.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) ++off[groups[i] + 1];
  for (int64_t g = 0; g < num_groups; ++g) off[g + 1] += off[g];
  at::Tensor cursor_t = b.offsets.clone();
  int64_t* cursor = cursor_t.data_ptr<int64_t>();
  int64_t* order = b.order.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) order[cursor[groups[i]]++] = i;
  return b;
}

// Ranks the elements idx[0..len) of one group by key into out[element],
// sorting (value, index) pairs gathered into `pairs` (the task's scratch, so
// that the sort runs on contiguous memory). A group holding a NaN gets NaN
// ranks (scipy propagates).
template <typename V>
void rank_group(const V* key, const int64_t* idx, int64_t len, TieMethod method, double* out,
                std::vector<std::pair<double, int64_t>>& pairs) {
  pairs.resize(len);
  for (int64_t k = 0; k < len; ++k) {
    const double v = static_cast<double>(key[idx[k]]);
    if (std::isnan(v)) {
      for (int64_t t = 0; t < len; ++t) out[idx[t]] = NAN;
      return;
    }
    pairs[k] = {v, idx[k]};
  }
  // Equal values keep their order of appearance through the index: what the
  // ordinal method needs.
  std::sort(pairs.begin(), pairs.end());
  int64_t dense = 0;
  for (int64_t begin = 0; begin < len;) {
    int64_t end = begin + 1;
    while (end < len && pairs[end].first == pairs[begin].first) ++end;
    for (int64_t p = begin; p < end; ++p) out[pairs[p].second] = tie_rank(method, p, begin, end, dense);
    ++dense;
    begin = end;
  }
}

int64_t group_grain(int64_t n, int64_t num_groups) {
  // About 2048 elements per task, whatever the group sizes.
  const int64_t per_group = std::max<int64_t>(1, n / std::max<int64_t>(num_groups, 1));
  return std::max<int64_t>(1, 2048 / per_group);
}

at::Tensor rank_cpu(const at::Tensor& x, const std::optional<at::Tensor>& groups, c10::string_view ties) {
  check_values(x, "x");
  const TieMethod method = parse_tie_method(ties);
  auto [ids, num_groups] = dense_groups(resolve_groups(x, groups, std::nullopt));
  const at::Tensor xc = x.contiguous();
  const int64_t n = xc.size(0);
  at::Tensor out = at::empty({n}, xc.options().dtype(at::kDouble));
  if (n == 0) return out;
  GroupBuckets buckets = bucket_by_group(ids.data_ptr<int64_t>(), n, num_groups);
  double* o = out.data_ptr<double>();
  const int64_t* off = buckets.offsets.data_ptr<int64_t>();
  int64_t* order = buckets.order.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "rank_cpu", [&] {
    const scalar_t* key = xc.data_ptr<scalar_t>();
    at::parallel_for(0, num_groups, group_grain(n, num_groups), [&](int64_t begin, int64_t end) {
      std::vector<std::pair<double, int64_t>> pairs;
      for (int64_t g = begin; g < end; ++g) {
        rank_group(key, order + off[g], off[g + 1] - off[g], method, o, pairs);
      }
    });
  });
  return out;
}

at::Tensor spearman_cpu(const at::Tensor& x, const at::Tensor& y, const std::optional<at::Tensor>& groups,
                        std::optional<int64_t> num_groups) {
  check_values(x, "x");
  check_values(y, "y");
  TORCH_CHECK_VALUE(x.size(0) == y.size(0), "x and y must have the same length, got ", x.size(0), " and ", y.size(0));
  auto [ids, count] = resolve_groups(x, groups, num_groups);
  const at::Tensor xc = x.to(at::kDouble).contiguous();
  const at::Tensor yc = y.to(at::kDouble).contiguous();
  const int64_t n = xc.size(0);
  at::Tensor out = at::empty({count}, xc.options());
  if (count == 0) return out;
  GroupBuckets buckets = bucket_by_group(ids.data_ptr<int64_t>(), n, count);
  at::Tensor ranks = at::empty({2, n}, xc.options());
  const int64_t* order = buckets.order.data_ptr<int64_t>();
  const int64_t* off = buckets.offsets.data_ptr<int64_t>();
  double* rx = ranks.data_ptr<double>();
  double* ry = rx + n;
  const double* px = xc.data_ptr<double>();
  const double* py = yc.data_ptr<double>();
  double* o = out.data_ptr<double>();
  at::parallel_for(0, count, group_grain(n, count), [&](int64_t begin, int64_t end) {
    std::vector<std::pair<double, int64_t>> pairs;
    for (int64_t g = begin; g < end; ++g) {
      const int64_t* idx = order + off[g];
      const int64_t len = off[g + 1] - off[g];
      rank_group(px, idx, len, TieMethod::kAverage, rx, pairs);
      rank_group(py, idx, len, TieMethod::kAverage, ry, pairs);
      double sxy = 0, sxx = 0, syy = 0;
      for (int64_t k = 0; k < len; ++k) {
        const int64_t i = idx[k];
        const double cx = centred_rank(rx[i], len), cy = centred_rank(ry[i], len);
        sxy += cx * cy;
        sxx += cx * cx;
        syy += cy * cy;
      }
      o[g] = correlation_from_sums(len, sxy, sxx, syy);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CPU, m) {
  m.impl("rank", &rank_cpu);
  m.impl("spearman", &spearman_cpu);
}

}  // namespace mutualops
