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
#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "alloy/core/config.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/half.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/draws.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/random.hpp"

namespace alloy {

namespace detail {
// Eight 0/1 bytes into eight bits at once: the multiply gathers byte i's low bit into bit 56 + i.
inline std::uint64_t pack_flags(const std::uint8_t* flags) noexcept {
  std::uint64_t bits = 0;
  for (std::size_t byte = 0; byte < 64; byte += 8) {
    std::uint64_t eight;
    std::memcpy(&eight, flags + byte, 8);
    bits |= ((eight * 0x0102040810204080ull) >> 56) << byte;
  }
  return bits;
}
}  // namespace detail

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

 private:
  std::vector<std::uint64_t> words_;
  std::size_t size_ = 0;
};

namespace detail {

// Bits [first, first + count) of a mask's words as one 0/1 word each (first a multiple of 64), so
// that a loop over them can select without branches. Each 32-bit half-word is shifted by its
// lanes' positions at once: a broadcast and a variable shift per vector where the CPU has one.
inline void unpack_bits(const std::uint64_t* words, std::size_t first, std::size_t count, std::uint32_t* out) noexcept {
  const std::size_t whole = count - count % 32;
  for (std::size_t j = 0; j < whole; j += 32) {
    const auto half = static_cast<std::uint32_t>(words[(first + j) >> 6] >> ((first + j) & 32));
    for (std::uint32_t lane = 0; lane < 32; ++lane) out[j + lane] = (half >> lane) & 1u;
  }
  for (std::size_t j = whole; j < count; ++j) out[j] = (words[(first + j) >> 6] >> ((first + j) & 63)) & 1u;
}

// For the first `count` (at most 64) of 64 readable keys (magnitudes' bit patterns): the bits of
// the keys above `upper` and of those in [lower, upper], lower <= upper.
struct key_classes {
  std::uint64_t above = 0;
  std::uint64_t inside = 0;
};
inline key_classes classify_keys(const std::uint32_t* keys, std::size_t count, std::uint32_t lower,
                                 std::uint32_t upper) noexcept {
  // 0/1 bytes first, then packed eight at a time: a loop the compiler vectorises at every
  // dispatch level, the range test as one unsigned compare (key - lower <= upper - lower).
  alignas(64) std::uint8_t above[64];
  alignas(64) std::uint8_t inside[64];
  const std::uint32_t width = upper - lower;
  for (std::size_t j = 0; j < 64; ++j) {
    above[j] = keys[j] > upper ? 1 : 0;
    inside[j] = keys[j] - lower <= width ? 1 : 0;
  }
  const std::uint64_t valid = count >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << count) - 1;
  return {pack_flags(above) & valid, pack_flags(inside) & valid};
}

