#pragma once
// Selection by magnitude without sorting: the k-th largest magnitude of a tensor by O(n)
// selection, and masks that keep a band of ranks exactly, with a deterministic rule for equal
// magnitudes.
//
// Rank order: larger magnitude first; equal magnitudes in ascending element index. NaN counts as
// the largest magnitude (so it is kept first and propagates, rather than vanishing silently).
// "Keep positions [first, last)" keeps exactly last - first elements of that order.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"

namespace alloy {

// One bit per element. Chunks of the CPU backend own whole words, so they fill it in parallel.
class bit_mask {
 public:
  bit_mask() = default;
  explicit bit_mask(std::size_t size, bool value = false)
      : words_((size + 63) / 64, value ? ~std::uint64_t{0} : 0), size_(size) {}

  [[nodiscard]] ALLOY_HD bool test(std::size_t index) const noexcept {
    return (words_[index >> 6] >> (index & 63)) & 1u;
  }
  void set(std::size_t index) noexcept { words_[index >> 6] |= std::uint64_t{1} << (index & 63); }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] const std::uint64_t* words() const noexcept { return words_.data(); }
  [[nodiscard]] std::size_t count() const noexcept {
    std::size_t total = 0;
    for (std::size_t w = 0; w < words_.size(); ++w) {
      std::uint64_t word = words_[w];
      if (w + 1 == words_.size() && size_ % 64 != 0) word &= (std::uint64_t{1} << (size_ % 64)) - 1;
      total += static_cast<std::size_t>(std::popcount(word));
    }
    return total;
  }

  // Packs one byte per element (non-zero: set) into bits, in parallel over whole words.
  static bit_mask from_bytes(const cpu_backend& backend, std::span<const std::uint8_t> bytes) {
    bit_mask mask(bytes.size());
    for_each_chunk(backend, bytes.size(), [&](std::size_t, std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) {
        if (bytes[i] != 0) mask.set(i);
      }
    });
    return mask;
  }

 private:
  std::vector<std::uint64_t> words_;
  std::size_t size_ = 0;
};

namespace detail {

ALLOY_HD ALLOY_ALWAYS_INLINE float rank_magnitude(float value) noexcept {
  const float magnitude = value < 0 ? -value : value;
  return magnitude != magnitude ? std::numeric_limits<float>::infinity() : magnitude;
}

// The boundary before position `position` of the rank order: element e is before it when
// |e| > threshold, or |e| == threshold and e is among the first `ties_before` such elements.
struct rank_boundary {
  std::size_t position = 0;
  float threshold = std::numeric_limits<float>::infinity();
  std::size_t ties_before = 0;
  std::vector<std::size_t> ties_before_chunk;  // per chunk: elements == threshold in earlier chunks
  bool everything = false;                     // position == n
  bool nothing = true;                         // position == 0
};

}  // namespace detail

// The k-th largest magnitude (k >= 1) among `magnitudes`, which it reorders (O(n) selection).
inline float kth_largest(std::span<float> magnitudes, std::size_t k) {
  if (k == 0 || k > magnitudes.size()) {
    detail::fail(error_code::invalid_argument, "k = ", k, " is outside [1, ", magnitudes.size(), "]");
  }
  auto nth = magnitudes.begin() + static_cast<std::ptrdiff_t>(k - 1);
  std::nth_element(magnitudes.begin(), nth, magnitudes.end(), std::greater<float>());
  return *nth;
}

// The k-th largest magnitude of a tensor's elements (k >= 1).
inline float kth_largest_magnitude(const cpu_backend& backend, const_tensor_view tensor, std::size_t k) {
  std::vector<float> magnitudes(tensor.numel());
  const const_tensor_view inputs[] = {tensor};
  for_each_element(backend, inputs, tensor.numel(), [&](std::size_t) {
    return [&magnitudes](const float* v, std::size_t i) { magnitudes[i] = detail::rank_magnitude(v[0]); };
  });
  return kth_largest(magnitudes, k);
}

