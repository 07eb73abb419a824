// Fuzz target: alloy-merge's YAML config (mergekit's shape).
//
// Every input is refused with alloy::error (yaml-cpp's own exceptions must not escape, nor may
// any other), or accepted as a config with a known method, at least one model with a non-empty
// path, a base model where the method needs one, and only finite parameter values.

#include <string>

#include "fuzz_check.hpp"
#include "merge_config.hpp"

namespace {

void check_finite(const alloy::parameter_map& parameters) {
  for (const auto& [name, setting] : parameters) {
    for (const double value : setting.all_values()) ALLOY_FUZZ_CHECK(std::isfinite(value));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  alloy::tools::merge_config config;
  try {
    config = alloy::tools::parse_merge_config(text, "fuzz.yaml");
  } catch (const alloy::error& refused) {
    ALLOY_FUZZ_CHECK(refused.code() == alloy::error_code::invalid_argument ||
                     refused.code() == alloy::error_code::limit);
    return 0;
  }
  // An accepted config with an unknown method would throw here, escaping as a finding.
  const alloy::method_definition& method = alloy::find_merge_method(config.method);
  ALLOY_FUZZ_CHECK(!config.models.empty());
  ALLOY_FUZZ_CHECK(!method.needs_base || config.base_model.has_value());
  if (config.base_model) ALLOY_FUZZ_CHECK(!config.base_model->model.empty());
  for (const auto& model : config.models) {
    ALLOY_FUZZ_CHECK(!model.reference.model.empty());
    check_finite(model.parameters);
  }
  check_finite(config.parameters);
  ALLOY_FUZZ_CHECK(config.source_text == text);
  return 0;
}