// |value| with the sign bit cleared (so -0 ranks as 0), and NaN as +infinity.
ALLOY_HD ALLOY_ALWAYS_INLINE float rank_magnitude(float value) noexcept {
  const std::uint32_t bits = float_bits(value) & 0x7fffffffu;
  return bits_float(bits > 0x7f800000u ? 0x7f800000u : bits);
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

namespace detail {

// Whether bit `index` of a mask's words is set: what kernels read of a mask, on any backend.
ALLOY_HD ALLOY_ALWAYS_INLINE bool mask_bit(const std::uint64_t* words, std::size_t index) noexcept {
  return (words[index >> 6] >> (index & 63)) & 1u;
}

// The first input's value: the magnitude a selection over one tensor ranks.
struct first_value {
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const { return values[0]; }
};

}  // namespace detail

// The mask of the elements where predicate(values, index) holds (values[i]: input i at `index`,
// in f32). A predicate is a small ALLOY_HD function object, as elementwise kernels are; like them it
// may give the CPU a block form that computes the same bits for a block at once:
//
//   void select_block(const float* const* columns, std::size_t count, std::size_t first,
//                     std::uint64_t* words) const      // words of elements [first, first + count)
template <class Predicate>
bit_mask select_where(const cpu_backend& backend, std::span<const const_tensor_view> inputs, std::size_t elements,
                      const Predicate& predicate) {
  bit_mask mask(elements);
  // Blocks start on word boundaries: 64 elements decide one word, and the flags loop vectorises.
  for_each_block(backend, inputs, elements, [&](std::size_t) {
    return [&](const float* const* columns, std::size_t count, std::size_t first) {
      if constexpr (requires(std::uint64_t* words) { predicate.select_block(columns, count, first, words); }) {
        std::uint64_t words[detail::block_elements / 64];
        predicate.select_block(columns, count, first, words);
        for (std::size_t w = 0; w < (count + 63) / 64; ++w) mask.set_word((first >> 6) + w, words[w]);
        return;
      }
      alignas(64) std::uint8_t flags[detail::block_elements];
      for (std::size_t j = 0; j < count; ++j) {
        flags[j] = predicate(detail::block_values{columns, j, inputs.size()}, first + j) ? 1 : 0;
      }
      for (std::size_t j = count; j < (count + 63) / 64 * 64; ++j) flags[j] = 0;
      for (std::size_t start = 0; start < count; start += 64) {
        mask.set_word((first + start) >> 6, detail::pack_flags(flags + start));
      }
    };
  });
  return mask;
}

// The number of set bits of a mask.
[[nodiscard]] inline std::size_t count_set(const cpu_backend&, const bit_mask& mask) noexcept { return mask.count(); }

namespace detail {

// keys[j] = the bits of rank_magnitude(value(values, first + j)) for a block's elements. A value
// functor may give the CPU a block form with elementwise kernels' signature,
//
//   void evaluate_block(const float* const* columns, std::size_t inputs, std::size_t count,
//                       std::size_t first, float* results) const
//
// computing exactly what operator() computes (for example with a per-row quantity looked up once
// per row rather than by a division per element); otherwise the per-element loop vectorises.
template <class Value>
ALLOY_ALWAYS_INLINE void block_keys(const Value& value, const float* const* columns, std::size_t inputs, std::size_t count,
                                    std::size_t first, std::uint32_t* keys) {
  if constexpr (requires(float* results) { value.evaluate_block(columns, inputs, count, first, results); }) {
    alignas(64) float values[block_elements];
    value.evaluate_block(columns, inputs, count, first, values);
    for (std::size_t j = 0; j < count; ++j) keys[j] = std::bit_cast<std::uint32_t>(rank_magnitude(values[j]));
  } else {
    for (std::size_t j = 0; j < count; ++j) {
      keys[j] = std::bit_cast<std::uint32_t>(rank_magnitude(value(block_values{columns, j, inputs}, first + j)));
    }
  }
}

// The elements at `positions` (0-based) of the descending order of magnitudes, all at once, by a
// parallel radix select on the magnitudes' bit patterns (non-negative floats order like their
// bits): three histogram passes of 11, 11 and 10 bits, each counting, for every distinct prefix
// the positions have found so far, the elements that share it. No copy of the tensor, no sort,
// O(n) for any number of positions. Counts are integers, so each thread counts into a histogram
// of its own and the totals do not depend on the thread count.
struct radix_selection {
  float threshold = 0.0f;
  std::size_t greater = 0;  // elements strictly above the threshold
};

template <class Value>
std::vector<radix_selection> select_descending(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                                               std::size_t elements, const Value& value,
                                               std::span<const std::size_t> positions) {
  const std::size_t targets = positions.size();
  std::vector<std::uint32_t> prefix(targets, 0);
  std::uint32_t prefix_mask = 0;
  std::vector<std::size_t> remaining(positions.begin(), positions.end());
  std::vector<radix_selection> result(targets);
  constexpr int shifts[3] = {21, 10, 0};
  constexpr int widths[3] = {11, 11, 10};
  // Each thread counts into `lanes` interleaved copies of its histograms: magnitudes crowd into
  // few bins (their exponents), and consecutive increments of one counter would wait on each other.
  constexpr std::size_t lanes = 4;
  const auto workers = static_cast<std::size_t>(std::max(1, backend.thread_count()));
  std::vector<std::uint32_t> histogram;
  std::vector<std::uint32_t> groups;  // the distinct prefixes of this pass
  std::vector<std::size_t> group_of(targets);
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = shifts[pass];
    const std::uint32_t bins = 1u << widths[pass];
    groups.clear();
    for (std::size_t t = 0; t < targets; ++t) {
      const auto found = std::find(groups.begin(), groups.end(), prefix[t]);
      group_of[t] = static_cast<std::size_t>(found - groups.begin());
      if (found == groups.end()) groups.push_back(prefix[t]);
    }
    const std::size_t per_worker = groups.size() * lanes * bins;
    histogram.assign(workers * per_worker, 0);
    for_each_block(backend, inputs, elements, [&](std::size_t) {
      return [&, counts = histogram.data() + worker_index() * per_worker](const float* const* columns, std::size_t count,
                                                                          std::size_t offset) {
        // The keys first (a loop that vectorises), then the counting.
        alignas(64) std::uint32_t keys[block_elements];
        at_active_simd_level([&] { block_keys(value, columns, inputs.size(), count, offset, keys); });
        for (std::size_t g = 0; g < groups.size(); ++g) {
          std::uint32_t* group_counts = counts + g * lanes * bins;
          const std::uint32_t wanted = groups[g];
          for (std::size_t j = 0; j < count; ++j) {
            if ((keys[j] & prefix_mask) == wanted) ++group_counts[(j % lanes) * bins + ((keys[j] >> shift) & (bins - 1))];
          }
        }
      };
    });
    std::vector<std::size_t> totals(groups.size() * bins, 0);
    for (std::size_t copy = 0; copy < workers * groups.size() * lanes; ++copy) {
      const std::uint32_t* counts = histogram.data() + copy * bins;
      std::size_t* group_totals = totals.data() + (copy / lanes) % groups.size() * bins;
      for (std::uint32_t bin = 0; bin < bins; ++bin) group_totals[bin] += counts[bin];
    }
    for (std::size_t t = 0; t < targets; ++t) {
      const std::size_t* group_totals = totals.data() + group_of[t] * bins;
      std::uint32_t chosen = 0;
      for (std::uint32_t bin = bins; bin-- > 0;) {
        if (remaining[t] < group_totals[bin]) {
          chosen = bin;
          break;
        }
        remaining[t] -= group_totals[bin];
        result[t].greater += group_totals[bin];
      }
      prefix[t] |= chosen << shift;
    }
    prefix_mask |= (bins - 1) << shift;
  }
  for (std::size_t t = 0; t < targets; ++t) result[t].threshold = std::bit_cast<float>(prefix[t]);
  return result;
}

inline void check_order_statistic(std::size_t position, std::size_t elements) {
  if (position >= elements) {
    fail(error_code::invalid_argument, "order statistic ", position, " of ", elements, " elements");
  }
}

}  // namespace detail

