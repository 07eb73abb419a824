// Fuzz target: the text of a `model.safetensors.index.json`.
//
// Every input is refused with alloy::error, or accepted with: every tensor of weight_map assigned
// to exactly one shard, and every shard name a relative path that stays inside the folder.

#include <set>
#include <string>
#include <string_view>

#include "alloy/store/safetensors_format.hpp"
#include "fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  alloy::safetensors_index index;
  try {
    index = alloy::parse_safetensors_index(text, "fuzz.index.json");
  } catch (const alloy::error& refused) {
    ALLOY_FUZZ_CHECK(std::string(refused.what()).starts_with("fuzz.index.json"));
    return 0;
  }
  ALLOY_FUZZ_CHECK(!index.tensors_by_shard.empty());
  std::set<std::string> tensors;
  for (const auto& [shard, names] : index.tensors_by_shard) {
    const std::filesystem::path relative(shard);
    ALLOY_FUZZ_CHECK(!shard.empty() && relative.is_relative());
    for (const auto& part : relative) ALLOY_FUZZ_CHECK(part != "..");
    ALLOY_FUZZ_CHECK(!names.empty());
    for (const auto& name : names) ALLOY_FUZZ_CHECK(tensors.insert(name).second);
  }
  ALLOY_FUZZ_CHECK(index.metadata.is_null() || index.metadata.is_object());
  return 0;
}
