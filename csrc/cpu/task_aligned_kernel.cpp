// CPU kernels of task-aligned assignment, for axis-aligned and oriented boxes:
// the per-element math of mutualops/task_aligned_math.h in five passes over
// GTs and anchors, written once for both kinds of box. Each GT
// keeps only its top-k candidates, so extra memory is O(B * (A + G * topk)):
// no [B, G, A] plane as in Ultralytics' dense implementation. A bucket grid
// over the anchors (anchor_grid.h) lets each GT visit the anchors near it, so
// time grows with the candidate pairs rather than with G * A.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <tuple>
#include <utility>
#include <vector>

#include "../ops/task_aligned.h"
#include "anchor_grid.h"
#include "simd.h"

namespace mutualops {
namespace {

// values[0, count) as a CPU tensor, for torch's own elementwise functions in place.
template <typename T>
at::Tensor torch_view(T* values, int64_t count) {
  return at::from_blob(values, {count}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>()));
}

template <typename T>
struct AnchorCandidate {
  int64_t anchor;
  T alignment;
  T overlap;
};

// Which candidates torch.topk(row, k) keeps on the CPU, for a row of n
// entries holding each candidate's alignment at its anchor (candidates in any
// order) and 0 everywhere else. If the k-th largest value is
// not tied across the cut, or only non-candidate zeros tie there, every top-k
// keeps the same candidates and they alone decide. Otherwise which tied
// entries survive depends on torch's algorithm (std::partial_sort of (value,
// index) pairs when k * 64 <= n, else std::nth_element), so the whole row is
// ranked that way. Ultralytics' positives depend on it whenever a GT has fewer
// than k candidates with a positive alignment, which is common early in
// training and for small objects.
template <typename T>
class TorchTopk {
 public:
  explicit TorchTopk(int64_t n) : n_(n), slot_(n, -1) {}

  void select(const std::vector<AnchorCandidate<T>>& cands, int64_t k, std::vector<char>& keep) {
    const int64_t count = static_cast<int64_t>(cands.size());
    keep.assign(count, 0);
    positive_.clear();
    for (const auto& c : cands) {
      if (c.alignment > T(0)) positive_.push_back(c.alignment);
    }
    const int64_t positives = static_cast<int64_t>(positive_.size());
    if (positives >= k) {
      std::nth_element(positive_.begin(), positive_.begin() + (k - 1), positive_.end(), std::greater<T>());
      const T cut = positive_[k - 1];
      int64_t above = 0, level = 0;
      for (const T v : positive_) above += v > cut, level += v == cut;
      if (above + level == k) {
        for (int64_t i = 0; i < count; ++i) keep[i] = cands[i].alignment >= cut;
        return;
      }
    } else if (count == positives || n_ == k) {
      // Every positive is kept; the other picks are zeros, and either none of
      // them is a candidate or all of the row is kept.
      for (int64_t i = 0; i < count; ++i) keep[i] = cands[i].alignment > T(0) || n_ == k;
      return;
    }
    rank_whole_row(cands, k, keep);
  }

 private:
  void rank_whole_row(const std::vector<AnchorCandidate<T>>& cands, int64_t k, std::vector<char>& keep) {
    // torch's comparator; its NaN clause never fires here (no NaN alignment).
    auto larger = [](const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) { return a.first > b.first; };
    if (k * 64 <= n_) {
      // std::partial_sort heapifies the first k entries, then lets a later
      // entry in only if it ranks above the heap's top, which is >= 0: zeros
      // past the first k never enter, nor move anything. Ranking the first k
      // entries and the later positive ones alone therefore keeps the same
      // entries as ranking the whole row, at O(k + candidates) cost.
      queue_.clear();
      for (int64_t j = 0; j < k; ++j) queue_.push_back({T(0), j});
      for (size_t i = 0; i < cands.size(); ++i) {
        if (cands[i].anchor < k) {
          queue_[cands[i].anchor].first = cands[i].alignment;
        } else if (cands[i].alignment > T(0)) {
          queue_.push_back({cands[i].alignment, cands[i].anchor});
        }
      }
      // The heap meets the later entries in row order, and which of equal values stay depends on it.
      std::sort(queue_.begin() + k, queue_.end(),
                [](const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) { return a.second < b.second; });
      std::partial_sort(queue_.begin(), queue_.begin() + k, queue_.end(), larger);
    } else {
      queue_.resize(n_);
      for (int64_t j = 0; j < n_; ++j) queue_[j] = {T(0), j};
      for (const auto& c : cands) queue_[c.anchor].first = c.alignment;
      std::nth_element(queue_.begin(), queue_.begin() + (k - 1), queue_.end(), larger);
    }
    for (size_t i = 0; i < cands.size(); ++i) slot_[cands[i].anchor] = static_cast<int64_t>(i);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t s = slot_[queue_[j].second];
      if (s >= 0) keep[s] = 1;
    }
    for (const auto& c : cands) slot_[c.anchor] = -1;
  }

