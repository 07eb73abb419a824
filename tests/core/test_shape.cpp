#include <cstdint>
#include <sstream>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/core/shape.hpp"

using namespace alloy;

TEST_CASE("a shape counts its elements", "[shape]") {
  CHECK(shape{}.numel() == 1);
  CHECK(shape{}.rank() == 0);
  CHECK(shape{4, 3}.numel() == 12);
  CHECK(shape{4, 0, 3}.numel() == 0);
  CHECK(shape{2, 3}[1] == 3);
  CHECK(shape{2, 3} == shape{2, 3});
  CHECK_FALSE(shape{2, 3} == shape{3, 2});
  CHECK_FALSE(shape{6} == shape{6, 1});
  std::ostringstream text;
  text << shape{2, 3, 4};
  CHECK(text.str() == "[2, 3, 4]");
}

TEST_CASE("a shape refuses negative, too many and overflowing dimensions", "[shape]") {
  CHECK_THROWS_WITH(shape({2, -1}), Catch::Contains("negative"));
  CHECK_THROWS_WITH(shape({1, 1, 1, 1, 1, 1, 1, 1, 1}), Catch::Contains("rank 9"));
  try {
    shape({INT64_C(1) << 40, INT64_C(1) << 40});
    FAIL("overflow not detected");
  } catch (const error& e) {
    CHECK(e.code() == error_code::limit);
    CHECK_THAT(e.what(), Catch::Contains("overflows"));
  }
  // A zero anywhere makes a product that would otherwise overflow harmless.
  CHECK(shape({0, INT64_C(1) << 40, INT64_C(1) << 40}).numel() == 0);
  CHECK_THROWS_AS(checked_byte_size(std::size_t{1} << 62, 8, "x"), error);
  CHECK(checked_byte_size(3, 8, "x") == 24);
}

TEST_CASE("a shape is built from a span of extents", "[shape]") {
  const std::vector<std::int64_t> extents{5, 6};
  const shape s(extents);
  CHECK(s.rank() == 2);
  CHECK(s.numel() == 30);
  CHECK(std::vector<std::int64_t>(s.begin(), s.end()) == extents);
}
