#pragma once

// Greedy NMS on the GPU over candidates already in detection order, written once for every kind of box
// (box_kinds.h): the 64x64 suppression-mask tiles, the on-device greedy reduction, and the batched NMS that
// sorts, suppresses and reads off the survivors. nms_kernel.cu runs it on axis-aligned boxes (nms,
// batched_nms, rescored NMS), rotated_kernel.cu on oriented ones (nms_rotated, batched_nms_rotated).
//
// Its contents have internal linkage (an unnamed namespace): both files include it, and a non-template
// __global__ function defined in two translation units would otherwise be defined twice at link time.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <type_traits>

#include "../ops/nms.h"
#include "launch.cuh"
#include "mutualops/box_kinds.h"
#include "mutualops/score_math.h"

namespace mutualops {
namespace {

constexpr int kMaskBits = 64;
// The greedy pass keeps its "removed" bitmap in shared memory when it fits
// (44 KiB, leaving room under the 48 KiB default for the chunk's own arrays).
constexpr int64_t kSharedRemovedWords = 5632;
// Key of an invalid rescored slot: groups after every label, so that mask blocks of valid keys skip them.
constexpr int64_t kInvalidKey = std::numeric_limits<int64_t>::max();
// Suppression mask per tile of rows (all images together). 8 MiB holds 5000 boxes of one image in one tile,
// and keeps detector post-processing (8 images of 5000 slots) near torchvision's own peak memory.
constexpr int64_t kMaskTileBytes = int64_t(8) << 20;

// ---- greedy NMS over sorted rows --------------------------------------------

// Per (image, sorted position): one past the last position with the same key,
// by binary search (keys ascend along each row).
__global__ void run_end_kernel(const int64_t* __restrict__ key, int64_t images, int64_t m, int64_t* __restrict__ end) {
  for (int64_t t = grid_start(); t < images * m; t += grid_stride()) {
    const int64_t* row = key + (t / m) * m;
    const int64_t p = t % m, k = row[p];
    int64_t lo = p + 1, hi = m;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (row[mid] == k) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    end[t] = lo;
  }
}

// One tile of the suppression mask: sorted rows [row_begin, row_begin + tile_rows) of every image against
// the words from row_begin / 64 on. Word (image, r, w) of the tile, at mask[(image * row_stride + r) *
// tile_words + w], has bit t set when row row_begin + r suppresses box (first_word + w) * 64 + t (later,
// same key, IoU > threshold). Words left of the diagonal are never read and not written.
struct MaskTile {
  int64_t row_begin, tile_rows, row_stride, first_word, tile_words;
};

template <typename Kind, typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ key,
                                const bool* __restrict__ valid, int64_t images, int64_t m, MaskTile tile, T threshold,
                                unsigned long long* __restrict__ mask) {
  constexpr int kCoords = Kind::kCoords;
  __shared__ T col_boxes[kMaskBits * kCoords];
  __shared__ int64_t col_key[kMaskBits];
  const int64_t row_blocks = (tile.tile_rows + kMaskBits - 1) / kMaskBits;
  const int64_t blocks = images * row_blocks * tile.tile_words;
  // Every bound below is the same for all threads of a block, so all of them reach the barriers.
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const int64_t w = b % tile.tile_words, row_block = (b / tile.tile_words) % row_blocks;
    const int64_t image = b / (tile.tile_words * row_blocks);
    const int64_t row_start = tile.row_begin + row_block * kMaskBits;
    const int64_t col_start = (tile.first_word + w) * kMaskBits;
    if (col_start < row_start) continue;
    const T* image_boxes = boxes + image * m * kCoords;
    const int64_t* image_key = key + image * m;
    const int64_t rows = min(tile.row_begin + tile.tile_rows - row_start, static_cast<int64_t>(kMaskBits));
    const int64_t cols = min(m - col_start, static_cast<int64_t>(kMaskBits));
    unsigned long long* out = mask + (image * tile.row_stride + (row_start - tile.row_begin)) * tile.tile_words + w;
    // Keys are sorted: blocks whose key ranges do not meet have no pair.
    if (image_key[col_start] > image_key[row_start + rows - 1]) {
      if (threadIdx.x < rows) out[threadIdx.x * tile.tile_words] = 0;
      continue;
    }
    __syncthreads();  // the previous block's columns are no longer read
    if (threadIdx.x < cols) {
      for (int c = 0; c < kCoords; ++c) {
        col_boxes[threadIdx.x * kCoords + c] = image_boxes[(col_start + threadIdx.x) * kCoords + c];
      }
      col_key[threadIdx.x] = image_key[col_start + threadIdx.x];
    }
    __syncthreads();
    if (threadIdx.x < rows) {
      const int64_t i = row_start + threadIdx.x;
      const T* a = image_boxes + kCoords * i;
      const int64_t ki = image_key[i];
      unsigned long long bits = 0;
      // An invalid row is never kept, so its word is never used: written, not computed.
      const int64_t last_col = valid[image * m + i] ? cols : 0;
      for (int64_t t = 0; t < last_col; ++t) {
        const int64_t j = col_start + t;
        if (j > i && col_key[t] == ki && Kind::template iou<T>(a, col_boxes + kCoords * t) > threshold) {
          bits |= 1ULL << t;
        }
      }
      out[threadIdx.x * tile.tile_words] = bits;
    }
  }
}