  int64_t n_;
  std::vector<int64_t> slot_;  // candidate position of each anchor; all -1 between calls
  std::vector<T> positive_;
  std::vector<std::pair<T, int64_t>> queue_;
};

// The overlaps of `count` pairs, pair i being GT row row_of(i) and predicted box box_of(i), into out. A kind
// with a staged overlap (oriented boxes' probiou) takes its sqrt, log and exp from torch's own CPU functions,
// over the whole batch: they are vectorised ones that differ from the C library's in the last bit for one
// argument in ten to one in five (sqrt included), and near probiou = 1, where 1 - exp(-bd) cancels, that bit
// grows to 1e-4. The overlaps are then Ultralytics' own, bit for bit, and so is every comparison of two.
template <typename K, typename T, typename S, typename RowOf, typename BoxOf>
void pair_overlaps(const TaskAlignedView<K, T, S>& v, int64_t count, RowOf row_of, BoxOf box_of, T* out,
                   std::vector<T>& scratch) {
  auto operands = [&](int64_t i) {
    const int64_t row = row_of(i), box = box_of(i);
    return std::tuple{v.gt + K::kCoords * row, v.gt_cache + K::kCache * row, v.boxes + K::kCoords * box,
                      v.pred_cache + K::kCache * box};
  };
  if constexpr (!K::kStagedOverlap) {
    for (int64_t i = 0; i < count; ++i) out[i] = std::apply([](auto... p) { return K::overlap(p...); }, operands(i));
  } else {
    if (count == 0) return;
    scratch.resize(3 * count);
    T *t12 = scratch.data(), *det = t12 + count, *values = det + count;
    for (int64_t i = 0; i < count; ++i) {
      const auto terms = std::apply([](auto... p) { return K::overlap_terms(p...); }, operands(i));
      t12[i] = terms.t12, det[i] = terms.det, values[i] = terms.det_product;
    }
    auto terms = [&](int64_t i) { return BhattacharyyaTerms<T>{t12[i], det[i], T(0)}; };
    const at::Tensor batch = torch_view(values, count);
    batch.sqrt_();
    for (int64_t i = 0; i < count; ++i) values[i] = K::log_argument(terms(i), values[i]);
    batch.log_();
    for (int64_t i = 0; i < count; ++i) values[i] = K::exponent(terms(i), values[i]);
    batch.exp_();
    for (int64_t i = 0; i < count; ++i) values[i] = K::hellinger(values[i]);
    batch.sqrt_();
    for (int64_t i = 0; i < count; ++i) out[i] = K::overlap_from_root(values[i]);
  }
}

// The alignments score^alpha * overlap^beta of the pairs of pair_overlaps, given their overlaps; a kind with a
// staged overlap takes the powers from torch too (its pow by a Python float, sqrt for 0.5, as Ultralytics').
template <typename K, typename T, typename S, typename RowOf, typename BoxOf>
void pair_alignments(const TaskAlignedView<K, T, S>& v, int64_t count, RowOf row_of, BoxOf box_of, const T* overlaps,
                     T* out, std::vector<T>& scratch) {
  if constexpr (!K::kStagedOverlap) {
    // Each pair reads one class score of its anchor, a cache miss each in a [B, A, C] tensor that outgrows the
    // caches: loads are started kPrefetch pairs ahead so that their latencies overlap.
    constexpr int64_t kPrefetch = 16;
    auto score_of = [&](int64_t i) { return v.scores + box_of(i) * v.classes + v.labels[row_of(i)]; };
    for (int64_t i = 0; i < std::min(count, kPrefetch); ++i) MUTUALOPS_PREFETCH(score_of(i));
    for (int64_t i = 0; i < count; ++i) {
      if (i + kPrefetch < count) MUTUALOPS_PREFETCH(score_of(i + kPrefetch));
      out[i] = tal_pair_alignment(v, row_of(i), box_of(i), overlaps[i]);
    }
  } else {
    if (count == 0) return;
    scratch.resize(2 * count);
    T *score = scratch.data(), *power = score + count;
    for (int64_t i = 0; i < count; ++i) {
      score[i] = static_cast<T>(v.scores[box_of(i) * v.classes + v.labels[row_of(i)]]);
      power[i] = overlaps[i];
    }
    torch_view(score, count).pow_(static_cast<double>(v.alpha));
    torch_view(power, count).pow_(static_cast<double>(v.beta));
    for (int64_t i = 0; i < count; ++i) out[i] = score[i] * power[i];
  }
}

