// The dispatched 16-bit conversions (block_convert.hpp) at every level this CPU has, bit for bit
// against the portable definition: every f16 and bf16 pattern to f32, and f32 values covering
// every rounding case (each upper half with the low bits at ties, above and below them),
// infinities, NaNs with payloads, subnormals of both widths; then whole merges at every level.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <cstring>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/exec/block_convert.hpp"
#include "alloy/merge/execute_plan.hpp"
#include "tensor_builders.hpp"

using namespace alloy;

namespace {

std::vector<simd_level> levels_here() {
  std::vector<simd_level> levels{simd_level::baseline};
  if (detected_simd_level() >= simd_level::avx2) levels.push_back(simd_level::avx2);
  if (detected_simd_level() >= simd_level::avx512) levels.push_back(simd_level::avx512);
  return levels;
}

// Restores the cap when a test ends, whatever it set.
struct level_guard {
  simd_level previous = set_simd_level(simd_level::avx512);
  ~level_guard() { set_simd_level(previous); }
};

// f32 bit patterns: every upper half with low halves at and around the f16 (bit 12) and bf16
// (bit 15) rounding points. Odd counts leave a tail for the scalar remainder.
std::vector<std::uint32_t> rounding_cases() {
  static constexpr std::uint32_t lows[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000,
                                           0x7fff, 0x8000, 0x8001, 0x9000, 0xc000, 0xe001, 0xffff};
  std::vector<std::uint32_t> cases;
  for (std::uint32_t high = 0; high < 0x10000; ++high) {
    for (std::uint32_t low : lows) cases.push_back(high << 16 | low);
  }
  cases.push_back(0x7f800001u);  // the smallest signalling NaN payload
  return cases;
}

std::vector<std::byte> every_16_bit_pattern() {
  std::vector<std::byte> bytes(2 * 65536 + 2);  // one more element: an odd count
  for (std::uint32_t i = 0; i <= 65536; ++i) {
    const auto bits = static_cast<std::uint16_t>(i);
    std::memcpy(bytes.data() + 2 * i, &bits, 2);
  }
  return bytes;
}

}  // namespace

TEST_CASE("16-bit loads give the portable bits at every level", "[exec][simd]") {
  const level_guard guard;
  const std::vector<std::byte> patterns = every_16_bit_pattern();
  const std::size_t count = patterns.size() / 2;
  std::vector<float> bf16_want(count), f16_want(count);
  detail::bf16_to_f32_portable(patterns.data(), bf16_want.data(), count);
  detail::f16_to_f32_portable(patterns.data(), f16_want.data(), count);
  for (simd_level level : levels_here()) {
    INFO("level " << to_string(level));
    set_simd_level(level);
    CHECK(active_simd_level() == level);
    std::vector<float> got(count);
    detail::bf16_to_f32(patterns.data(), got.data(), count);
    CHECK(std::memcmp(got.data(), bf16_want.data(), count * 4) == 0);
    detail::f16_to_f32(patterns.data(), got.data(), count);
    CHECK(std::memcmp(got.data(), f16_want.data(), count * 4) == 0);
  }
}

TEST_CASE("16-bit stores round as the portable definition at every level", "[exec][simd]") {
  const level_guard guard;
  const std::vector<std::uint32_t> bits = rounding_cases();
  std::vector<float> values(bits.size());
  std::memcpy(values.data(), bits.data(), bits.size() * 4);
  std::vector<std::byte> bf16_want(values.size() * 2), f16_want(values.size() * 2);
  detail::f32_to_bf16_portable(values.data(), bf16_want.data(), values.size());
  detail::f32_to_f16_portable(values.data(), f16_want.data(), values.size());
  for (simd_level level : levels_here()) {
    INFO("level " << to_string(level));
    set_simd_level(level);
    std::vector<std::byte> got(values.size() * 2);
    detail::f32_to_bf16(values.data(), got.data(), values.size());
    CHECK(std::memcmp(got.data(), bf16_want.data(), got.size()) == 0);
    detail::f32_to_f16(values.data(), got.data(), values.size());
    if (std::memcmp(got.data(), f16_want.data(), got.size()) != 0) {
      for (std::size_t i = 0; i < values.size(); ++i) {
        if (std::memcmp(got.data() + 2 * i, f16_want.data() + 2 * i, 2) != 0) {
          FAIL_CHECK("f32 bits 0x" << std::hex << bits[i] << " give a different f16");
          break;
        }
      }
    }
  }
}