// Greedy pass over one tile's rows in sorted order, one block per image, 64 boxes (one mask word) at a time:
// the block stages the chunk's diagonal words, then one thread settles the chunk's boxes among themselves
// from shared memory, then every thread ORs (kept box, later word) pairs of the mask into the "removed"
// bitmap. Three barriers per 64 boxes, and the mask loads of a chunk are issued in parallel: a barrier per
// box, or a thread per word looping over the kept boxes, left the pass bound by one load latency after
// another. Each kept box removes only up to the end of its key's run. Invalid slots are never kept. The
// bitmap lives in global memory between tiles and in shared memory during one when it fits.
constexpr int kReduceThreads = 512;

__global__ void __launch_bounds__(kReduceThreads)
    nms_reduce_kernel(const unsigned long long* __restrict__ mask, const int64_t* __restrict__ run_end,
                      const bool* __restrict__ valid, int64_t images, int64_t m, int64_t col_blocks, MaskTile tile,
                      unsigned long long* __restrict__ removed_global, bool* __restrict__ keep) {
  extern __shared__ unsigned long long removed_shared[];
  __shared__ unsigned long long diagonal[kMaskBits];
  __shared__ bool chunk_valid[kMaskBits];
  __shared__ int64_t last_word[kMaskBits];
  __shared__ int kept_list[kMaskBits];
  __shared__ int kept_count;
  __shared__ int64_t chunk_last_word;
  const int tid = threadIdx.x;
  const bool in_shared = tile.tile_words <= kSharedRemovedWords;
  const int64_t first_chunk = tile.row_begin / kMaskBits;
  const int64_t end_chunk = (tile.row_begin + tile.tile_rows + kMaskBits - 1) / kMaskBits;
  for (int64_t image = blockIdx.x; image < images; image += gridDim.x) {
    const unsigned long long* image_mask = mask + image * tile.row_stride * tile.tile_words;
    unsigned long long* image_removed = removed_global + image * col_blocks + tile.first_word;
    // removed[w] is word first_word + w of the image's bitmap.
    unsigned long long* removed = in_shared ? removed_shared : image_removed;
    if (in_shared) {
      for (int64_t w = tid; w < tile.tile_words; w += kReduceThreads) removed_shared[w] = image_removed[w];
    }
    __syncthreads();
    for (int64_t c = first_chunk; c < end_chunk; ++c) {
      const int64_t begin = c * kMaskBits;
      const int count = static_cast<int>(min(m - begin, static_cast<int64_t>(kMaskBits)));
      const int64_t local = c - tile.first_word;
      if (tid < count) {
        const int64_t i = begin + tid;
        diagonal[tid] = image_mask[(i - tile.row_begin) * tile.tile_words + local];
        chunk_valid[tid] = valid[image * m + i];
        last_word[tid] = (run_end[image * m + i] - 1) / kMaskBits;
      }
      __syncthreads();
      if (tid == 0) {
        unsigned long long word = removed[local];
        int kept = 0;
        int64_t last = c;
        for (int t = 0; t < count; ++t) {
          const bool drop = !chunk_valid[t] || ((word >> t) & 1ULL);
          keep[image * m + begin + t] = !drop;
          if (drop) continue;
          word |= diagonal[t];
          kept_list[kept++] = t;
          last = max(last, last_word[t]);
        }
        kept_count = kept;
        chunk_last_word = last;
      }
      __syncthreads();
      const int64_t words = chunk_last_word - c;  // words c+1 .. chunk_last_word
      const int64_t pairs = words * kept_count;
      for (int64_t k = tid; k < pairs; k += kReduceThreads) {
        const int64_t w = c + 1 + k % words;
        const int64_t i = begin + kept_list[k / words];
        const unsigned long long bits = image_mask[(i - tile.row_begin) * tile.tile_words + (w - tile.first_word)];
        if (bits) atomicOr(removed + (w - tile.first_word), bits);
      }
      __syncthreads();
    }
    if (in_shared) {
      for (int64_t w = tid; w < tile.tile_words; w += kReduceThreads) image_removed[w] = removed_shared[w];
    }
    __syncthreads();
  }
}

