#pragma once

// Helpers the CPU NMS kernels share (axis-aligned and rotated).
#include <ATen/ATen.h>

#include <cstdint>

namespace mutualops {

// O(N) scratch taken from torch's allocator, so that memory profiling (and
// the benchmarks' peak-memory figures) see it.
template <typename T>
struct Scratch {
  at::Tensor holder;
  T* ptr;
  explicit Scratch(int64_t count, int fill = -1)
      : holder(fill < 0 ? at::empty({count * int64_t(sizeof(T))}, at::TensorOptions().dtype(at::kByte))
                        : at::full({count * int64_t(sizeof(T))}, fill, at::TensorOptions().dtype(at::kByte))),
        ptr(reinterpret_cast<T*>(holder.data_ptr<uint8_t>())) {}
  T& operator[](int64_t i) { return ptr[i]; }
  const T& operator[](int64_t i) const { return ptr[i]; }
};

// Calls f(begin, end) for each run of equal keys in key[0..m).
template <typename F>
void for_each_run(const int64_t* key, int64_t m, F&& f) {
  for (int64_t s = 0; s < m;) {
    int64_t e = s + 1;
    while (e < m && key[e] == key[s]) ++e;
    f(s, e);
    s = e;
  }
}

}  // namespace mutualops
