// Checks alloy against references computed by NumPy and PyTorch (see dtype_tables.py and
// interop.py). The CTest fixture writes the references into $ALLOY_REFERENCE_DIR first.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "alloy/core/convert.hpp"
#include "alloy/core/half.hpp"
#include "alloy/store/safetensors_store.hpp"

using namespace alloy;

namespace {

std::filesystem::path reference_dir() {
  const char* dir = std::getenv("ALLOY_REFERENCE_DIR");
  REQUIRE(dir != nullptr);  // set by CTest; these tests are meaningless without the references
  return dir;
}

template <class T>
std::vector<T> read_table(const std::string& name) {
  const auto path = reference_dir() / name;
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  const auto bytes = static_cast<std::size_t>(std::filesystem::file_size(path));
  REQUIRE(bytes % sizeof(T) == 0);
  std::vector<T> values(bytes / sizeof(T));
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(bytes));
  return values;
}

bool is_nan16(std::uint16_t bits, bool bfloat) {
  return bfloat ? ((bits & 0x7f80) == 0x7f80 && (bits & 0x7f) != 0)
                : ((bits & 0x7c00) == 0x7c00 && (bits & 0x3ff) != 0);
}

}  // namespace

TEST_CASE("f16 -> f32 matches NumPy for all 65,536 patterns", "[reference][half]") {
  const auto expected = read_table<std::uint32_t>("f16_to_f32.bin");
  REQUIRE(expected.size() == 65536);
  std::size_t mismatches = 0;
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const float got = f16_bits_to_f32(static_cast<std::uint16_t>(bits));
    if (std::bit_cast<std::uint32_t>(got) != expected[bits]) {
      ++mismatches;
      UNSCOPED_INFO("pattern 0x" << std::hex << bits << ": got 0x" << std::bit_cast<std::uint32_t>(got)
                                 << ", NumPy 0x" << expected[bits]);
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("bf16 -> f32 matches PyTorch for all 65,536 patterns", "[reference][half]") {
  const auto expected = read_table<std::uint32_t>("bf16_to_f32.bin");
  REQUIRE(expected.size() == 65536);
  std::size_t mismatches = 0;
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const float got = bf16_bits_to_f32(static_cast<std::uint16_t>(bits));
    if (std::bit_cast<std::uint32_t>(got) != expected[bits]) ++mismatches;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("f32 -> f16 and f32 -> bf16 round like NumPy and PyTorch", "[reference][half]") {
  const auto inputs = read_table<std::uint32_t>("f32_inputs.bin");
  const auto want_f16 = read_table<std::uint16_t>("f32_to_f16.bin");
  const auto want_bf16 = read_table<std::uint16_t>("f32_to_bf16.bin");
  REQUIRE(inputs.size() > 65536 * 4);
  REQUIRE(want_f16.size() == inputs.size());
  REQUIRE(want_bf16.size() == inputs.size());
  std::size_t f16_mismatches = 0;
  std::size_t bf16_mismatches = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const float value = std::bit_cast<float>(inputs[i]);
    const std::uint16_t f16 = f32_to_f16_bits(value);
    const std::uint16_t bf16 = f32_to_bf16_bits(value);
    if (std::isnan(value)) {
      // NaN payloads are not specified by either reference (PyTorch returns one canonical NaN);
      // the result must be a NaN of the input's sign.
      if (!is_nan16(f16, false) || (f16 >> 15) != (inputs[i] >> 31)) ++f16_mismatches;
      if (!is_nan16(bf16, true) || (bf16 >> 15) != (inputs[i] >> 31)) ++bf16_mismatches;
      continue;
    }
    if (f16 != want_f16[i]) {
      if (++f16_mismatches < 10) {
        UNSCOPED_INFO("f16 of 0x" << std::hex << inputs[i] << ": got 0x" << f16 << ", NumPy 0x" << want_f16[i]);
      }
    }
    if (bf16 != want_bf16[i]) {
      if (++bf16_mismatches < 10) {
        UNSCOPED_INFO("bf16 of 0x" << std::hex << inputs[i] << ": got 0x" << bf16 << ", PyTorch 0x" << want_bf16[i]);
      }
    }
  }
  CHECK(f16_mismatches == 0);
  CHECK(bf16_mismatches == 0);
}

TEST_CASE("files written by the NumPy reference writer read back exactly", "[reference][safetensors]") {
  std::ifstream manifest_file(reference_dir() / "py_manifest.json");
  REQUIRE(manifest_file.good());
  const auto manifest = nlohmann::json::parse(manifest_file);
  std::size_t checked = 0;
  for (const auto& [relative, expected] : manifest.items()) {
    INFO(relative);
    const auto store = safetensors_store::open(reference_dir() / relative);
    CHECK(store.size() == expected["tensors"].size());
    for (const auto& [key, value] : expected["metadata"].items()) {
      CHECK(store.metadata().at(key) == value.get<std::string>());
    }
    for (const auto& [name, info] : expected["tensors"].items()) {
      INFO(name);
      const auto view = store.view(name);
      CHECK(std::string(alloy::name(view.dtype())) == info["dtype"].get<std::string>());
      REQUIRE(std::vector<std::int64_t>(view.shape().begin(), view.shape().end()) ==
              info["shape"].get<std::vector<std::int64_t>>());
      const auto& values = info["values"];
      REQUIRE(values.size() == view.numel());
      for (std::size_t i = 0; i < view.numel(); ++i) {
        if (is_floating(view.dtype())) {
          CHECK(static_cast<double>(load_as_float(view, i)) == values[i].get<double>());
        } else if (view.dtype() == dtype::boolean) {
          CHECK((std::to_integer<int>(view.bytes()[i]) != 0) == values[i].get<bool>());
        } else {
          std::int64_t got = 0;
          switch (view.dtype()) {
            case dtype::i64: got = detail::load_unaligned<std::int64_t>(view.data(), i); break;
            case dtype::i32: got = detail::load_unaligned<std::int32_t>(view.data(), i); break;
            case dtype::i16: got = detail::load_unaligned<std::int16_t>(view.data(), i); break;
            case dtype::i8: got = detail::load_unaligned<std::int8_t>(view.data(), i); break;
            case dtype::u8: got = detail::load_unaligned<std::uint8_t>(view.data(), i); break;
            default: FAIL("unexpected dtype " << view.dtype());
          }
          CHECK(got == values[i].get<std::int64_t>());
        }
      }
      ++checked;
    }
  }
  CHECK(checked >= 20);
}