// The order statistic at `position` (0-based) of the descending order of
// rank_magnitude(value(values, index)) over the elements: the (position + 1)-th largest, by the
// radix selection (three passes, no copy of the tensor, no sort).
template <class Value>
float nth_largest(const cpu_backend& backend, std::span<const const_tensor_view> inputs, std::size_t elements,
                  const Value& value, std::size_t position) {
  detail::check_order_statistic(position, elements);
  detail::check_inputs(inputs, elements);
  const std::size_t positions[] = {position};
  return detail::select_descending(backend, inputs, elements, value, positions)[0].threshold;
}

// The order statistics at several positions at once (the same three passes as one: quartiles,
// for example), in the order of `positions`.
template <class Value>
std::vector<float> nth_largest_each(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                                   std::size_t elements, const Value& value, std::span<const std::size_t> positions) {
  for (const std::size_t position : positions) detail::check_order_statistic(position, elements);
  detail::check_inputs(inputs, elements);
  std::vector<float> thresholds;
  for (const auto& selection : detail::select_descending(backend, inputs, elements, value, positions)) {
    thresholds.push_back(selection.threshold);
  }
  return thresholds;
}

// The k-th largest magnitude of a tensor's elements (k >= 1).
inline float kth_largest_magnitude(const cpu_backend& backend, const_tensor_view tensor, std::size_t k) {
  if (k == 0 || k > tensor.numel()) {
    detail::fail(error_code::invalid_argument, "k = ", k, " is outside [1, ", tensor.numel(), "]");
  }
  const const_tensor_view inputs[] = {tensor};
  return nth_largest(backend, inputs, tensor.numel(), detail::first_value{}, k - 1);
}

