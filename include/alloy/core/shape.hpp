#pragma once
// The extents of a tensor: at most `shape::max_rank` non-negative dimensions, stored inline so a
// shape is trivially copyable into a kernel's arguments. Constructing one checks every dimension
// and that the element count fits in 63 bits, so later code can multiply without overflow checks.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <ostream>
#include <span>

#include "alloy/core/config.hpp"
#include "alloy/core/error.hpp"

namespace alloy {

class shape {
 public:
  static constexpr std::size_t max_rank = 8;
  using extent_type = std::int64_t;

  shape() = default;  // rank 0: a scalar with one element

  shape(std::initializer_list<extent_type> extents) { assign(extents.begin(), extents.size()); }
  explicit shape(std::span<const extent_type> extents) { assign(extents.data(), extents.size()); }

  [[nodiscard]] ALLOY_HD std::size_t rank() const noexcept { return rank_; }
  [[nodiscard]] ALLOY_HD extent_type operator[](std::size_t axis) const noexcept {
    return extents_[axis];
  }
  [[nodiscard]] ALLOY_HD std::size_t numel() const noexcept { return numel_; }
  [[nodiscard]] std::span<const extent_type> extents() const noexcept { return {extents_, rank_}; }

  [[nodiscard]] ALLOY_HD const extent_type* begin() const noexcept { return extents_; }
  [[nodiscard]] ALLOY_HD const extent_type* end() const noexcept { return extents_ + rank_; }

  friend bool operator==(const shape& a, const shape& b) noexcept {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
  }

  friend std::ostream& operator<<(std::ostream& out, const shape& s) {
    out << '[';
    for (std::size_t axis = 0; axis < s.rank_; ++axis) out << (axis ? ", " : "") << s.extents_[axis];
    return out << ']';
  }

 private:
  void assign(const extent_type* extents, std::size_t rank) {
    if (rank > max_rank) {
      detail::fail(error_code::limit, "tensor rank ", rank, " exceeds alloy's maximum of ", max_rank);
    }
    std::size_t count = 1;
    for (std::size_t axis = 0; axis < rank; ++axis) {
      const extent_type extent = extents[axis];
      if (extent < 0) {
        detail::fail(error_code::invalid_argument, "dimension ", axis, " of a shape is negative (",
                     extent, ")");
      }
      const auto unsigned_extent = static_cast<std::size_t>(extent);
      constexpr auto limit = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
      if (unsigned_extent != 0 && count > limit / unsigned_extent) {
        detail::fail(error_code::limit, "shape's element count overflows 63 bits at dimension ",
                     axis, " (", extent, ")");
      }
      count *= unsigned_extent;
      extents_[axis] = extent;
    }
    rank_ = rank;
    numel_ = count;
  }

  extent_type extents_[max_rank] = {};
  std::size_t rank_ = 0;
  std::size_t numel_ = 1;
};

// Bytes for `count` elements of `element_size` bytes, or an error naming `what` when the product
// does not fit in 63 bits (possible for hostile shapes of wide dtypes).
inline std::size_t checked_byte_size(std::size_t count, std::size_t element_size,
                                     std::string_view what) {
  constexpr auto limit = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  if (element_size != 0 && count > limit / element_size) {
    detail::fail(error_code::limit, "byte size of ", what, " overflows 63 bits (", count,
                 " elements of ", element_size, " bytes)");
  }
  return count * element_size;
}

}  // namespace alloy