// Greedy NMS of `images` independent rows of m candidates each, already sorted: boxes [images, m, kCoords] in the
// math type; key [images, m] ascending along each row, or none for one key, when the invalid candidates
// must come last; valid [images, m] (an invalid candidate is never kept and suppresses nothing). Returns
// keep [images, m].
template <typename Kind, typename T>
at::Tensor greedy_nms_sorted(const at::Tensor& boxes, const std::optional<at::Tensor>& given_key,
                             const at::Tensor& valid, double iou_threshold) {
  const int64_t images = valid.size(0), m = valid.size(1);
  at::Tensor keep = at::zeros({images, m}, valid.options());
  if (images == 0 || m == 0) return keep;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto longs = valid.options().dtype(at::kLong);
  // With one key the valid run still gets a key of its own, so that kept boxes stop at its end and mask
  // blocks of valid rows against the invalid tail are skipped.
  const at::Tensor key =
      given_key.has_value() ? *given_key : at::zeros({images, m}, longs).masked_fill_(valid.logical_not(), kInvalidKey);
  at::Tensor run_end = at::empty({images, m}, longs);
  run_end_kernel<<<grid_for(images * m), kThreads, 0, stream>>>(key.data_ptr<int64_t>(), images, m,
                                                                run_end.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t col_blocks = (m + kMaskBits - 1) / kMaskBits;
  // Rows per tile: as many 64-row strips as the budget holds for all images at full width, at least one.
  const int64_t strip_bytes = images * kMaskBits * col_blocks * static_cast<int64_t>(sizeof(unsigned long long));
  const int64_t row_stride = std::min(std::max<int64_t>(kMaskTileBytes / strip_bytes, 1), col_blocks) * kMaskBits;
  at::Tensor mask = at::empty({images * row_stride * col_blocks}, longs);
  at::Tensor removed = at::zeros({images, col_blocks}, longs);
  auto* mask_data = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
  const T threshold = nms_threshold<T>(iou_threshold);
  for (int64_t row_begin = 0; row_begin < m; row_begin += row_stride) {
    const int64_t first_word = row_begin / kMaskBits;
    const MaskTile tile{row_begin, std::min(row_stride, m - row_begin), row_stride, first_word,
                        col_blocks - first_word};
    const int64_t row_blocks = (tile.tile_rows + kMaskBits - 1) / kMaskBits;
    nms_mask_kernel<Kind, T><<<blocks_for(images * row_blocks * tile.tile_words), kMaskBits, 0, stream>>>(
        boxes.data_ptr<T>(), key.data_ptr<int64_t>(), valid.data_ptr<bool>(), images, m, tile, threshold, mask_data);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const bool in_shared = tile.tile_words <= kSharedRemovedWords;
    nms_reduce_kernel<<<blocks_for(images), kReduceThreads,
                        in_shared ? tile.tile_words * sizeof(unsigned long long) : 0, stream>>>(
        mask_data, run_end.data_ptr<int64_t>(), valid.data_ptr<bool>(), images, m, col_blocks, tile,
        reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()), keep.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return keep;
}

// ---- batched NMS ------------------------------------------------------------

// Per box: finite box and score, and the rank key of (score, index) for float scores (invalid boxes last).
template <typename Kind, typename scalar_t>
__global__ void nms_candidates_kernel(const scalar_t* __restrict__ boxes, const scalar_t* __restrict__ scores,
                                      int64_t n, bool* __restrict__ valid, int64_t* __restrict__ key) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    const acc_t s = static_cast<acc_t>(scores[i]);
    const bool ok = isfinite(s) && Kind::template finite<acc_t>(boxes + Kind::kCoords * i);
    valid[i] = ok;
    if (key) key[i] = ok ? signed_rank_key(rank_key(static_cast<float>(s), i)) : kInvalidKey;
  }
}