// Pass 1 for every GT: its candidates (the anchors the grid finds inside its region), their overlaps and
// alignments, and the top-k of them by alignment in the GT's `topk` pick slots (anchor -1 past its picks).
// The overlaps and alignments are computed for a batch of GTs' candidates at a time, so that a staged kind's
// elementary functions are a few torch calls per batch rather than per GT.
template <typename K, typename T, typename S>
void pick_all(const TaskAlignedView<K, T, S>& v, const AnchorGrid<T>& grid, const T* bounds, int64_t rows, int64_t topk,
              int64_t* pick_anchor, T* pick_alignment, T* pick_overlap) {
  constexpr int64_t kBatchPairs = 4096;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    TorchTopk<T> topk_of(v.n);
    std::vector<AnchorCandidate<T>> cands;
    std::vector<char> keep;
    std::vector<T> overlaps, alignments, scratch;
    std::vector<int64_t> found, pair_row, batch_rows, batch_start{0};
    auto flush = [&]() {
      const int64_t count = static_cast<int64_t>(found.size());
      overlaps.resize(count);
      alignments.resize(count);
      auto row_of = [&](int64_t i) { return pair_row[i]; };
      auto box_of = [&](int64_t i) { return pair_row[i] / v.gmax * v.n + found[i]; };
      pair_overlaps(v, count, row_of, box_of, overlaps.data(), scratch);
      pair_alignments(v, count, row_of, box_of, overlaps.data(), alignments.data(), scratch);
      for (size_t b = 0; b < batch_rows.size(); ++b) {
        cands.clear();
        for (int64_t i = batch_start[b]; i < batch_start[b + 1]; ++i) {
          cands.push_back(AnchorCandidate<T>{found[i], alignments[i], overlaps[i]});
        }
        topk_of.select(cands, topk, keep);
        int64_t slot = batch_rows[b] * topk;
        for (size_t i = 0; i < cands.size(); ++i) {
          if (!keep[i]) continue;
          pick_anchor[slot] = cands[i].anchor;
          pick_alignment[slot] = cands[i].alignment;
          pick_overlap[slot] = cands[i].overlap;
          ++slot;
        }
      }
      found.clear(), pair_row.clear(), batch_rows.clear(), batch_start.resize(1);
    };
    for (int64_t r = begin; r < end; ++r) {
      if (!v.valid[r]) continue;
      const T* region = v.regions + K::kRegion * r;
      const int64_t used = static_cast<int64_t>(found.size());
      found.resize(used + v.n);
      const int64_t count = grid.inside(
          load_box<T>(bounds + 4 * r), [region](T x, T y) { return K::inside(x, y, region); }, found.data() + used);
      found.resize(used + count);
      pair_row.resize(used + count, r);
      batch_rows.push_back(r);
      batch_start.push_back(used + count);
      if (used + count >= kBatchPairs) flush();
    }
    flush();
  });
}

// Pass 2 for the anchors several GTs picked: tal_resolve_conflict's rule (the candidate GT of highest overlap,
// the first on a tie, GT 0 when none overlaps), writing the anchor's GT, alignment and overlap at index
// image * n + a. A staged kind's overlaps and alignments are computed for a batch of anchors at a time.
template <typename K, typename T, typename S>
class ConflictResolver {
 public:
  ConflictResolver(const TaskAlignedView<K, T, S>& v, int64_t* gt_of, T* alignment, T* overlap)
      : v_(v), gt_of_(gt_of), alignment_(alignment), overlap_(overlap) {}

