#pragma once
// A merge as a config describes it (mergekit's shape): a method, method-level parameters, and
// per-model parameters, each possibly varying per tensor. `resolve_merge` resolves everything for
// one tensor; plan_merge (merge_plan.hpp) does it for every tensor of a model.
//
// Lookup order, as mergekit (config.py, ConfigReader): a model-scope parameter comes from that
// model's parameters, then the slice's (mergekit's `slices`), then the module's (mergekit's
// `modules`), then the top-level parameters, then the method's default; a method-scope parameter
// from the slice's, the module's, then the top-level parameters, then the default. At each level a setting whose filters match nothing falls
// through to the next. A required parameter with no value is an error naming
// the parameter, the model and the tensor; an unknown parameter name is an error too.

#include <array>
#include <cstddef>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/merge/merge_inputs.hpp"
#include "alloy/merge/parameters.hpp"
#include "alloy/merge/registry.hpp"

namespace alloy {

using parameter_map = std::map<std::string, parameter_setting, std::less<>>;

struct merge_recipe {
  std::string method{};
  parameter_map parameters{};                   // top level
  std::vector<parameter_map> model_parameters{};  // one map per model (the base excluded)
  parameter_map slice_parameters{};             // an output slice's own (slice plans only)
  parameter_map module_parameters{};            // a module's own (module plans only)

  // The levels a method-scope parameter is looked up in, innermost first (the model's come first
  // for a model-scope one).
  [[nodiscard]] std::array<const parameter_map*, 3> shared_levels() const noexcept {
    return {&slice_parameters, &module_parameters, &parameters};
  }

