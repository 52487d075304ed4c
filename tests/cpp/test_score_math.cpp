// Plain C++ test of the detection order as one integer (score_math.h): sorting by rank_key must give
// exactly the order ranks_before defines, on the scores that break naive bit tricks (signed zeros,
// infinities, subnormals, negatives, exact ties) as well as random ones.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "mutualops/score_math.h"

static int passed = 0, failed = 0;

static void check(bool ok, const char* what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s\n", what);
  }
}

// Every pair (a, b) of the list: rank_key and its signed form order them as ranks_before does.
static bool agrees(const std::vector<float>& scores) {
  const int64_t n = static_cast<int64_t>(scores.size());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const bool before = mutualops::ranks_before(scores[i], i, scores[j], j);
      const uint64_t ki = mutualops::rank_key(scores[i], i), kj = mutualops::rank_key(scores[j], j);
      if ((ki < kj) != before) return false;
      if ((mutualops::signed_rank_key(ki) < mutualops::signed_rank_key(kj)) != before) return false;
    }
  }
  return true;
}

static void test_special_values() {
  const std::vector<float> scores{0.0f,     -0.0f,   1.0f,     -1.0f,     INFINITY,    -INFINITY,  FLT_MIN,
                                  -FLT_MIN, FLT_MAX, -FLT_MAX, 1e-45f,    -1e-45f,     0.5f,       0.5f,
                                  -0.0f,    0.0f,    INFINITY, -INFINITY, 0.49999997f, 0.50000006f};
  check(agrees(scores), "rank_key orders special values (signed zeros, infinities, subnormals) as ranks_before");
  check(mutualops::descending_bits(0.0f) == mutualops::descending_bits(-0.0f), "-0 and +0 get the same bits");
}

static void test_random() {
  std::mt19937 gen(0);
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  std::uniform_int_distribution<int> coarse(-3, 3);
  std::vector<float> scores(400);
  for (size_t i = 0; i < scores.size(); ++i) scores[i] = i % 2 ? uniform(gen) : 0.25f * coarse(gen);
  check(agrees(scores), "rank_key orders random scores with many exact ties as ranks_before");
  // Indices past 2^31 keep their order (the index is the low 32 bits, unsigned).
  const int64_t big = (int64_t(1) << 31) + 5;
  check(mutualops::rank_key(0.5f, big) < mutualops::rank_key(0.5f, big + 1), "indices above 2^31 keep their order");
  check(mutualops::rank_key(0.5f, mutualops::kRankKeyIndices - 1) < mutualops::rank_key(0.25f, 0),
        "the index never outweighs the score");
}

int main() {
  test_special_values();
  test_random();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
