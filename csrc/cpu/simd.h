#pragma once

// Hot CPU loops get an AVX2 clone, picked at load time by the CPU it runs on
// (GCC/Clang function multi-versioning on x86-64); other machines run the
// baseline clone. AVX2 without FMA: no contraction, so results do not change.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MUTUALOPS_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MUTUALOPS_CPU_CLONES
#endif

// A hint to start loading the cache line at `p` (a gather the hardware cannot
// foresee, such as one class score per anchor); no effect on results.
#if defined(__GNUC__) || defined(__clang__)
#define MUTUALOPS_PREFETCH(p) __builtin_prefetch(p)
#else
#define MUTUALOPS_PREFETCH(p) ((void)(p))
#endif
