// Every merge method against the independent NumPy reference (merge_reference.py): random
// tensors of several shapes, in F32, BF16 and F16, with equal magnitudes planted to exercise the
// tie rule. F32 results agree to 1e-6 relative to the tensor's scale; 16-bit results to one unit
// in the last place of the output dtype (alloy rounds an f32 result once, the reference an f64
// one, so a value near a rounding midpoint may land on either neighbour).

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "alloy/alloy.hpp"

using namespace alloy;

namespace {

std::filesystem::path reference_dir() {
  const char* dir = std::getenv("ALLOY_REFERENCE_DIR");
  REQUIRE(dir != nullptr);
  return dir;
}

parameter_map to_parameters(const nlohmann::json& object) {
  parameter_map map;
  for (const auto& [key, value] : object.items()) {
    if (value.is_string()) {
      map.emplace(key, parameter_setting(value.get<std::string>()));  // a choice: consensus
    } else {
      map.emplace(key, parameter_setting(value.get<double>()));
    }
  }
  return map;
}

}  // namespace

TEST_CASE("every merge method matches the NumPy reference", "[reference][merge]") {
  std::ifstream file(reference_dir() / "merge_cases.json");
  REQUIRE(file.good());
  const auto cases = nlohmann::json::parse(file);
  REQUIRE(cases.size() >= 150);

  std::map<std::string, std::size_t> checked_per_method;
  for (const char* dtype_name : {"F32", "BF16", "F16"}) {
    const auto inputs = safetensors_store::open(reference_dir() / (std::string("merge_inputs_") + dtype_name + ".safetensors"));
    const auto expected = safetensors_store::open(reference_dir() / (std::string("merge_expected_") + dtype_name + ".safetensors"));
    for (const auto& c : cases) {
      if (c["dtype"] != dtype_name) continue;
      const std::string name = c["tensor"];
      const std::string method = c["method"];
      INFO(method << " " << dtype_name << " " << name << " " << c["parameters"].dump() << " "
                  << c["model_parameters"].dump());
      merge_recipe recipe;
      recipe.method = method;
      recipe.parameters = to_parameters(c["parameters"]);
      for (const auto& p : c["model_parameters"]) recipe.model_parameters.push_back(to_parameters(p));
      recipe.validate();

      std::vector<const_tensor_view> models;
      for (std::size_t j = 0; j < c["models"].get<std::size_t>(); ++j) {
        models.push_back(inputs.view(name + ".model" + std::to_string(j)));
      }
      const const_tensor_view base = inputs.view(name + ".base");
      memory_store out;
      const tensor_view result = out.insert("out", base.dtype(), base.shape());
      const bool with_base = !c.value("no_base", false);
      merge_tensor(recipe, cpu_backend{}, name, 0.0, with_base ? std::optional<const_tensor_view>(base) : std::nullopt,
                   models, result);

      const const_tensor_view want = expected.view(name);
      REQUIRE(want.numel() == result.numel());
      double scale = 0;
      for (std::size_t i = 0; i < want.numel(); ++i) {
        const double e = detail::load_unaligned<double>(want.data(), i);
        if (!std::isnan(e)) scale = std::max(scale, std::fabs(e));
      }
      const double relative = base.dtype() == dtype::f32 ? 1e-6 : base.dtype() == dtype::bf16 ? 1.0 / 128 : 1.0 / 1024;
      std::size_t mismatches = 0;
      std::size_t ambiguous = 0;
      for (std::size_t i = 0; i < want.numel(); ++i) {
        const double e = detail::load_unaligned<double>(want.data(), i);
        if (std::isnan(e)) {  // the reference marks exactly cancelling sign elections
          ++ambiguous;
          continue;
        }
        const auto got = static_cast<double>(load_as_float(result, i));
        if (!(std::fabs(got - e) <= relative * std::fabs(e) + 1e-6 * scale)) {
          if (++mismatches <= 5) UNSCOPED_INFO("element " << i << ": alloy " << got << ", reference " << e);
        }
      }
      CHECK(mismatches == 0);
      CHECK(ambiguous * 100 <= want.numel());
      ++checked_per_method[method];
    }
  }
  for (const auto& [method, count] : checked_per_method) INFO(method << ": " << count);
  CHECK(checked_per_method.size() == merge_methods().size());
}
