#pragma once
// Reductions over tensors: sums of per-element terms, accumulated in f64 per chunk and combined
// in chunk order, so results do not depend on the thread count.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/core/shape.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"

namespace alloy {

namespace detail {

// The sum of term(0) .. term(count - 1) in eight interleaved f64 lanes, combined pairwise: a fixed
// order (so the same bits on any thread count) whose additions do not wait on one another, so
// that a block's sum runs at the speed of its loads rather than of one addition's latency per
// term. term(j) returns a float (widened exactly) or a double.
template <class Term>
double sum_in_lanes(std::size_t count, const Term& term) noexcept {
  constexpr std::size_t lanes = 8;
  double lane[lanes] = {};
  const std::size_t whole = count - count % lanes;
  for (std::size_t j = 0; j < whole; j += lanes) {
    for (std::size_t l = 0; l < lanes; ++l) lane[l] += static_cast<double>(term(j + l));
  }
  for (std::size_t j = whole; j < count; ++j) lane[j - whole] += static_cast<double>(term(j));
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

}  // namespace detail

// Sums `terms` per-element quantities at once: accumulate(values, index, sums) adds element
// `index`'s contributions into sums[0 .. terms).
//
// Per element, the f64 sums form one chain of dependent additions, and a test that decides per
// element whether a term enters becomes a branch. A kernel may therefore also give the CPU backend
// a block form, as elementwise's kernels do:
//
//   void accumulate_block(const float* const* columns, std::size_t count, std::size_t first,
//                         double* sums) const
//
// adding the terms of elements [first, first + count) (first a multiple of 64) into sums. It
// computes each term exactly as operator() does but may add them in an order of its own
// (detail::sum_in_lanes), so its sums may differ from the per-element form's in the last bits;
// they still do not depend on the thread count.
template <class Accumulate>
std::vector<double> reduce_sums(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                                std::size_t elements, std::size_t terms, const Accumulate& accumulate) {
  std::vector<std::vector<double>> partial(cpu_backend::chunk_count(elements));
  for_each_block(backend, inputs, elements, [&](std::size_t chunk) {
    partial[chunk].assign(terms, 0.0);
    // A default capture: the block form leaves `inputs` unused, which clang would warn about.
    return [&, sums = partial[chunk].data()](const float* const* columns, std::size_t count, std::size_t first) {
      if constexpr (requires(double* out) { accumulate.accumulate_block(columns, count, first, out); }) {
        detail::at_active_simd_level([&] { accumulate.accumulate_block(columns, count, first, sums); });
      } else {
        for (std::size_t j = 0; j < count; ++j) accumulate(detail::block_values{columns, j, inputs.size()}, first + j, sums);
      }
    };
  });
  std::vector<double> total(terms, 0.0);
  for (const auto& chunk : partial) {
    for (std::size_t n = 0; n < chunk.size(); ++n) total[n] += chunk[n];
  }
  return total;
}

// The vectors a per-row reduction runs along: `count` vectors of `length` elements each. Vector
// r holds the flat elements [r length, (r + 1) length) (the tensor's last axis), or, `strided`,
// the elements r, r + count, r + 2 count, ... (its first axis: column r of the matrix that
// flattens the other axes).
struct tensor_rows {
  std::size_t count = 1;
  std::size_t length = 0;
  bool strided = false;

  // The whole tensor as one vector.
  [[nodiscard]] static tensor_rows whole(std::size_t elements) noexcept { return {1, elements, false}; }
  // The vectors along the last axis (a tensor of rank 0 or 1 is one vector).
  [[nodiscard]] static tensor_rows last_axis(const shape& s) noexcept {
    if (s.rank() < 2) return whole(s.numel());
    const auto length = static_cast<std::size_t>(s[s.rank() - 1]);
    return {length == 0 ? 0 : s.numel() / length, length, false};
  }
  // The vectors along the first axis (a tensor of rank 0 or 1 is one vector).
  [[nodiscard]] static tensor_rows first_axis(const shape& s) noexcept {
    if (s.rank() < 2) return whole(s.numel());
    const auto length = static_cast<std::size_t>(s[0]);
    return {length == 0 ? 0 : s.numel() / length, length, true};
  }

