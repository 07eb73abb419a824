#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include <catch2/catch.hpp>

#include "alloy/core/dtype.hpp"
#include "alloy/core/half.hpp"

using namespace alloy;

TEST_CASE("every dtype has a safetensors name that parses back to it", "[dtype]") {
  for (dtype type : all_dtypes) {
    CHECK(dtype_from_name(name(type)) == type);
    CHECK(parse_dtype(name(type)) == type);
    CHECK(size_of(type) > 0);
  }
  CHECK(size_of(dtype::bf16) == 2);
  CHECK(size_of(dtype::f64) == 8);
  CHECK(size_of(dtype::boolean) == 1);
}

TEST_CASE("dtype names are exact in files and lenient in configs", "[dtype]") {
  CHECK_FALSE(dtype_from_name("f32").has_value());
  CHECK_FALSE(dtype_from_name("bfloat16").has_value());
  CHECK_FALSE(dtype_from_name("F33").has_value());
  CHECK(parse_dtype("bfloat16") == dtype::bf16);
  CHECK(parse_dtype("float16") == dtype::f16);
  CHECK(parse_dtype("float32") == dtype::f32);
  CHECK_FALSE(parse_dtype("int4").has_value());
}

TEST_CASE("only f32, f16 and bf16 are mergeable", "[dtype]") {
  for (dtype type : all_dtypes) {
    const bool expected = type == dtype::f32 || type == dtype::f16 || type == dtype::bf16;
    CHECK(is_mergeable(type) == expected);
  }
  CHECK(dtype_of_v<float> == dtype::f32);
  CHECK(dtype_of_v<const bfloat16> == dtype::bf16);
  CHECK(dtype_of_v<std::int64_t> == dtype::i64);
}

namespace {
float from_bits(std::uint32_t bits) { return std::bit_cast<float>(bits); }
}  // namespace

TEST_CASE("f32 to f16 rounds to nearest even at hand-checked points", "[dtype][half]") {
  CHECK(f32_to_f16_bits(1.0f) == 0x3c00);
  CHECK(f32_to_f16_bits(-2.0f) == 0xc000);
  CHECK(f32_to_f16_bits(0.0f) == 0x0000);
  CHECK(f32_to_f16_bits(-0.0f) == 0x8000);
  CHECK(f32_to_f16_bits(65504.0f) == 0x7bff);           // largest finite half
  CHECK(f32_to_f16_bits(65519.99f) == 0x7bff);          // below the midpoint to 65536
  CHECK(f32_to_f16_bits(65520.0f) == 0x7c00);           // the tie goes to the even: infinity
  CHECK(f32_to_f16_bits(1e9f) == 0x7c00);
  CHECK(f32_to_f16_bits(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
  CHECK(f32_to_f16_bits(std::ldexp(1.0f, -25)) == 0x0000);  // tie between 0 and it: even is 0
  CHECK(f32_to_f16_bits(std::ldexp(1.5f, -25)) == 0x0001);
  CHECK(f32_to_f16_bits(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 units: tie to even 2
  CHECK(f32_to_f16_bits(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
  CHECK(f32_to_f16_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);       // tie: even is 1.0
  CHECK(f32_to_f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);   // tie: even is up
  CHECK(f32_to_f16_bits(std::numeric_limits<float>::infinity()) == 0x7c00);
  const std::uint16_t nan = f32_to_f16_bits(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7c00) == 0x7c00);
  CHECK((nan & 0x03ff) != 0);
  // A signalling NaN whose payload sits only in low bits must not become infinity.
  CHECK((f32_to_f16_bits(from_bits(0x7f800001u)) & 0x3ff) != 0);
}

TEST_CASE("f32 to bf16 rounds to nearest even at hand-checked points", "[dtype][half]") {
  CHECK(f32_to_bf16_bits(1.0f) == 0x3f80);
  CHECK(f32_to_bf16_bits(-0.0f) == 0x8000);
  CHECK(f32_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);      // tie: even is 1.0
  CHECK(f32_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);  // tie: even is up
  CHECK(f32_to_bf16_bits(from_bits(0x3f808001u)) == 0x3f81);           // just above the tie
  CHECK(f32_to_bf16_bits(std::numeric_limits<float>::max()) == 0x7f80);  // rounds to infinity
  CHECK(f32_to_bf16_bits(from_bits(0x00000001u)) == 0x0000);             // tiny subnormal
  CHECK(f32_to_bf16_bits(from_bits(0x00018000u)) == 0x0002);             // subnormal tie, up to even
  CHECK((f32_to_bf16_bits(from_bits(0x7f800001u)) & 0x7f) != 0);          // NaN stays NaN
  CHECK((f32_to_bf16_bits(from_bits(0xff800001u)) & 0x8000) != 0);        // and keeps its sign
}

TEST_CASE("every non-NaN 16-bit value survives a round trip through f32", "[dtype][half]") {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float as_f16 = f16_bits_to_f32(h);
    if (!std::isnan(as_f16)) REQUIRE(f32_to_f16_bits(as_f16) == h);
    const float as_bf16 = bf16_bits_to_f32(h);
    if (!std::isnan(as_bf16)) REQUIRE(f32_to_bf16_bits(as_bf16) == h);
  }
}

TEST_CASE("float16 and bfloat16 behave as storage for floats", "[dtype][half]") {
  const bfloat16 b(3.140625f);
  CHECK(static_cast<float>(b) == 3.140625f);
  const float16 h(-0.5f);
  CHECK(static_cast<float>(h) == -0.5f);
  CHECK(float16::from_bits(0x3c00) == float16(1.0f));
  CHECK(bfloat16::from_bits(0x3f80) == bfloat16(1.0f));
}
