#pragma once
// A merge as a config describes it (mergekit's shape): a method, method-level parameters, and
// per-model parameters, each possibly varying per tensor. `merge_tensor` resolves everything for
// one tensor and runs the policy; `merge_stores` merges whole stores tensor by tensor.
//
// Lookup order, as mergekit: a model-scope parameter comes from that model's parameters, then
// the top-level parameters, then the method's default; a method-scope parameter from the
// top-level parameters, then the default. A required parameter with no value is an error naming
// the parameter, the model and the tensor; an unknown parameter name is an error too.

#include <cstddef>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/convert.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/merge/merge_inputs.hpp"
#include "alloy/merge/parameters.hpp"
#include "alloy/merge/registry.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

using parameter_map = std::map<std::string, parameter_setting, std::less<>>;

struct merge_recipe {
  std::string method{};
  parameter_map parameters{};                   // top level
  std::vector<parameter_map> model_parameters{};  // one map per model (the base excluded)
  std::string consensus{};                      // TIES family: "sum" (default) or "count"

  // Checks names and ranges that do not depend on the tensor: the method exists, every
  // parameter is one it defines, every number is finite.
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
        for (double value : setting.all_values()) {
          if (!std::isfinite(value)) {
            detail::fail(error_code::invalid_argument, method, ": parameter ", detail::quoted{name}, " in ", where,
                         " is not a finite number");
          }
        }
      }
    };
    check_map(parameters, "the top-level parameters", false);
    for (std::size_t i = 0; i < model_parameters.size(); ++i) {
      check_map(model_parameters[i], "the parameters of model " + std::to_string(i), true);
    }
    if (!consensus.empty()) {
      if (def.consensus_choices.empty()) {
        detail::fail(error_code::invalid_argument, method, " has no sign consensus to choose");
      }
      (void)detail::parse_consensus(consensus);
    }
  }
};

