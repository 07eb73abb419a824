#include <array>
#include <cstdint>
#include <span>
#include <type_traits>

#include <catch2/catch.hpp>

#include "alloy/core/convert.hpp"
#include "alloy/core/tensor_view.hpp"

using namespace alloy;

TEST_CASE("a view over a typed span knows its dtype, shape and bytes", "[tensor_view]") {
  std::array<float, 6> data{1, 2, 3, 4, 5, 6};
  const tensor_view view(std::span<float>(data), shape{2, 3});
  CHECK(view.dtype() == dtype::f32);
  CHECK(view.numel() == 6);
  CHECK(view.byte_size() == 24);
  CHECK(view.as<float>()[4] == 5.0f);
  view.as<float>()[0] = 10.0f;
  CHECK(data[0] == 10.0f);

  const const_tensor_view read_only = view;  // mutable converts to const, not back
  CHECK(read_only.data() == view.data());
  static_assert(std::is_const_v<std::remove_reference_t<decltype(read_only.as<float>()[0])>>);
  static_assert(!std::is_convertible_v<const_tensor_view, tensor_view>);
}

TEST_CASE("a view refuses mismatched element counts, dtypes and null data", "[tensor_view]") {
  std::array<float, 6> data{};
  CHECK_THROWS_WITH(tensor_view(std::span<float>(data), shape{4, 2}), Catch::Contains("6 elements"));
  const tensor_view view(std::span<float>(data), shape{6});
  CHECK_THROWS_WITH(view.as<bfloat16>(), Catch::Contains("F32") && Catch::Contains("BF16"));
  CHECK_THROWS_AS(tensor_view(nullptr, dtype::f32, shape{3}), error);
  CHECK_NOTHROW(tensor_view(nullptr, dtype::f32, shape{0}));
  CHECK(tensor_view{}.numel() == 0);
}

TEST_CASE("typed access refuses misaligned data", "[tensor_view]") {
  alignas(8) std::array<std::byte, 16> raw{};
  const const_tensor_view misaligned(raw.data() + 1, dtype::f32, shape{2});
  CHECK_THROWS_WITH(misaligned.as<float>(), Catch::Contains("aligned"));
  CHECK(misaligned.bytes().size() == 8);
}

TEST_CASE("convert changes dtype with one rounding", "[tensor_view][convert]") {
  std::array<float, 4> source{1.0f, -2.5f, 1.0f + 1.0f / 256, 65520.0f};
  std::array<bfloat16, 4> as_bf16{};
  convert(const_tensor_view(std::span<const float>(source), shape{4}),
          tensor_view(std::span<bfloat16>(as_bf16), shape{4}));
  CHECK(as_bf16[0].bits == 0x3f80);
  CHECK(as_bf16[1].bits == 0xc020);
  CHECK(as_bf16[2].bits == 0x3f80);  // tie to even
  std::array<float16, 4> as_f16{};
  convert(const_tensor_view(std::span<const float>(source), shape{4}),
          tensor_view(std::span<float16>(as_f16), shape{2, 2}));
  CHECK(as_f16[3].bits == 0x7c00);  // 65520 rounds to infinity in binary16
  std::array<double, 4> widened{};
  convert(const_tensor_view(std::span<const float16>(as_f16), shape{4}),
          tensor_view(std::span<double>(widened), shape{4}));
  CHECK(widened[1] == -2.5);
  CHECK(load_as_float(const_tensor_view(std::span<const bfloat16>(as_bf16), shape{4}), 1) == -2.5f);

  std::array<std::int32_t, 4> integers{};
  CHECK_THROWS_WITH(convert(const_tensor_view(std::span<const float>(source), shape{4}),
                            tensor_view(std::span<std::int32_t>(integers), shape{4})),
                    Catch::Contains("I32"));
  std::array<float, 3> short_target{};
  CHECK_THROWS_AS(convert(const_tensor_view(std::span<const float>(source), shape{4}),
                          tensor_view(std::span<float>(short_target), shape{3})),
                  error);
}