  // Checks what does not depend on the tensor: the method exists, every parameter is one it
  // defines at that scope, every value is of its kind (a choice one of its words, a number
  // finite; ranges are checked per tensor, where gradients take their values).
  void validate() const {
    const method_definition& def = find_merge_method(method);
    const auto check_map = [&](const parameter_map& map, std::string_view where, bool model_level) {
      for (const auto& [name, setting] : map) {
        const parameter_definition* p = def.find(name);
        if (p == nullptr) {
          detail::fail(error_code::invalid_argument, method, ": unknown parameter ", detail::quoted{name}, " in ",
                       where);
        }
        if (model_level && p->where == parameter_definition::scope::method) {
          detail::fail(error_code::invalid_argument, method, ": parameter ", detail::quoted{name},
                       " applies to the whole merge; set it at the top level, not in ", where);
        }
        const bool is_choice = p->type == parameter_definition::kind::choice;
        if (is_choice != setting.word().has_value() || (is_choice && !p->accepts(*setting.word()))) {
          detail::fail(error_code::invalid_argument, method, ": parameter ", detail::quoted{name}, " in ", where,
                       " is ", setting.word() ? detail::concat(detail::quoted{*setting.word()}) : std::string("a number"),
                       "; it must be ", p->expected());
        }
        for (double value : setting.all_values()) {
          if (!std::isfinite(value)) {
            detail::fail(error_code::invalid_argument, method, ": parameter ", detail::quoted{name}, " in ", where,
                         " is not a finite number");
          }
        }
      }
    };
    check_map(parameters, "the top-level parameters", false);
    check_map(slice_parameters, "the slice's parameters", false);
    check_map(module_parameters, "the module's parameters", false);
    for (std::size_t i = 0; i < model_parameters.size(); ++i) {
      check_map(model_parameters[i], "the parameters of model " + std::to_string(i), true);
    }
  }
};

namespace detail {

// Where a model-scope parameter's value goes.
inline double model_parameters::*model_field(const parameter_definition& p) {
  if (p.field != nullptr) return p.field;
  if (p.name == "weight") return &model_parameters::weight;
  if (p.name == "density") return &model_parameters::density;
  if (p.name == "gamma") return &model_parameters::gamma;
  if (p.name == "epsilon") return &model_parameters::epsilon;
  fail(error_code::invalid_argument, "model parameter ", quoted{p.name}, " fills no field of model_parameters");
}

inline std::optional<double> lookup(const parameter_map& map, std::string_view name, std::string_view tensor, double t) {
  const auto it = map.find(name);
  if (it == map.end()) return std::nullopt;
  return it->second.evaluate(tensor, t);
}

}  // namespace detail

// Everything a policy needs for one tensor, resolved from a recipe: the policy with its
// method-level parameters, and each model's parameters. Every value is checked against the
// method's definition (finite, inside its documented range), so a plan can be validated for
// every tensor before any data is read.
struct resolved_merge {
  merge_policy policy;
  std::vector<model_parameters> per_model;
};

// Resolves `recipe` for tensor `name` at relative depth `depth` (see layer_stacks) with
// `model_count` models.
// `model_tensors`, when given, names each model's source tensor: mergekit matches a per-model
// parameter's filters against the tensor the model is read from, which differs from the output's
// name inside slices (output layer 7 read from input layer 3).
inline resolved_merge resolve_merge(const merge_recipe& recipe, std::string_view name, double depth,
                                    std::size_t model_count, std::span<const std::string> model_tensors = {}) {
  const method_definition& def = find_merge_method(recipe.method);
  if (recipe.model_parameters.size() != model_count) {
    detail::fail(error_code::invalid_argument, recipe.method, ": ", model_count, " models but ",
                 recipe.model_parameters.size(), " model parameter sets");
  }
  const auto checked = [&](const parameter_definition& p, double value, std::string_view whose) {
    if (!p.accepts(value)) {
      detail::fail(error_code::invalid_argument, recipe.method, ": parameter ", detail::quoted{p.name}, whose,
                   " is ", value, " for tensor ", detail::quoted{name}, "; it must be ", p.expected());
    }
    return value;
  };
  const auto definition = [&](std::string_view parameter) -> const parameter_definition& {
    const parameter_definition* p = def.find(parameter);
    if (p == nullptr) detail::fail(error_code::invalid_argument, recipe.method, " has no parameter ", parameter);
    return *p;
  };
  const auto method_value = [&](std::string_view parameter) -> double {
    const parameter_definition& p = definition(parameter);
    for (const parameter_map* level : recipe.shared_levels()) {
      if (auto v = detail::lookup(*level, parameter, name, depth)) return checked(p, *v, "");
    }
    if (p.default_value) return *p.default_value;
    detail::fail(error_code::invalid_argument, recipe.method, ": required parameter ", detail::quoted{parameter},
                 " is missing (tensor ", detail::quoted{name}, ")");
  };
  const auto method_choice = [&](std::string_view parameter) -> std::string {
    const parameter_definition& p = definition(parameter);
    for (const parameter_map* map : recipe.shared_levels()) {
      const auto it = map->find(parameter);
      if (it != map->end() && it->second.word()) return *it->second.word();
    }
    return std::string(p.choices.front());
  };
  resolved_merge resolved{def.make(parameter_lookup(method_value, method_choice)), std::vector<model_parameters>(model_count)};
  for (std::size_t i = 0; i < model_count; ++i) {
    const std::string whose = " of model " + std::to_string(i);
    for (const parameter_definition& p : def.parameters) {
      if (p.where != parameter_definition::scope::model) continue;
      double& out = resolved.per_model[i].*detail::model_field(p);
      const std::string_view source = model_tensors.empty() ? name : std::string_view(model_tensors[i]);
      std::optional<double> value = detail::lookup(recipe.model_parameters[i], p.name, source, depth);
      for (const parameter_map* level : recipe.shared_levels()) {
        if (!value) value = detail::lookup(*level, p.name, source, depth);
      }
      if (value) {
        out = checked(p, *value, whose);
      } else if (p.default_value) {
        out = *p.default_value;
      } else {
        detail::fail(error_code::invalid_argument, recipe.method, ": required parameter ", detail::quoted{p.name},
                     " is missing for model ", i, " (tensor ", detail::quoted{name}, ")");
      }
    }
  }
  return resolved;
}

// Merges one tensor. `depth` is the tensor's relative depth for gradients (see layer_stacks). A
// whole model is merged through a plan (merge_plan.hpp, execute_plan.hpp).
template <class Backend>
void merge_tensor(const merge_recipe& recipe, const Backend& backend, std::string_view name, double depth,
                  std::optional<const_tensor_view> base, std::span<const const_tensor_view> models, tensor_view output) {
  const resolved_merge resolved = resolve_merge(recipe, name, depth, models.size());
  merge_with(resolved.policy, backend, merge_inputs{name, base, models, resolved.per_model}, output);
}

}  // namespace alloy