namespace detail {

// The elements at rank positions [0, position) by the exact radix selection: three histogram
// passes, a pass counting each chunk's elements equal to the threshold, then a mask pass that
// takes the threshold's ties in index order.
template <class Value>
bit_mask exact_leading_ranks(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                             std::size_t elements, const Value& value, std::size_t position) {
  // The boundary sits before `position`: the element at position - 1 is the last one before it.
  const std::size_t last[] = {position - 1};
  const radix_selection selection = select_descending(backend, inputs, elements, value, last)[0];
  const auto threshold = std::bit_cast<std::uint32_t>(selection.threshold);
  const std::size_t ties_taken = position - selection.greater;
  const std::size_t k = inputs.size();
  std::vector<std::size_t> ties_before(cpu_backend::chunk_count(elements) + 1, 0);
  for_each_block(backend, inputs, elements, [&](std::size_t chunk) {
    return [&, chunk](const float* const* columns, std::size_t count, std::size_t offset) {
      alignas(64) std::uint32_t keys[block_elements];
      std::size_t ties = 0;
      at_active_simd_level([&] {
        block_keys(value, columns, k, count, offset, keys);
        for (std::size_t j = 0; j < count; ++j) ties += keys[j] == threshold ? 1 : 0;
      });
      ties_before[chunk + 1] += ties;
    };
  });
  std::partial_sum(ties_before.begin(), ties_before.end(), ties_before.begin());
  bit_mask mask(elements);
  for_each_block(backend, inputs, elements, [&](std::size_t chunk) {
    return [&, ties_seen = ties_before[chunk]](const float* const* columns, std::size_t count, std::size_t offset) mutable {
      alignas(64) std::uint32_t keys[block_elements];
      at_active_simd_level([&] { block_keys(value, columns, k, count, offset, keys); });
      for (std::size_t j = 0; j < count; ++j) {
        if (keys[j] > threshold || (keys[j] == threshold && ties_seen++ < ties_taken)) mask.set(offset + j);
      }
    };
  });
  return mask;
}

// An element whose key lies inside a sampled bracket, kept aside by the one-pass selection.
struct candidate {
  std::uint32_t key;
  std::uint32_t offset;  // within its chunk
};

// The wanted-th largest key among the candidates (keys in [lower, upper]), and how many of its
// ties belong before the boundary.
struct threshold_choice {
  std::uint32_t threshold = 0;
  std::size_t ties_taken = 0;
};

// Without sorting the candidates (a serial nth_element over a few per cent of the tensor was
// most of a selection's time): a histogram of their keys in at most 1024 bins of equal width
// (per chunk, in parallel), the bin that holds the wanted-th largest, then nth_element over that
// bin's keys only.
inline threshold_choice choose_among_candidates(const cpu_backend& backend, const std::vector<std::vector<candidate>>& gathered,
                                                std::uint32_t lower, std::uint32_t upper, std::size_t wanted) {
  upper = std::max(lower, std::min<std::uint32_t>(upper, 0x7f800000u));  // keys never exceed +inf's bits
  int shift = 0;
  while (((upper - lower) >> shift) >= 1024u) ++shift;
  const std::size_t bins = ((upper - lower) >> shift) + 1;
  const auto bin_of = [&](std::uint32_t key) { return static_cast<std::size_t>((key - lower) >> shift); };
  const std::size_t chunks = gathered.size();
  std::vector<std::uint32_t> histograms(chunks * bins, 0);
  for_each_index(backend, chunks, [&](std::size_t chunk) {
    std::uint32_t* counts = histograms.data() + chunk * bins;
    for (const candidate& c : gathered[chunk]) ++counts[bin_of(c.key)];
  });
  std::vector<std::size_t> totals(bins, 0);
  for (std::size_t chunk = 0; chunk < chunks; ++chunk) {
    const std::uint32_t* counts = histograms.data() + chunk * bins;
    for (std::size_t bin = 0; bin < bins; ++bin) totals[bin] += counts[bin];
  }
  std::size_t greater = 0;  // candidates in bins above the chosen one
  std::size_t chosen = 0;
  for (std::size_t bin = bins; bin-- > 0;) {
    if (wanted - greater <= totals[bin]) {
      chosen = bin;
      break;
    }
    greater += totals[bin];
  }
  std::vector<std::uint32_t> keys;
  keys.reserve(totals[chosen]);
  for (const auto& list : gathered) {
    for (const candidate& c : list) {
      if (bin_of(c.key) == chosen) keys.push_back(c.key);
    }
  }
  const std::size_t rank = wanted - greater;  // 1-based, within the bin, descending
  const auto nth = keys.begin() + static_cast<std::ptrdiff_t>(rank - 1);
  std::nth_element(keys.begin(), nth, keys.end(), std::greater<std::uint32_t>());
  threshold_choice choice;
  choice.threshold = *nth;
  const auto above = static_cast<std::size_t>(
      std::count_if(keys.begin(), keys.end(), [&](std::uint32_t key) { return key > choice.threshold; }));
  choice.ties_taken = wanted - greater - above;
  return choice;
}

// One boundary of the one-pass selection: its rank position, the sampled bracket of keys
// [lower, upper] that encloses it, and what the pass found: per chunk, the keys above the bracket
// and the candidates inside it (in index order).
struct bracketed_boundary {
  std::size_t position = 0;
  std::uint32_t lower = 0;
  std::uint32_t upper = 0;
  std::vector<std::vector<candidate>> gathered;
  std::vector<std::size_t> above;
};

// The masks of ranks [first, last) in one pass over the tensor, where a sample brackets each
// boundary: 64 Ki magnitudes read in 4096 runs of 16 give, per boundary, two keys that with
// overwhelming probability enclose the magnitude at its position. One pass then sets the bits of
// everything between the brackets and gathers the elements inside them (a few per cent of the
// tensor); each boundary is chosen exactly among its candidates. It returns nothing where a
// bracket turns out not to enclose its boundary, where the two brackets overlap (a narrow band),
// or where a bracket's candidates are more than an eighth of the tensor (one magnitude repeated
// that often): the caller then runs the exact selection, so the result never depends on the sample,
// only the time. first = 0 is the leading ranks, with one boundary.
template <class Value>
std::optional<bit_mask> bracketed_rank_band(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                                            std::size_t elements, const Value& value, std::size_t first,
                                            std::size_t last) {
  constexpr std::size_t runs = 4096;
  constexpr std::size_t run_length = 16;
  constexpr std::size_t samples = runs * run_length;
  if (elements < 16 * samples) return std::nullopt;  // small tensors: the exact passes are cheap
  const std::size_t k = inputs.size();

  std::vector<std::uint32_t> sample(samples);
  for_each_index(backend, runs, [&](std::size_t run) {
    const std::size_t at = run * (elements / runs);
    std::vector<float> loaded(k * run_length);
    for (std::size_t i = 0; i < k; ++i) load_block(inputs[i], at, run_length, loaded.data() + i * run_length);
    for (std::size_t j = 0; j < run_length; ++j) {
      sample[run * run_length + j] = std::bit_cast<std::uint32_t>(
          rank_magnitude(value(strided_values{loaded.data() + j, run_length, k}, at + j)));
    }
  });
  const std::size_t chunks = cpu_backend::chunk_count(elements);
  double bracketed_share = 0.0;  // of the tensor, expected inside the brackets
  // Expected sample elements before the boundary, +/- eight standard deviations (and a margin
  // for the correlation of neighbouring elements within a run). Keys above `upper` are before
  // the boundary; keys in [lower, upper] are gathered.
  const auto bracket = [&](std::size_t position) {
    const double fraction = static_cast<double>(position) / static_cast<double>(elements);
    const double expected = fraction * static_cast<double>(samples);
    const double spread = 8.0 * std::sqrt(static_cast<double>(samples) * fraction * (1.0 - fraction)) + 64.0;
    const auto descending_key = [&](double rank) {
      auto nth = sample.begin() + static_cast<std::ptrdiff_t>(rank);
      std::nth_element(sample.begin(), nth, sample.end(), std::greater<std::uint32_t>());
      return *nth;
    };
    bracketed_boundary b;
    b.position = position;
    b.upper = expected - spread < 0.0 ? std::numeric_limits<std::uint32_t>::max() : descending_key(expected - spread);
    b.lower = expected + spread >= static_cast<double>(samples) ? 0u : descending_key(expected + spread);
    b.gathered.resize(chunks);
    b.above.assign(chunks, 0);
    bracketed_share += 2.0 * spread / static_cast<double>(samples);
    return b;
  };
  // boundaries[0] ends the band; boundaries[1], where first > 0, starts it: its keys are larger.
  std::vector<bracketed_boundary> boundaries;
  boundaries.push_back(bracket(last));
  if (first > 0) {
    boundaries.push_back(bracket(first));
    if (boundaries[1].lower <= boundaries[0].upper) return std::nullopt;  // the brackets overlap
  }
  const bool banded = boundaries.size() == 2;

  std::atomic<std::size_t> gathered_total[2] = {0, 0};  // per boundary
  std::atomic<bool> overflow{false};
  const std::size_t cap = elements / 8;  // per boundary
  // Room for a quarter more than the brackets' expected share, so that the lists rarely grow (a
  // copy) during the pass.
  const auto expected_per_chunk =
      static_cast<std::size_t>(1.25 * bracketed_share * static_cast<double>(cpu_backend::chunk_elements)) + 64;
  bit_mask mask(elements);
  for_each_block(backend, inputs, elements, [&](std::size_t chunk) {
    return [&, chunk](const float* const* columns, std::size_t count, std::size_t offset) {
      if (overflow.load(std::memory_order_relaxed)) return;
      // Everything a block finds stays in locals until its end: the per-chunk counters and lists
      // of neighbouring chunks share cache lines, and writing them per element (as this pass
      // once did) made the two threads fight over those lines.
      alignas(64) std::uint32_t keys[block_elements];
      alignas(64) candidate found[2][block_elements];
      std::uint64_t band_words[block_elements / 64];
      std::size_t found_count[2] = {0, 0};
      std::size_t above_count[2] = {0, 0};
      const auto chunk_offset = static_cast<std::uint32_t>(offset - chunk * cpu_backend::chunk_elements);
      const auto gather = [&](std::size_t b, std::uint64_t inside, std::size_t word) {
        for (; inside != 0; inside &= inside - 1) {
          const auto j = word * 64 + static_cast<std::size_t>(std::countr_zero(inside));
          found[b][found_count[b]++] = {keys[j], chunk_offset + static_cast<std::uint32_t>(j)};
        }
      };
      at_active_simd_level([&] {
        block_keys(value, columns, k, count, offset, keys);
        for (std::size_t j = count; j % 64 != 0; ++j) keys[j] = 0;  // classify_keys reads whole words
        for (std::size_t word = 0; word * 64 < count; ++word) {
          const std::size_t valid = std::min<std::size_t>(64, count - word * 64);
          const key_classes ending = classify_keys(keys + word * 64, valid, boundaries[0].lower, boundaries[0].upper);
          std::uint64_t in_band = ending.above;
          above_count[0] += static_cast<std::size_t>(std::popcount(ending.above));
          gather(0, ending.inside, word);
          if (banded) {
            const key_classes starting = classify_keys(keys + word * 64, valid, boundaries[1].lower, boundaries[1].upper);
            in_band &= ~(starting.above | starting.inside);
            above_count[1] += static_cast<std::size_t>(std::popcount(starting.above));
            gather(1, starting.inside, word);
          }
          band_words[word] = in_band;
        }
      });
      // Blocks start on a word (block_elements is a multiple of 64); the words are this chunk's.
      for (std::size_t word = 0; word * 64 < count; ++word) mask.set_word((offset >> 6) + word, band_words[word]);
      for (std::size_t b = 0; b < boundaries.size(); ++b) {
        boundaries[b].above[chunk] += above_count[b];
        auto& list = boundaries[b].gathered[chunk];
        if (list.capacity() == 0) list.reserve(expected_per_chunk);
        list.insert(list.end(), found[b], found[b] + found_count[b]);
        if (gathered_total[b].fetch_add(found_count[b], std::memory_order_relaxed) + found_count[b] > cap) {
          overflow.store(true, std::memory_order_relaxed);
        }
      }
    };
  });
  if (overflow.load()) return std::nullopt;

  // Per boundary, its first `wanted` candidates in rank order are before it: keys above the
  // wanted-th largest, then its ties in index order (the lists are in chunk order, each in index
  // order). The band takes those of the ending boundary and the rest of the starting one's (all
  // of which lie above the ending bracket).
  std::vector<std::size_t> wanted(boundaries.size());
  for (std::size_t b = 0; b < boundaries.size(); ++b) {
    const auto& boundary = boundaries[b];
    const std::size_t above_total = std::accumulate(boundary.above.begin(), boundary.above.end(), std::size_t{0});
    std::size_t candidates = 0;
    for (const auto& list : boundary.gathered) candidates += list.size();
    if (above_total > boundary.position || above_total + candidates < boundary.position) return std::nullopt;
    wanted[b] = boundary.position - above_total;
  }
  for (std::size_t b = 0; b < boundaries.size(); ++b) {
    const auto& gathered = boundaries[b].gathered;
    const bool band_takes_before = b == 0;
    if (wanted[b] == 0 && band_takes_before) continue;  // none before this boundary
    const threshold_choice choice = wanted[b] == 0 ? threshold_choice{}
                                                   : choose_among_candidates(backend, gathered, boundaries[b].lower,
                                                                             boundaries[b].upper, wanted[b]);
    // Each chunk sorts its candidates given the ties of the chunks before it; chunks own whole
    // words, so they set bits in parallel.
    std::vector<std::size_t> ties_before(chunks + 1, 0);
    for_each_index(backend, chunks, [&](std::size_t chunk) {
      ties_before[chunk + 1] = static_cast<std::size_t>(std::count_if(
          gathered[chunk].begin(), gathered[chunk].end(), [&](const candidate& c) { return c.key == choice.threshold; }));
    });
    std::partial_sum(ties_before.begin(), ties_before.end(), ties_before.begin());
    for_each_index(backend, chunks, [&](std::size_t chunk) {
      std::size_t ties_seen = ties_before[chunk];
      for (const candidate& c : gathered[chunk]) {
        const bool before = wanted[b] > 0 && (c.key > choice.threshold ||
                                              (c.key == choice.threshold && ties_seen++ < choice.ties_taken));
        if (before == band_takes_before) mask.set(chunk * cpu_backend::chunk_elements + c.offset);
      }
    });
  }
  return mask;
}

// The elements at rank positions [0, position).
template <class Value>
bit_mask leading_ranks(const cpu_backend& backend, std::span<const const_tensor_view> inputs, std::size_t elements,
                       const Value& value, std::size_t position) {
  if (position == 0) return bit_mask(elements, false);
  if (position >= elements) return bit_mask(elements, true);
  if (auto mask = bracketed_rank_band(backend, inputs, elements, value, 0, position)) return std::move(*mask);
  return exact_leading_ranks(backend, inputs, elements, value, position);
}

}  // namespace detail