  // Anchor `a` of `image`, whose candidate GTs are among `gts` (increasing GT indices).
  template <typename GtRange>
  void add(int64_t image, int64_t a, const GtRange& gts) {
    const int64_t i = image * v_.n + a;
    if constexpr (!K::kStagedOverlap) {
      gt_of_[i] = tal_resolve_conflict(v_, image, a, gts, alignment_ + i, overlap_ + i);
    } else {
      auto consider = [&](int64_t g) {
        const int64_t row = image * v_.gmax + g;
        if (v_.valid[row] && K::inside(v_.anchors[2 * a], v_.anchors[2 * a + 1], v_.regions + K::kRegion * row)) {
          pair_row_.push_back(row);
        }
      };
      consider(0);
      for (const int64_t g : gts) {
        if (g != 0) consider(g);
      }
      anchor_.push_back(i);
      start_.push_back(static_cast<int64_t>(pair_row_.size()));
      if (pair_row_.size() >= kBatchPairs) flush();
    }
  }

  void flush() {
    if constexpr (K::kStagedOverlap) {
      const int64_t count = static_cast<int64_t>(pair_row_.size());
      overlaps_.resize(count);
      pair_box_.resize(count);  // an anchor's index image * n + a is its predicted box's
      for (size_t k = 0; k < anchor_.size(); ++k) {
        for (int64_t j = start_[k]; j < start_[k + 1]; ++j) pair_box_[j] = anchor_[k];
      }
      pair_overlaps(
          v_, count, [&](int64_t j) { return pair_row_[j]; }, [&](int64_t j) { return pair_box_[j]; }, overlaps_.data(),
          scratch_);
      best_row_.clear(), best_box_.clear(), best_overlap_.clear(), best_anchor_.clear();
      for (size_t k = 0; k < anchor_.size(); ++k) {
        const int64_t i = anchor_[k], image = i / v_.n, gt0 = image * v_.gmax;
        int64_t best = 0;
        T best_overlap = T(0);
        bool candidate = false;
        for (int64_t j = start_[k]; j < start_[k + 1]; ++j) {
          if (pair_row_[j] == gt0) {
            best_overlap = overlaps_[j], candidate = true;
          } else if (overlaps_[j] > best_overlap) {
            best = pair_row_[j] - gt0, best_overlap = overlaps_[j], candidate = true;
          }
        }
        gt_of_[i] = best;
        overlap_[i] = candidate ? best_overlap : T(0);
        alignment_[i] = T(0);
        if (candidate) {
          best_row_.push_back(gt0 + best), best_box_.push_back(i), best_overlap_.push_back(best_overlap);
          best_anchor_.push_back(i);
        }
      }
      const int64_t winners = static_cast<int64_t>(best_row_.size());
      alignments_.resize(winners);
      pair_alignments(
          v_, winners, [&](int64_t k) { return best_row_[k]; }, [&](int64_t k) { return best_box_[k]; },
          best_overlap_.data(), alignments_.data(), scratch_);
      for (int64_t k = 0; k < winners; ++k) alignment_[best_anchor_[k]] = alignments_[k];
      pair_row_.clear(), anchor_.clear(), start_.assign(1, 0);
    }
  }

 private:
  static constexpr size_t kBatchPairs = 4096;
  const TaskAlignedView<K, T, S>& v_;
  int64_t* gt_of_;
  T *alignment_, *overlap_;
  std::vector<int64_t> pair_row_, pair_box_, anchor_, start_{0}, best_row_, best_box_, best_anchor_;
  std::vector<T> overlaps_, alignments_, best_overlap_, scratch_;
};

// The GT of every anchor (-1 for background) and that pair's alignment and overlap.
template <typename T>
struct AnchorAssignment {
  std::vector<int64_t> gt_of;
  std::vector<T> alignment, overlap;
};