// Kept indices ordered by score descending, ties to the lower index: one radix sort into detection order,
// with idxs a stable sort by key after it, the greedy pass, then the survivors read off in detection order.
template <typename Kind, typename scalar_t>
at::Tensor nms_typed(const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
                     double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = boxes.size(0);
  const auto longs = boxes.options().dtype(at::kLong);
  if (n == 0) return at::empty({0}, longs);
  at::Tensor valid = at::empty({n}, boxes.options().dtype(at::kBool));
  const bool one_sort = std::is_same<acc_t, float>::value && n <= kRankKeyIndices;
  at::Tensor rank = one_sort ? at::empty({n}, longs) : at::Tensor();
  nms_candidates_kernel<Kind, scalar_t><<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(), n, valid.data_ptr<bool>(),
      one_sort ? rank.data_ptr<int64_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Positions in detection order; non-finite candidates last (never kept either way).
  const at::Tensor order =
      one_sort ? std::get<1>(at::sort(rank, /*stable=*/false, 0, false))
               : std::get<1>(at::sort(scores.to(c10::CppTypeToScalarType<acc_t>::value)
                                          .masked_fill(valid.logical_not(), -std::numeric_limits<double>::infinity()),
                                      /*stable=*/true, 0, /*descending=*/true));
  // by_key: positions of `order` grouped by key, stably (detection order within a key).
  at::Tensor sorted = order, by_key;
  std::optional<at::Tensor> sorted_key;
  if (idxs.has_value()) {
    auto [key, positions] = at::sort(idxs->index_select(0, order), /*stable=*/true, 0, false);
    sorted_key = key.unsqueeze(0).contiguous();
    by_key = positions;
    sorted = order.index_select(0, by_key);
  }
  const at::Tensor sorted_boxes =
      boxes.index_select(0, sorted).to(c10::CppTypeToScalarType<acc_t>::value).unsqueeze(0).contiguous();
  const at::Tensor keep =
      greedy_nms_sorted<Kind, acc_t>(sorted_boxes, sorted_key, valid.index_select(0, sorted).unsqueeze(0).contiguous(),
                                     iou_threshold)
          .squeeze(0);
  const at::Tensor kept_in_order = idxs.has_value() ? at::zeros_like(keep).index_put_({by_key}, keep) : keep;
  return order.masked_select(kept_in_order);  // the output is data-dependent: one host synchronisation
}

// nms / batched_nms for one kind of box: kept indices by score descending, ties to the lower index.
template <typename Kind>
at::Tensor run_nms(const at::Tensor& boxes, const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
                   double iou_threshold) {
  const c10::cuda::CUDAGuard guard(boxes.device());
  const at::Tensor b = boxes.contiguous(), s = scores.contiguous();
  std::optional<at::Tensor> k;
  if (idxs.has_value()) k = idxs->to(at::kLong).contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "nms_cuda",
                                  [&] { keep = nms_typed<Kind, scalar_t>(b, s, k, iou_threshold); });
  return keep;
}

}  // namespace
}  // namespace mutualops