// Keeps the elements whose rank position lies in [first, last), where the ranked quantity is
// value(values, index) over `inputs` (for example |model - base|). Exact count, O(n): one pass
// over the inputs where a sample brackets both boundaries, else a pass per boundary (or a radix
// selection where no sample brackets it).
template <class Value>
bit_mask rank_band_mask(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                        std::size_t elements, const Value& value, std::size_t first, std::size_t last) {
  detail::check_inputs(inputs, elements);
  last = std::min(last, elements);
  first = std::min(first, last);
  if (first == last) return bit_mask(elements, false);
  if (first > 0 && last < elements) {
    if (auto mask = detail::bracketed_rank_band(backend, inputs, elements, value, first, last)) return std::move(*mask);
  }
  bit_mask mask = detail::leading_ranks(backend, inputs, elements, value, last);
  if (first == 0) return mask;
  const bit_mask dropped = detail::leading_ranks(backend, inputs, elements, value, first);
  for_each_chunk(backend, (elements + 63) / 64, [&](std::size_t, std::size_t begin, std::size_t end) {
    for (std::size_t w = begin; w < end; ++w) mask.set_word(w, mask.word(w) & ~dropped.word(w));
  });
  return mask;
}

namespace detail {
// The positions of `values` (non-negative floats, at most 2^32 of them) in ascending order, equal
// values by position, as std::stable_sort orders them: in the low 32 bits of `order`, the value's
// bits above. An LSD radix sort of (bits, position) on the value's four bytes, each a stable
// counting pass (skipped where every value has the same byte): linear in the row (DELLA's
// large buckets of equal or clustered magnitudes, below).
inline void ascending_positions(std::span<const float> values, std::vector<std::uint64_t>& order,
                                std::vector<std::uint64_t>& scratch) {
  const std::size_t n = values.size();
  order.resize(n);
  scratch.resize(n);
  // The four bytes' histograms in one pass over the values.
  std::array<std::array<std::uint32_t, 256>, 4> counts{};
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(values[i]);
    order[i] = (std::uint64_t{bits} << 32) | i;
    for (std::size_t digit = 0; digit < 4; ++digit) ++counts[digit][(bits >> (8 * digit)) & 255u];
  }
  for (std::size_t digit = 0; digit < 4; ++digit) {
    auto& start = counts[digit];
    if (std::find(start.begin(), start.end(), static_cast<std::uint32_t>(n)) != start.end()) continue;  // one value: no change
    std::uint32_t running = 0;
    for (auto& count : start) running += std::exchange(count, running);
    const int shift = 32 + 8 * static_cast<int>(digit);
    for (const std::uint64_t item : order) scratch[start[(item >> shift) & 255u]++] = item;
    order.swap(scratch);
  }
}

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