// Pass 2, per anchor, from the pick slots. An anchor several GTs picked looks only at the GTs whose regions
// share its cell of a coarse grid, unless the regions span so many cells that bucketing them would outgrow
// O(A + G * topk) memory.
template <typename K, typename T, typename S>
AnchorAssignment<T> assign_anchors(const TaskAlignedView<K, T, S>& v, const AnchorGrid<T>& grid, const T* bounds,
                                   int64_t images, int64_t topk, const std::vector<int64_t>& pick_anchor,
                                   const std::vector<T>& pick_alignment, const std::vector<T>& pick_overlap) {
  const int64_t n = v.n, gmax = v.gmax;
  const T* anchors = v.anchors;
  AnchorAssignment<T> assigned{std::vector<int64_t>(images * n, -1), std::vector<T>(images * n, T(0)),
                               std::vector<T>(images * n, T(0))};
  std::vector<int64_t>& gt_of = assigned.gt_of;
  std::vector<T>& alignment = assigned.alignment;
  std::vector<T>& overlap = assigned.overlap;
  const GridMap coarse = grid.map().coarser(32);
  at::parallel_for(0, images, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> picks(n);
    std::vector<int64_t> entry(n);
    ConflictResolver<K, T, S> resolver(v, gt_of.data(), alignment.data(), overlap.data());
    RegionGrid<T> near(coarse);
    for (int64_t image = begin; image < end; ++image) {
      std::fill(picks.begin(), picks.end(), 0);
      bool conflicts = false;
      for (int64_t e = image * gmax * topk; e < (image + 1) * gmax * topk; ++e) {
        const int64_t a = pick_anchor[e];
        if (a >= 0) {
          conflicts |= ++picks[a] > 1;
          entry[a] = e;
        }
      }
      const bool bucketed =
          conflicts && near.build(bounds + 4 * image * gmax, v.valid + image * gmax, gmax, 4 * (n + gmax * topk));
      for (int64_t a = 0; a < n; ++a) {
        const int64_t i = image * n + a;
        if (picks[a] == 1) {
          gt_of[i] = (entry[a] / topk) % gmax;
          alignment[i] = pick_alignment[entry[a]];
          overlap[i] = pick_overlap[entry[a]];
        } else if (picks[a] > 1) {
          if (bucketed) {
            resolver.add(image, a, near.at(anchors[2 * a], anchors[2 * a + 1]));
          } else {
            resolver.add(image, a, TalAllGts{gmax});
          }
        }
      }
    }
    resolver.flush();
  });

  return assigned;
}

// Passes 3 to 5 per image, over each GT's anchors (a bucket per GT, in anchor order): the optional second
// top-k, the per-GT maxima that normalise the alignment, and the targets.
template <typename K, typename T, typename S>
void write_targets(const TaskAlignedView<K, T, S>& v, const TaskAlignedParams& p, int64_t images,
                   AnchorAssignment<T>& assigned, TaskAlignedOutputs& out) {
  const int64_t n = v.n, gmax = v.gmax;
  const T* gt = v.gt;
  std::vector<int64_t>& gt_of = assigned.gt_of;
  const std::vector<T>& alignment = assigned.alignment;
  const std::vector<T>& overlap = assigned.overlap;
  at::parallel_for(0, images, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> start(gmax + 1), fill(gmax), members(n);
    TorchTopk<T> topk_of(n);
    std::vector<AnchorCandidate<T>> cands;
    std::vector<char> keep;
    for (int64_t image = begin; image < end; ++image) {
      int64_t* owner = gt_of.data() + image * n;
      const T* al = alignment.data() + image * n;
      const T* ov = overlap.data() + image * n;
      std::fill(start.begin(), start.end(), 0);
      for (int64_t a = 0; a < n; ++a) {
        if (owner[a] >= 0) ++start[owner[a] + 1];
      }
      for (int64_t g = 0; g < gmax; ++g) start[g + 1] += start[g];
      std::copy(start.begin(), start.end() - 1, fill.begin());
      for (int64_t a = 0; a < n; ++a) {
        if (owner[a] >= 0) members[fill[owner[a]]++] = a;
      }
      T* norm = out.alignment.template data_ptr<T>() + image * n;
      for (int64_t g = 0; g < gmax; ++g) {
        if (p.topk2 != p.topk) {
          cands.clear();
          for (int64_t m = start[g]; m < start[g + 1]; ++m) cands.push_back({members[m], al[members[m]], T(0)});
          topk_of.select(cands, p.topk2, keep);
          for (size_t i = 0; i < cands.size(); ++i) {
            if (!keep[i]) owner[cands[i].anchor] = -1;
          }
        }
        T best_alignment = T(0), best_overlap = T(0);
        for (int64_t m = start[g]; m < start[g + 1]; ++m) {
          if (owner[members[m]] < 0) continue;
          best_alignment = max2(best_alignment, al[members[m]]);
          best_overlap = max2(best_overlap, ov[members[m]]);
        }
        for (int64_t m = start[g]; m < start[g + 1]; ++m) {
          const int64_t a = members[m];
          if (owner[a] >= 0) norm[a] = tal_normalised(al[a], best_overlap, best_alignment, static_cast<T>(p.eps));
        }
      }
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.bboxes.scalar_type(), "tal_targets", [&] {
        scalar_t* bboxes = out.bboxes.data_ptr<scalar_t>() + image * n * K::kCoords;
        int64_t* labels = out.labels.data_ptr<int64_t>() + image * n;
        int64_t* gt_index = out.gt_index.data_ptr<int64_t>() + image * n;
        bool* fg = out.fg.data_ptr<bool>() + image * n;
        T* scores = p.with_scores ? out.scores.template data_ptr<T>() + image * n * p.classes : nullptr;
        for (int64_t a = 0; a < n; ++a) {
          const int64_t g = owner[a] >= 0 ? owner[a] : 0;
          const int64_t label = std::max<int64_t>(v.labels[image * gmax + g], 0);
          fg[a] = owner[a] >= 0;
          gt_index[a] = g;
          labels[a] = label;
          const T* box = gt + K::kCoords * (image * gmax + g);
          for (int c = 0; c < K::kCoords; ++c) bboxes[K::kCoords * a + c] = static_cast<scalar_t>(box[c]);
          if (scores && fg[a] && label < p.classes) scores[a * p.classes + label] = norm[a];
        }
      });
    }
  });
}