namespace detail {

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

// Resolves `recipe` for tensor `name` at relative depth `depth` (see layer_depth) with
// `model_count` models.
inline resolved_merge resolve_merge(const merge_recipe& recipe, std::string_view name, double depth,
                                    std::size_t model_count) {
  const method_definition& def = find_merge_method(recipe.method);
  if (recipe.model_parameters.size() != model_count) {
    detail::fail(error_code::invalid_argument, recipe.method, ": ", model_count, " models but ",
                 recipe.model_parameters.size(), " model parameter sets");
  }
  const auto checked = [&](const parameter_definition& p, double value, std::string_view whose) {
    if (!p.accepts(value)) {
      detail::fail(error_code::invalid_argument, recipe.method, ": parameter ", detail::quoted{p.name}, whose,
                   " is ", value, " for tensor ", detail::quoted{name}, "; it must be ",
                   std::isfinite(p.minimum) || std::isfinite(p.maximum)
                       ? detail::concat("in [", p.minimum, ", ", p.maximum, "]")
                       : std::string("a finite number"));
    }
    return value;
  };
  const auto method_value = [&](std::string_view parameter) -> double {
    const parameter_definition* p = def.find(parameter);
    if (p == nullptr) detail::fail(error_code::invalid_argument, recipe.method, " has no parameter ", parameter);
    if (auto v = detail::lookup(recipe.parameters, parameter, name, depth)) return checked(*p, *v, "");
    if (p->default_value) return *p->default_value;
    detail::fail(error_code::invalid_argument, recipe.method, ": required parameter ", detail::quoted{parameter},
                 " is missing (tensor ", detail::quoted{name}, ")");
  };
  resolved_merge resolved{def.make(method_value, recipe.consensus), std::vector<model_parameters>(model_count)};
  for (std::size_t i = 0; i < model_count; ++i) {
    const std::string whose = " of model " + std::to_string(i);
    const auto model_value = [&](std::string_view parameter, double& out) {
      const parameter_definition* p = def.find(parameter);
      if (p == nullptr || p->where != parameter_definition::scope::model) return;
      if (auto v = detail::lookup(recipe.model_parameters[i], parameter, name, depth)) {
        out = checked(*p, *v, whose);
      } else if (auto g = detail::lookup(recipe.parameters, parameter, name, depth)) {
        out = checked(*p, *g, whose);
      } else if (p->default_value) {
        out = *p->default_value;
      } else {
        detail::fail(error_code::invalid_argument, recipe.method, ": required parameter ", detail::quoted{parameter},
                     " is missing for model ", i, " (tensor ", detail::quoted{name}, ")");
      }
    };
    model_value("weight", resolved.per_model[i].weight);
    model_value("density", resolved.per_model[i].density);
    model_value("gamma", resolved.per_model[i].gamma);
    model_value("epsilon", resolved.per_model[i].epsilon);
  }
  return resolved;
}

// Merges one tensor. `depth` is the tensor's relative depth for gradients (see layer_depth).
inline void merge_tensor(const merge_recipe& recipe, const cpu_backend& backend, std::string_view name, double depth,
                         std::optional<const_tensor_view> base, std::span<const const_tensor_view> models,
                         tensor_view output) {
  const resolved_merge resolved = resolve_merge(recipe, name, depth, models.size());
  merge_with(resolved.policy, backend, merge_inputs{name, base, models, resolved.per_model}, output);
}

// One tensor of a whole-model merge: floating tensors are merged; integer and boolean buffers
// (position ids, masks) are not weights and are copied, provided every model agrees on them.
// `base` is the base model's tensor when there is a base model (read only by methods that need
// one); `reference` is the tensor whose dtype and shape the output follows (the base's, else the
// first model's).
inline void merge_model_tensor(const merge_recipe& recipe, const cpu_backend& backend, std::string_view name,
                               double depth, std::optional<const_tensor_view> base,
                               std::span<const const_tensor_view> models, tensor_view output) {
  const method_definition& def = find_merge_method(recipe.method);
  const const_tensor_view reference = base ? *base : models.front();
  if (!is_mergeable(reference.dtype())) {
    for (std::size_t i = 0; i < models.size(); ++i) {
      const bool same = models[i].dtype() == reference.dtype() && models[i].shape() == reference.shape() &&
                        std::memcmp(models[i].data(), reference.data(), reference.byte_size()) == 0;
      if (!same) {
        detail::fail(error_code::dtype_mismatch, recipe.method, ": tensor ", detail::quoted{name}, " of dtype ",
                     reference.dtype(), " cannot be merged and differs in model ", i);
      }
    }
    if (output.dtype() != reference.dtype()) {
      detail::fail(error_code::dtype_mismatch, recipe.method, ": tensor ", detail::quoted{name}, " is ",
                   reference.dtype(), " in the models but ", output.dtype(), " in the output");
    }
    if (output.data() != reference.data()) convert(reference, output);
    return;
  }
  merge_tensor(recipe, backend, name, depth, def.needs_base ? base : std::nullopt, models, output);
}

namespace detail {

// The traversal both merge_stores and merge_stores_into share: for each tensor, in the order of
// the base (or of the first model), gathers every model's view and merges into
// `output_for(name, reference)`, a view with the reference's shape.
template <parameter_store Base, parameter_store Model, std::size_t Extent, class OutputFor>
void merge_each_tensor(const merge_recipe& recipe, const cpu_backend& backend, const Base* base,
                       std::span<const Model, Extent> models, OutputFor&& output_for) {
  recipe.validate();
  const method_definition& def = find_merge_method(recipe.method);
  if (def.needs_base && base == nullptr) fail(error_code::invalid_argument, recipe.method, " needs a base model");
  if (models.empty()) fail(error_code::invalid_argument, recipe.method, ": no models to merge");
  const auto& names = base != nullptr ? base->names() : models.front().names();
  const std::size_t layers = count_layers(names);
  std::vector<const_tensor_view> views(models.size());
  for (const auto& name : names) {
    for (std::size_t i = 0; i < models.size(); ++i) {
      const auto found = models[i].find(name);
      if (!found) fail(error_code::not_found, recipe.method, ": tensor ", quoted{name}, " is missing from model ", i);
      views[i] = *found;
    }
    const std::optional<const_tensor_view> base_view =
        base != nullptr ? std::optional<const_tensor_view>(base->view(name)) : std::nullopt;
    const const_tensor_view reference = base_view ? *base_view : views.front();
    merge_model_tensor(recipe, backend, name, layer_depth(name, layers), base_view, views,
                       output_for(std::string_view(name), reference));
  }
}

}  // namespace detail

// Merges whole stores into a new memory store, tensor by tensor in the order of the base (or of
// the first model). Every model must hold every tensor with the same shape. The output dtype is
// the base's (or the first model's) unless `output_dtype` says otherwise. Tensors of integer or
// boolean dtype are copied unchanged when all models hold the same values, refused otherwise.
template <parameter_store Base, parameter_store Model, std::size_t Extent>
memory_store merge_stores(const merge_recipe& recipe, const cpu_backend& backend, const Base* base,
                          std::span<const Model, Extent> models, std::optional<dtype> output_dtype = std::nullopt) {
  memory_store merged;
  detail::merge_each_tensor(recipe, backend, base, models, [&](std::string_view name, const_tensor_view reference) {
    const dtype type = is_mergeable(reference.dtype()) ? output_dtype.value_or(reference.dtype()) : reference.dtype();
    return merged.insert(std::string(name), type, reference.shape());
  });
  return merged;
}

// Merges whole stores into an existing one, in place: a torch module's parameters, Eigen
// matrices, a file-backed store. `output` must hold every merged tensor with the same shape; its
// dtypes may differ (the merge computes in f32 and rounds once into them). Names and shapes of
// the models and the output are all checked before the first tensor is written. The output may
// be one of the models (same dtype) for linear and task arithmetic, whose output elements each
// read the same element of the inputs only; for other methods, merge into a separate store.
template <parameter_store Base, parameter_store Model, std::size_t Extent, mutable_parameter_store Output>
void merge_stores_into(const merge_recipe& recipe, const cpu_backend& backend, const Base* base,
                       std::span<const Model, Extent> models, Output& output) {
  if (!models.empty()) {
    for (const auto& name : base != nullptr ? base->names() : models.front().names()) {
      const shape expected = base != nullptr ? base->view(name).shape() : models.front().view(name).shape();
      for (std::size_t i = 0; i < models.size(); ++i) {
        const auto found = models[i].find(name);
        if (!found) {
          detail::fail(error_code::not_found, recipe.method, ": tensor ", detail::quoted{name}, " is missing from model ", i);
        }
        if (!(found->shape() == expected)) {
          detail::fail(error_code::shape_mismatch, recipe.method, ": tensor ", detail::quoted{name}, " has shape ",
                       found->shape(), " in model ", i, " but ", expected, " in the ", base ? "base" : "first model");
        }
      }
      const auto target = output.find(name);
      if (!target || !(target->shape() == expected)) {
        detail::fail(target ? error_code::shape_mismatch : error_code::not_found, recipe.method, ": the output ",
                     target ? "has another shape for" : "has no", " tensor ", detail::quoted{name});
      }
    }
  }
  detail::merge_each_tensor(recipe, backend, base, models, [&](std::string_view name, const_tensor_view reference) {
    const auto found = output.find_mutable(name);
    if (!found) {
      detail::fail(error_code::not_found, recipe.method, ": the output has no tensor ", detail::quoted{name});
    }
    if (!(found->shape() == reference.shape())) {
      detail::fail(error_code::shape_mismatch, recipe.method, ": tensor ", detail::quoted{name}, " has shape ",
                   reference.shape(), " in the models but ", found->shape(), " in the output");
    }
    return *found;
  });
}

}  // namespace alloy