// Scratch of keep_below_rank_probability, allocated once per group of rows.
struct row_rank_scratch {
  std::vector<std::uint32_t> bucket_start;  // each bucket's first rank; one entry more than buckets
  std::vector<std::uint32_t> cursor;
  std::vector<std::uint32_t> members;    // positions in bucket order, ascending inside a bucket
  std::vector<std::uint32_t> undecided;  // positions whose draw their bucket's ranks do not decide
  std::vector<std::uint32_t> bucket_undecided;
  std::vector<float> bucket_values;
  std::vector<std::uint64_t> order, sort_scratch;
};

// keep[i] = draw[i] < probability[rank of values[i]], with the ranks of ascending_positions (by the
// value's bits, equal values by position) and `probability` monotone in the rank (either way).
// The same decisions as sorting the row, without sorting it: the values fall into buckets of
// their bit range (about a quarter as many as values), the counts give each bucket its range of
// ranks, and an element whose draw lies outside the probabilities of that whole range is decided
// at once. Only the few others are ranked inside their bucket: by counting its smaller members,
// or, in a large bucket holding many of them, by ranking the whole bucket once (bf16 models give
// large buckets of equal magnitudes). A count costs its bucket's size, and a bucket of more than
// 64 members is counted at most 8 times: linear in the row whatever its values. A sort of the row
// was most of DELLA's time; this is mostly three linear passes and a scatter.
inline void keep_below_rank_probability(std::span<const float> values, const float* draw, std::span<const float> probability,
                                        std::uint8_t* keep, row_rank_scratch& scratch) {
  const std::size_t n = values.size();
  if (n == 0) return;
  std::uint32_t lowest = std::bit_cast<std::uint32_t>(values[0]);
  std::uint32_t highest = lowest;
  for (const float value : values) {
    lowest = std::min(lowest, std::bit_cast<std::uint32_t>(value));
    highest = std::max(highest, std::bit_cast<std::uint32_t>(value));
  }
  const auto range_bits = static_cast<int>(std::bit_width(highest - lowest));
  const int bucket_bits = std::max(1, static_cast<int>(std::bit_width(n)) - 2);
  const int shift = std::max(0, range_bits - bucket_bits);
  const std::size_t buckets = std::size_t{(highest - lowest) >> shift} + 1;
  const auto bucket_of = [&](std::size_t i) { return (std::bit_cast<std::uint32_t>(values[i]) - lowest) >> shift; };
  auto& start = scratch.bucket_start;
  start.assign(buckets + 1, 0);
  for (std::size_t i = 0; i < n; ++i) ++start[bucket_of(i) + 1];
  for (std::size_t b = 1; b <= buckets; ++b) start[b] += start[b - 1];
  const bool rising = probability[n - 1] >= probability[0];
  auto& undecided = scratch.undecided;
  undecided.resize(n);
  std::size_t undecided_count = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t b = bucket_of(i);
    const float first = probability[start[b]];
    const float last = probability[start[b + 1] - 1];
    const bool below = draw[i] < (rising ? first : last);
    keep[i] = below ? 1 : 0;
    // Written always, counted only where undecided: no branch on the (random) draw.
    undecided[undecided_count] = static_cast<std::uint32_t>(i);
    undecided_count += static_cast<std::size_t>(!below & (draw[i] < (rising ? last : first)));
  }
  if (undecided_count == 0) return;
  auto& members = scratch.members;
  members.resize(n);
  scratch.cursor.assign(start.begin(), start.end() - 1);
  for (std::size_t i = 0; i < n; ++i) members[scratch.cursor[bucket_of(i)]++] = static_cast<std::uint32_t>(i);
  const auto item = [&](std::uint32_t i) { return (std::uint64_t{std::bit_cast<std::uint32_t>(values[i])} << 32) | i; };
  // An undecided element is ranked by counting its bucket's smaller members, unless its bucket is
  // large and holds many undecided elements: that bucket is ranked once, all of it.
  auto& per_bucket = scratch.bucket_undecided;
  per_bucket.assign(buckets, 0);
  for (std::size_t u = 0; u < undecided_count; ++u) ++per_bucket[bucket_of(undecided[u])];
  constexpr std::uint32_t counted_elements = 8;
  constexpr std::uint32_t counted_bucket = 64;
  for (std::size_t u = 0; u < undecided_count; ++u) {
    const std::uint32_t i = undecided[u];
    const std::uint32_t b = bucket_of(i);
    const std::uint32_t begin = start[b];
    const std::uint32_t end = start[b + 1];
    if (per_bucket[b] == 0) continue;  // ranked with its whole bucket
    if (end - begin <= counted_bucket || per_bucket[b] <= counted_elements) {
      const std::uint64_t own = item(i);
      std::uint32_t rank = begin;
      for (std::uint32_t m = begin; m < end; ++m) rank += item(members[m]) < own ? 1u : 0u;
      keep[i] = draw[i] < probability[rank] ? 1 : 0;
      continue;
    }
    per_bucket[b] = 0;
    // Members are in ascending position: where they all hold one value (the common case of a
    // large bucket: bf16 models give many equal magnitudes), that is their rank order; else
    // ascending_positions' order by (value, index in the bucket) is the row's by (value, position).
    const std::uint32_t one = std::bit_cast<std::uint32_t>(values[members[begin]]);
    bool equal = true;
    for (std::uint32_t m = begin; m < end; ++m) equal &= std::bit_cast<std::uint32_t>(values[members[m]]) == one;
    if (equal) {
      for (std::uint32_t m = begin; m < end; ++m) keep[members[m]] = draw[members[m]] < probability[m] ? 1 : 0;
      continue;
    }
    scratch.bucket_values.resize(end - begin);
    for (std::uint32_t m = begin; m < end; ++m) scratch.bucket_values[m - begin] = values[members[m]];
    detail::ascending_positions(scratch.bucket_values, scratch.order, scratch.sort_scratch);
    for (std::uint32_t r = 0; r < end - begin; ++r) {
      const std::uint32_t position = members[begin + static_cast<std::uint32_t>(scratch.order[r] & 0xffffffffu)];
      keep[position] = draw[position] < probability[begin + r] ? 1 : 0;
    }
  }
}

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
  if (row_length > std::size_t{0xffffffffu}) {
    detail::fail(error_code::invalid_argument, "a row of ", row_length, " elements is more than magnitude sampling ranks (2^32 - 1)");
  }
  if (n == 0) return bit_mask(0);
  // The keep probability of each rank is the same in every row: computed once.
  std::vector<float> probability(row_length);
  for_each_chunk(backend, row_length, [&](std::size_t, std::size_t begin, std::size_t end) {
    for (std::size_t rank = begin; rank < end; ++rank) probability[rank] = detail::rank_keep_probability(rank, row_length, lowest, spread);
  });
  // Rows in groups of about one chunk, each group's scratch allocated once. A group decides its
  // elements into bytes (keep_below_rank_probability), then packs them into the mask's words: the
  // words wholly inside the group at once, the partial words at its two ends (shared with the
  // neighbouring groups) set aside and added after the parallel loop, so no word has two writers.
  const std::size_t per_group = std::max<std::size_t>(1, cpu_backend::chunk_elements / row_length);
  const std::size_t groups = (rows + per_group - 1) / per_group;
  bit_mask mask(n);
  struct partial_word {
    std::size_t index = 0;
    std::uint64_t bits = 0;
  };
  std::vector<std::array<partial_word, 2>> group_ends(groups);
  for_each_index(backend, groups, [&](std::size_t group) {
    const std::size_t first_row = group * per_group;
    const std::size_t last_row = std::min(rows, first_row + per_group);
    const std::size_t begin = first_row * row_length;
    const std::size_t end = last_row * row_length;
    std::vector<float> loaded(inputs.size() * row_length);
    std::vector<float> magnitude(row_length);
    std::vector<float> draw(row_length);
    std::vector<std::uint8_t> keep(end - begin);
    detail::row_rank_scratch ranks;
    for (std::size_t row = first_row; row < last_row; ++row) {
      const std::size_t first = row * row_length;
      for (std::size_t i = 0; i < inputs.size(); ++i) {
        for (std::size_t at = 0; at < row_length; at += detail::block_elements) {
          const std::size_t count = std::min(detail::block_elements, row_length - at);
          detail::load_block(inputs[i], first + at, count, loaded.data() + i * row_length + at);
        }
      }
      detail::at_active_simd_level([&] {
        for (std::size_t j = 0; j < row_length; ++j) {
          magnitude[j] = detail::rank_magnitude(value(detail::strided_values{loaded.data() + j, row_length, inputs.size()}, first + j));
        }
        // The draws in element order (in vector lanes: draws.hpp).
        detail::uniform_draws(stream_key, first, row_length, draw.data());
      });
      detail::keep_below_rank_probability(magnitude, draw.data(), probability, keep.data() + (first - begin), ranks);
    }
    const auto bits_of = [&](std::size_t from, std::size_t to) {  // a range inside one word
      std::uint64_t bits = 0;
      for (std::size_t i = from; i < to; ++i) bits |= std::uint64_t{keep[i - begin]} << (i & 63);
      return bits;
    };
    const std::size_t whole_begin = std::min(end, (begin + 63) / 64 * 64);
    group_ends[group][0] = {begin >> 6, bits_of(begin, whole_begin)};
    std::size_t i = whole_begin;
    for (; i + 64 <= end; i += 64) mask.set_word(i >> 6, detail::pack_flags(keep.data() + (i - begin)));
    group_ends[group][1] = {i >> 6, bits_of(i, end)};
  });
  for (const auto& ends : group_ends) {
    for (const partial_word& part : ends) {
      if (part.bits != 0) mask.set_word(part.index, mask.word(part.index) | part.bits);
    }
  }
  return mask;
}

}  // namespace alloy
