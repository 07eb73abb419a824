#pragma once
// Selection by magnitude without sorting: the k-th largest magnitude of a tensor by O(n)
// selection, and masks that keep a band of ranks exactly, with a deterministic rule for equal
// magnitudes.
//
// Rank order: larger magnitude first; equal magnitudes in ascending element index. NaN counts as
// the largest magnitude (so it is kept first and propagates, rather than vanishing silently).
// "Keep positions [first, last)" keeps exactly last - first elements of that order.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/half.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/random.hpp"

namespace alloy {

// One bit per element. Chunks of the CPU backend own whole words, so they fill it in parallel.
class bit_mask {
 public:
  bit_mask() = default;
  explicit bit_mask(std::size_t size, bool value = false)
      : words_((size + 63) / 64, value ? ~std::uint64_t{0} : 0), size_(size) {}

  [[nodiscard]] bool test(std::size_t index) const noexcept {  // device code reads words()
    return (words_[index >> 6] >> (index & 63)) & 1u;
  }
  void set(std::size_t index) noexcept { words_[index >> 6] |= std::uint64_t{1} << (index & 63); }
  // Whole words, for loops that decide 64 elements at a time.
  [[nodiscard]] std::uint64_t word(std::size_t index) const noexcept { return words_[index]; }
  void set_word(std::size_t index, std::uint64_t bits) noexcept { words_[index] = bits; }
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

// |value| with the sign bit cleared (so -0 ranks as 0), and NaN as +infinity.
ALLOY_HD ALLOY_ALWAYS_INLINE float rank_magnitude(float value) noexcept {
  const std::uint32_t bits = float_bits(value) & 0x7fffffffu;
  return bits_float(bits > 0x7f800000u ? 0x7f800000u : bits);
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

namespace detail {

// The element at `position` (0-based) of the descending order of magnitudes, by a parallel radix
// select on the magnitudes' bit patterns (non-negative floats order like their bits): three
// histogram passes of 11, 11 and 10 bits, each over the elements that share the prefix found so
// far. No copy of the tensor, no sort, O(n); the last pass's per-chunk counts of the selected
// value give every chunk's count of ties before it, for exact tie handling.
struct radix_selection {
  float threshold = 0.0f;
  std::size_t greater = 0;                     // elements strictly above the threshold
  std::vector<std::size_t> ties_before_chunk;  // per chunk: elements equal to it in earlier chunks
};

template <class Value>
radix_selection select_descending(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                                  std::size_t elements, const Value& value, std::size_t position) {
  const std::size_t chunks = cpu_backend::chunk_count(elements);
  std::uint32_t prefix = 0;
  std::uint32_t prefix_mask = 0;
  std::size_t remaining = position;
  radix_selection result;
  constexpr int shifts[3] = {21, 10, 0};
  constexpr int widths[3] = {11, 11, 10};
  // Each chunk counts into `lanes` interleaved copies of its histogram: magnitudes crowd into few
  // bins (their exponents), and consecutive increments of one counter would wait on each other.
  constexpr std::size_t lanes = 4;
  std::vector<std::uint32_t> histogram;
  const auto chunk_count_of = [&](std::size_t chunk, std::uint32_t bin, std::uint32_t bins) {
    std::size_t total = 0;
    for (std::size_t lane = 0; lane < lanes; ++lane) total += histogram[(chunk * lanes + lane) * bins + bin];
    return total;
  };
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = shifts[pass];
    const std::uint32_t bins = 1u << widths[pass];
    histogram.assign(chunks * lanes * bins, 0);
    for_each_block(backend, inputs, elements, [&](std::size_t chunk) {
      return [&, counts = histogram.data() + chunk * lanes * bins](const float* const* columns, std::size_t count,
                                                                    std::size_t offset) {
        // The keys first (a loop that vectorises), then the counting.
        alignas(64) std::uint32_t keys[block_elements];
        for (std::size_t j = 0; j < count; ++j) {
          keys[j] = std::bit_cast<std::uint32_t>(rank_magnitude(value(block_values{columns, j, inputs.size()}, offset + j)));
        }
        for (std::size_t j = 0; j < count; ++j) {
          if ((keys[j] & prefix_mask) == prefix) ++counts[(j % lanes) * bins + ((keys[j] >> shift) & (bins - 1))];
        }
      };
    });
    std::vector<std::size_t> totals(bins, 0);
    for (std::size_t c = 0; c < chunks * lanes; ++c) {
      const std::uint32_t* counts = histogram.data() + c * bins;
      for (std::uint32_t bin = 0; bin < bins; ++bin) totals[bin] += counts[bin];
    }
    std::uint32_t chosen = 0;
    for (std::uint32_t bin = bins; bin-- > 0;) {
      if (remaining < totals[bin]) {
        chosen = bin;
        break;
      }
      remaining -= totals[bin];
      result.greater += totals[bin];
    }
    prefix |= chosen << shift;
    prefix_mask |= (bins - 1) << shift;
    if (pass == 2) {
      result.ties_before_chunk.assign(chunks, 0);
      std::size_t running = 0;
      for (std::size_t c = 0; c < chunks; ++c) {
        result.ties_before_chunk[c] = running;
        running += chunk_count_of(c, chosen, bins);
      }
    }
  }
  result.threshold = std::bit_cast<float>(prefix);
  return result;
}

}  // namespace detail

// The k-th largest magnitude of a tensor's elements (k >= 1).
inline float kth_largest_magnitude(const cpu_backend& backend, const_tensor_view tensor, std::size_t k) {
  if (k == 0 || k > tensor.numel()) {
    detail::fail(error_code::invalid_argument, "k = ", k, " is outside [1, ", tensor.numel(), "]");
  }
  const const_tensor_view inputs[] = {tensor};
  return detail::select_descending(backend, inputs, tensor.numel(), [](const auto& v, std::size_t) { return v[0]; },
                                   k - 1)
      .threshold;
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

  detail::rank_boundary bounds[2];
  const std::size_t positions[2] = {first, last};
  for (int b = 0; b < 2; ++b) {
    auto& bound = bounds[b];
    bound.position = positions[b];
    bound.nothing = positions[b] == 0;
    bound.everything = positions[b] >= elements;
    if (bound.nothing || bound.everything) continue;
    // The boundary sits before position P: the element at P - 1 is the last one before it.
    auto selection = detail::select_descending(backend, inputs, elements, value, bound.position - 1);
    bound.threshold = selection.threshold;
    bound.ties_before = bound.position - selection.greater;
    bound.ties_before_chunk = std::move(selection.ties_before_chunk);
  }

  bit_mask mask(elements);
  for_each_block(backend, inputs, elements, [&](std::size_t chunk) {
    const auto ties_at = [&](int b) {
      return bounds[b].ties_before_chunk.empty() ? std::size_t{0} : bounds[b].ties_before_chunk[chunk];
    };
    return [&, ties_seen = std::array<std::size_t, 2>{ties_at(0), ties_at(1)}](
               const float* const* columns, std::size_t count, std::size_t offset) mutable {
      for (std::size_t j = 0; j < count; ++j) {
        const float m = detail::rank_magnitude(value(detail::block_values{columns, j, inputs.size()}, offset + j));
        bool before[2];
        for (int b = 0; b < 2; ++b) {
          const auto& bound = bounds[b];
          if (bound.nothing) {
            before[b] = false;
          } else if (bound.everything || m > bound.threshold) {
            before[b] = true;
          } else if (m == bound.threshold) {
            before[b] = ties_seen[static_cast<std::size_t>(b)]++ < bound.ties_before;
          } else {
            before[b] = false;
          }
        }
        if (before[1] && !before[0]) mask.set(offset + j);
      }
    };
  });
  return mask;
}

namespace detail {
// The keep probability of the element of ascending rank `rank` in a row of `length`: it rises
// linearly from `lowest` to `lowest + spread`. Computed in f64 without fused multiply-adds, so
// every backend rounds it to the same float.
ALLOY_HD inline float rank_keep_probability(std::size_t rank, std::size_t length, double lowest, double spread) noexcept {
  const double position = length > 1 ? static_cast<double>(rank) / static_cast<double>(length - 1) : 0.5;
#if defined(__CUDA_ARCH__)
  return static_cast<float>(__dadd_rn(lowest, __dmul_rn(position, spread)));
#else
  return static_cast<float>(lowest + position * spread);
#endif
}

// Input i at one element of a row held as one f32 buffer per input, `stride` apart.
struct strided_values {
  const float* first;
  std::size_t stride;
  std::size_t count;
  float operator[](std::size_t input) const { return first[input * stride]; }
  [[nodiscard]] std::size_t size() const { return count; }
};
}  // namespace detail

// Keeps each element with a probability that rises with its rank inside its row (DELLA's
// MAGPRUNE): the elements are `rows` rows of `row_length`, ranked within each row by
// rank_magnitude(value(values, index)) ascending, equal magnitudes by position; the element of
// rank r at flat position `index` is kept when
//   uniform01(stream_key, index) < rank_keep_probability(r, row_length, lowest, spread).
template <class Value>
bit_mask rank_sampling_mask(const cpu_backend& backend, std::span<const const_tensor_view> inputs, std::size_t rows,
                            std::size_t row_length, const Value& value, std::uint64_t stream_key, double lowest,
                            double spread) {
  const std::size_t n = rows * row_length;
  detail::check_inputs(inputs, n);
  std::vector<std::uint8_t> keep(n);
  for_each_index(backend, rows, [&](std::size_t row) {
    const std::size_t first = row * row_length;
    std::vector<float> loaded(inputs.size() * row_length);
    std::vector<float> magnitude(row_length);
    std::vector<std::uint32_t> order(row_length);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      for (std::size_t at = 0; at < row_length; at += detail::block_elements) {
        const std::size_t count = std::min(detail::block_elements, row_length - at);
        detail::load_block(inputs[i], first + at, count, loaded.data() + i * row_length + at);
      }
    }
    for (std::size_t j = 0; j < row_length; ++j) {
      magnitude[j] = detail::rank_magnitude(value(detail::strided_values{loaded.data() + j, row_length, inputs.size()}, first + j));
    }
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(),
                     [&magnitude](std::uint32_t x, std::uint32_t y) { return magnitude[x] < magnitude[y]; });
    for (std::size_t rank = 0; rank < row_length; ++rank) {
      const std::size_t index = first + order[rank];
      keep[index] = uniform01(stream_key, index) < detail::rank_keep_probability(rank, row_length, lowest, spread) ? 1 : 0;
    }
  });
  return bit_mask::from_bytes(backend, keep);
}

}  // namespace alloy