TEST_CASE("the level never exceeds the CPU's, and ALLOY_SIMD's words are read", "[exec][simd]") {
  const level_guard guard;
  set_simd_level(simd_level::avx512);
  CHECK(active_simd_level() == detected_simd_level());
  set_simd_level(simd_level::baseline);
  CHECK(active_simd_level() == simd_level::baseline);
  CHECK(detail::parse_simd_level("sse2") == simd_level::baseline);
  CHECK(detail::parse_simd_level("avx2") == simd_level::avx2);
  CHECK(detail::parse_simd_level("avx512") == simd_level::avx512);
  CHECK_THROWS_WITH(detail::parse_simd_level("avx9"), Catch::Contains("ALLOY_SIMD") && Catch::Contains("avx9"));
}

TEST_CASE("merges of bf16 and f16 models write the same bytes at every level", "[exec][simd][merge]") {
  const level_guard guard;
  for (dtype type : {dtype::bf16, dtype::f16}) {
    std::vector<memory_store> models(3);
    for (std::size_t m = 0; m < models.size(); ++m) {
      std::vector<float> values(1000 + 7);
      for (std::size_t i = 0; i < values.size(); ++i) {
        values[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i) + static_cast<double>(m))) * 0.05f;
      }
      testing::insert_values(models[m], "w", values, shape{static_cast<std::int64_t>(values.size())}, type);
    }
    for (const char* method : {"ties", "linear"}) {
      const bool ties = std::string_view(method) == "ties";
      merge_recipe recipe{method, {{"weight", 0.7}}, std::vector<parameter_map>(ties ? 2 : 3)};
      if (ties) recipe.parameters.emplace("density", 0.4);
      std::vector<std::vector<std::byte>> outputs;
      for (simd_level level : levels_here()) {
        set_simd_level(level);
        const memory_store merged =
            ties ? merge_stores(recipe, cpu_backend{2}, &models[0], std::span<const memory_store>(models).subspan(1))
                : merge_stores(recipe, cpu_backend{2}, static_cast<const memory_store*>(nullptr),
                               std::span<const memory_store>(models));
        const const_tensor_view w = merged.view("w");
        outputs.emplace_back(w.data(), w.data() + w.byte_size());
      }
      for (std::size_t l = 1; l < outputs.size(); ++l) {
        INFO(method << " in " << type << " at level " << to_string(levels_here()[l]));
        CHECK(outputs[l] == outputs[0]);
      }
    }
  }
}

// Every method of the registry through its dispatched loops (kernels, block forms, reductions,
// selections, DARE's hash, DELLA's row ranks) in every computable dtype: the same bytes at every
// level. A 2-D tensor of 96 x 700 elements: chunks of the CPU backend, blocks with a tail, and rows.
TEST_CASE("every registered method writes the same bytes at every level", "[exec][simd][merge]") {
  const level_guard guard;
  constexpr std::int64_t rows = 96, columns = 700;
  for (dtype type : {dtype::f32, dtype::bf16, dtype::f16}) {
    std::vector<memory_store> models(4);
    for (std::size_t m = 0; m < models.size(); ++m) {
      std::vector<float> values(static_cast<std::size_t>(rows * columns));
      for (std::size_t i = 0; i < values.size(); ++i) {
        const double x = 0.37 * static_cast<double>(i) + 1.3 * static_cast<double>(m);
        values[i] = static_cast<float>(std::sin(x) + (m == 0 ? 0.0 : 0.2 * std::cos(3.1 * x))) * 0.05f;
      }
      testing::insert_values(models[m], "w", values, shape{rows, columns}, type);
    }
    for (const method_definition& method : merge_methods()) {
      merge_recipe recipe{std::string(method.name), {}, {}};
      const std::size_t count = std::min<std::size_t>(method.max_models, method.name == "nuslerp" ? 2 : 3);
      recipe.model_parameters.assign(count, parameter_map{});
      for (const char* name : {"weight", "t", "density", "select_topk"}) {
        if (method.find(name) != nullptr) recipe.parameters.emplace(name, 0.45);
      }
      const memory_store* base = method.uses_base() ? &models[0] : nullptr;
      const auto listed = std::span<const memory_store>(models).subspan(method.uses_base() ? 1 : 0, count);
      std::vector<std::vector<std::byte>> outputs;
      for (simd_level level : levels_here()) {
        set_simd_level(level);
        const memory_store merged = merge_stores(recipe, cpu_backend{2}, base, listed);
        const const_tensor_view w = merged.view("w");
        outputs.emplace_back(w.data(), w.data() + w.byte_size());
      }
      for (std::size_t l = 1; l < outputs.size(); ++l) {
        INFO(method.name << " in " << type << " at level " << to_string(levels_here()[l]));
        CHECK(outputs[l] == outputs[0]);
      }
    }
  }
}