template <typename K, typename T, typename S>
void task_aligned_cpu_impl(const TaskAlignedInputs& in, const TaskAlignedParams& p, TaskAlignedOutputs& out) {
  const int64_t images = in.scores.size(0), n = in.scores.size(1), gmax = in.gt.size(1), rows = images * gmax;
  const T* gt = in.gt.data_ptr<T>();
  const T* boxes = in.boxes.data_ptr<T>();
  std::vector<T> regions(K::kRegion * rows), bounds(4 * rows), gt_cache(K::kCache * rows),
      pred_cache(K::kCache * images * n);
  const T *gt_angles = in.gt_angles<T>(), *box_angles = in.box_angles<T>();
  for (int64_t r = 0; r < rows; ++r) {
    const T* angle = gt_angles ? gt_angles + 2 * r : nullptr;
    K::region(gt + K::kCoords * r, angle, static_cast<T>(p.min_side), regions.data() + K::kRegion * r);
    store_box(K::bounds(regions.data() + K::kRegion * r), bounds.data() + 4 * r);
    K::cache(gt + K::kCoords * r, angle, gt_cache.data() + K::kCache * r);
  }
  // What each predicted box's overlaps need of it alone (an atan, a Gaussian) once, not once per GT that has it
  // as a candidate.
  at::parallel_for(0, images * n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      K::cache(boxes + K::kCoords * i, box_angles ? box_angles + 2 * i : nullptr, pred_cache.data() + K::kCache * i);
    }
  });
  const T* anchors = in.anchors.data_ptr<T>();
  const AnchorGrid<T> grid(anchors, n);
  const TaskAlignedView<K, T, S> v{in.scores.data_ptr<S>(),
                                   boxes,
                                   anchors,
                                   in.labels.data_ptr<int64_t>(),
                                   gt,
                                   regions.data(),
                                   gt_cache.data(),
                                   pred_cache.data(),
                                   in.valid.data_ptr<bool>(),
                                   n,
                                   gmax,
                                   p.classes,
                                   static_cast<T>(p.alpha),
                                   static_cast<T>(p.beta)};

  std::vector<int64_t> pick_anchor(rows * p.topk, -1);
  std::vector<T> pick_alignment(rows * p.topk), pick_overlap(rows * p.topk);
  pick_all(v, grid, bounds.data(), rows, p.topk, pick_anchor.data(), pick_alignment.data(), pick_overlap.data());

  AnchorAssignment<T> assigned =
      assign_anchors(v, grid, bounds.data(), images, p.topk, pick_anchor, pick_alignment, pick_overlap);
  write_targets(v, p, images, assigned, out);
}

template <typename K>
TaskAlignedResult assign_task_aligned_cpu(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                                          const at::Tensor& anc_points, const at::Tensor& gt_labels,
                                          const at::Tensor& gt_bboxes, const at::Tensor& mask_gt, int64_t topk,
                                          int64_t topk2, int64_t num_classes, double alpha, double beta, double eps,
                                          double min_side, bool with_scores) {
  return assign_task_aligned_host<K>(
      pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
      TaskAlignedParams{topk, topk2, num_classes, alpha, beta, eps, min_side, with_scores},
      [](auto math, auto storage, const TaskAlignedInputs& in, const TaskAlignedParams& p, TaskAlignedOutputs& out) {
        task_aligned_cpu_impl<K, decltype(math), decltype(storage)>(in, p, out);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(mutualops, CPU, m) {
  m.impl("assign_task_aligned", &assign_task_aligned_cpu<AxisAlignedTal>);
  m.impl("assign_task_aligned_rotated", &assign_task_aligned_cpu<RotatedTal>);
}

}  // namespace mutualops