// Keeps the elements whose rank position lies in [first, last), where the ranked quantity is
// value(values, index) over `inputs` (for example |model - base|). Exact count, O(n).
template <class Value>
bit_mask rank_band_mask(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                        std::size_t elements, const Value& value, std::size_t first, std::size_t last) {
  last = std::min(last, elements);
  first = std::min(first, last);
  if (first == 0 && last == elements) return bit_mask(elements, true);
  if (first == last) return bit_mask(elements, false);

  std::vector<float> magnitudes(elements);
  for_each_element(backend, inputs, elements, [&](std::size_t) {
    return [&](const float* v, std::size_t i) { magnitudes[i] = detail::rank_magnitude(value(v, i)); };
  });

  detail::rank_boundary bounds[2];
  const std::size_t positions[2] = {first, last};
  for (int b = 0; b < 2; ++b) {
    bounds[b].position = positions[b];
    bounds[b].nothing = positions[b] == 0;
    bounds[b].everything = positions[b] >= elements;
  }
  // Thresholds: select the larger position first; nth_element leaves everything before it
  // larger or equal, so the smaller position's selection can run on that prefix.
  if (!bounds[1].everything) bounds[1].threshold = kth_largest(magnitudes, bounds[1].position);
  if (!bounds[0].nothing) {
    const std::size_t prefix = bounds[1].everything ? elements : bounds[1].position;
    bounds[0].threshold = kth_largest(std::span<float>(magnitudes.data(), prefix), bounds[0].position);
  }

  // Count, per chunk, elements above and equal to each threshold (in index order).
  const std::size_t chunks = cpu_backend::chunk_count(elements);
  std::vector<std::size_t> greater[2] = {std::vector<std::size_t>(chunks), std::vector<std::size_t>(chunks)};
  std::vector<std::size_t> equal[2] = {std::vector<std::size_t>(chunks), std::vector<std::size_t>(chunks)};
  for_each_element(backend, inputs, elements, [&](std::size_t chunk) {
    return [&, chunk](const float* v, std::size_t i) {
      const float m = detail::rank_magnitude(value(v, i));
      for (int b = 0; b < 2; ++b) {
        greater[b][chunk] += m > bounds[b].threshold ? 1 : 0;
        equal[b][chunk] += m == bounds[b].threshold ? 1 : 0;
      }
    };
  });
  for (int b = 0; b < 2; ++b) {
    std::size_t total_greater = 0;
    for (std::size_t c = 0; c < chunks; ++c) total_greater += greater[b][c];
    bounds[b].ties_before = bounds[b].position > total_greater ? bounds[b].position - total_greater : 0;
    bounds[b].ties_before_chunk.assign(chunks, 0);
    std::size_t running = 0;
    for (std::size_t c = 0; c < chunks; ++c) {
      bounds[b].ties_before_chunk[c] = running;
      running += equal[b][c];
    }
  }

  bit_mask mask(elements);
  for_each_element(backend, inputs, elements, [&](std::size_t chunk) {
    struct state {
      std::size_t ties_seen[2];
    };
    return [&, s = state{{bounds[0].ties_before_chunk[chunk], bounds[1].ties_before_chunk[chunk]}}](
               const float* v, std::size_t i) mutable {
      const float m = detail::rank_magnitude(value(v, i));
      bool before[2];
      for (int b = 0; b < 2; ++b) {
        const auto& bound = bounds[b];
        if (bound.nothing) {
          before[b] = false;
        } else if (bound.everything) {
          before[b] = true;
        } else if (m > bound.threshold) {
          before[b] = true;
        } else if (m == bound.threshold) {
          before[b] = s.ties_seen[b]++ < bound.ties_before;
        } else {
          before[b] = false;
        }
      }
      if (before[1] && !before[0]) mask.set(i);
    };
  });
  return mask;
}

}  // namespace alloy