  [[nodiscard]] ALLOY_HD std::size_t element(std::size_t row, std::size_t j) const noexcept {
    return strided ? row + j * count : row * length + j;
  }
  [[nodiscard]] ALLOY_HD std::size_t row_of(std::size_t index) const noexcept {
    if (count == 1) return 0;
    return strided ? index % count : index / length;
  }
};

namespace detail {
// Calls body(row, begin, end) for each run [begin, end) of a block's elements (offsets from
// `first`, count of them) that lies in one vector of `rows`: kernels that read a per-row quantity
// find it once per run instead of dividing per element.
template <class Body>
ALLOY_ALWAYS_INLINE void for_each_row_run(const tensor_rows& rows, std::size_t first, std::size_t count, Body&& body) {
  if (count == 0) return;
  if (rows.count == 1) {
    body(std::size_t{0}, std::size_t{0}, count);
  } else if (rows.strided) {
    for (std::size_t j = 0; j < count; ++j) body(rows.row_of(first + j), j, j + 1);
  } else {
    std::size_t row = first / rows.length;
    for (std::size_t j = 0; j < count; ++row) {
      const std::size_t end = std::min(count, (row + 1) * rows.length - first);
      body(row, j, end);
      j = end;
    }
  }
}

// body(row, j, values) for each element j < count of a block starting at `first`, with values
// the element's inputs (columns[i][j]), the input count fixed at compile time up to 9 (so that
// loops over inputs unroll and the loop over elements vectorises) and `row` found once per run.
template <class Body>
ALLOY_ALWAYS_INLINE void for_each_row_element(const tensor_rows& rows, const float* const* columns, std::size_t inputs,
                                              std::size_t first, std::size_t count, Body&& body) {
  const auto run = [&](const auto& values_at) {
    for_each_row_run(rows, first, count, [&](std::size_t row, std::size_t begin, std::size_t end) {
      for (std::size_t j = begin; j < end; ++j) body(row, j, values_at(j));
    });
  };
  const auto fixed = [&]<std::size_t Count>(std::integral_constant<std::size_t, Count>) {
    run([&](std::size_t j) { return fixed_block_values<Count>{columns, j}; });
  };
  if (!with_fixed_count<9>(inputs, fixed)) run([&](std::size_t j) { return block_values{columns, j, inputs}; });
}
}  // namespace detail

// Sums `terms` per-element quantities within each vector of `rows`: accumulate(values, index,
// sums) as for reduce_sums. Returns rows.count * terms sums, vector by vector. Each vector's sums
// are added in element order on one thread (vectors in parallel), so they do not depend on the
// thread count; a single vector is the whole tensor, summed by reduce_sums' chunks. Where the
// vectors are rows (not strided) and the functor has reduce_sums' block form, it is called on
// the row's consecutive pieces of at most 512 elements, each inside the row (so `first` is any
// element, not a multiple of 64, and the functor finds the row once per piece).
template <class Accumulate>
std::vector<double> reduce_rows(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                                const tensor_rows& rows, std::size_t terms, const Accumulate& accumulate) {
  const std::size_t elements = rows.count * rows.length;
  detail::check_inputs(inputs, elements);
  if (rows.count == 1) return reduce_sums(backend, inputs, elements, terms, accumulate);
  std::vector<double> sums(rows.count * terms, 0.0);
  if (elements == 0 || terms == 0) return sums;
  const std::size_t k = inputs.size();
  // Groups of whole vectors of about one chunk each: one buffer per group, loaded contiguously
  // where the vectors are rows.
  const std::size_t per_group = std::max<std::size_t>(1, cpu_backend::chunk_elements / rows.length);
  const std::size_t groups = (rows.count + per_group - 1) / per_group;
  for_each_index(backend, groups, [&](std::size_t group) {
    std::vector<float> loaded(k * rows.length);
    std::vector<const float*> columns(k == 0 ? 1 : k);
    std::vector<const float*> piece(columns.size());  // the block form's columns, from `at` on
    for (std::size_t i = 0; i < k; ++i) columns[i] = loaded.data() + i * rows.length;
    const std::size_t last = std::min(rows.count, (group + 1) * per_group);
    for (std::size_t row = group * per_group; row < last; ++row) {
      for (std::size_t i = 0; i < k; ++i) {
        if (!rows.strided) {
          detail::load_block(inputs[i], rows.element(row, 0), rows.length, loaded.data() + i * rows.length);
        } else {
          for (std::size_t j = 0; j < rows.length; ++j) {
            detail::load_block(inputs[i], rows.element(row, j), 1, loaded.data() + i * rows.length + j);
          }
        }
      }
      double* out = sums.data() + row * terms;
      if constexpr (requires(const float* const* block, double* into) {
                      accumulate.accumulate_block(block, std::size_t{}, std::size_t{}, into);
                    }) {
        if (!rows.strided) {
          // The block form over the vector's pieces, in order: each piece lies in this vector.
          for (std::size_t at = 0; at < rows.length; at += detail::block_elements) {
            for (std::size_t i = 0; i < k; ++i) piece[i] = columns[i] + at;
            const std::size_t count = std::min(detail::block_elements, rows.length - at);
            detail::at_active_simd_level([&] { accumulate.accumulate_block(piece.data(), count, rows.element(row, at), out); });
          }
          continue;
        }
      }
      for (std::size_t j = 0; j < rows.length; ++j) {
        accumulate(detail::block_values{columns.data(), j, k}, rows.element(row, j), out);
      }
    }
  });
  return sums;
}

template <std::size_t N, class Term>
std::array<double, N> reduce_sum(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                                 std::size_t elements, const Term& term) {
  const auto sums = reduce_sums(backend, inputs, elements, N, [&term](const auto& values, std::size_t index, double* out) {
    const std::array<double, N> t = term(values, index);
    for (std::size_t n = 0; n < N; ++n) out[n] += t[n];
  });
  std::array<double, N> result{};
  for (std::size_t n = 0; n < N; ++n) result[n] = sums[n];
  return result;
}

inline double sum(const cpu_backend& backend, const_tensor_view x) {
  const const_tensor_view inputs[] = {x};
  return reduce_sum<1>(backend, inputs, x.numel(), [](const auto& v, std::size_t) {
    return std::array<double, 1>{static_cast<double>(v[0])};
  })[0];
}

inline double dot(const cpu_backend& backend, const_tensor_view x, const_tensor_view y) {
  const const_tensor_view inputs[] = {x, y};
  return reduce_sum<1>(backend, inputs, x.numel(), [](const auto& v, std::size_t) {
    return std::array<double, 1>{static_cast<double>(v[0]) * static_cast<double>(v[1])};
  })[0];
}

inline double squared_norm(const cpu_backend& backend, const_tensor_view x) {
  const const_tensor_view inputs[] = {x};
  return reduce_sum<1>(backend, inputs, x.numel(), [](const auto& v, std::size_t) {
    return std::array<double, 1>{static_cast<double>(v[0]) * static_cast<double>(v[0])};
  })[0];
}

namespace detail {

// The first element in [begin, end) whose bits mark a NaN or an infinity (exponent all ones),
// or `end`. Blocks of 256 are tested without branches (so they vectorise); only a block that
// holds one is searched element by element.
template <class Bits>
std::size_t first_non_finite_bits(const std::byte* data, std::size_t begin, std::size_t end, Bits exponent) {
  constexpr std::size_t block = 256;
  for (std::size_t first = begin; first < end; first += block) {
    const std::size_t last = std::min(end, first + block);
    Bits values[block];
    std::memcpy(values, data + first * sizeof(Bits), (last - first) * sizeof(Bits));
    bool any = false;
    for (std::size_t i = 0; i < last - first; ++i) any |= (values[i] & exponent) == exponent;
    if (!any) continue;
    for (std::size_t i = 0; i < last - first; ++i) {
      if ((values[i] & exponent) == exponent) return first + i;
    }
  }
  return end;
}

}  // namespace detail

// The index of the first NaN or infinity in `x` (in element order), or nothing. Integer and
// boolean tensors have none. F8_E4M3 has no infinities; its NaN (S.1111.111) is found.
inline std::optional<std::size_t> first_non_finite(const cpu_backend& backend, const_tensor_view x) {
  const std::size_t none = std::numeric_limits<std::size_t>::max();
  std::vector<std::size_t> found(cpu_backend::chunk_count(x.numel()), none);
  const std::byte* data = x.data();
  for_each_chunk(backend, x.numel(), [&](std::size_t chunk, std::size_t begin, std::size_t end) {
    std::size_t at = end;
    switch (x.dtype()) {
      case dtype::f64: at = detail::first_non_finite_bits<std::uint64_t>(data, begin, end, 0x7ff0000000000000ull); break;
      case dtype::f32: at = detail::first_non_finite_bits<std::uint32_t>(data, begin, end, 0x7f800000u); break;
      case dtype::f16: at = detail::first_non_finite_bits<std::uint16_t>(data, begin, end, std::uint16_t{0x7c00}); break;
      case dtype::bf16: at = detail::first_non_finite_bits<std::uint16_t>(data, begin, end, std::uint16_t{0x7f80}); break;
      case dtype::f8_e4m3: at = detail::first_non_finite_bits<std::uint8_t>(data, begin, end, std::uint8_t{0x7f}); break;
      case dtype::f8_e5m2: at = detail::first_non_finite_bits<std::uint8_t>(data, begin, end, std::uint8_t{0x7c}); break;
      default: break;
    }
    if (at != end) found[chunk] = at;
  });
  const auto first = std::find_if(found.begin(), found.end(), [&](std::size_t at) { return at != none; });
  if (first == found.end()) return std::nullopt;
  return *first;
}

}  // namespace alloy
