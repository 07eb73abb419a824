#pragma once
// mergekit's `slices`: an output layer stack assembled from layer ranges of the inputs, planned
// into the same merge_plan as a whole-model merge (merge_plan.hpp) and run by the same executor.
//
//   slices:
//     - sources:                               output layers 0..23: layers 0..23 of A and B,
//         - {model: A, layer_range: [0, 24]}   merged by the method (t from 0 to 1 over the slice)
//         - {model: B, layer_range: [0, 24]}
//     - sources:                               output layers 24..39: layers 8..23 of B, alone
//         - {model: B, layer_range: [8, 24]}   (passthrough: a frankenmerge)
//
// The semantics are mergekit's (plan.py, plan_slice / plan_layer / plan_module):
// - layer ranges are half-open; every source of a slice spans the same number of layers; output
//   layer k (counted across slices, in order) merges layer `layer_range[0] + idx` of each source,
//   idx being k's position within its slice;
// - a gradient's t restarts in each slice: t = idx / (len - 1), and t = 1 for a one-layer slice;
// - the weights outside the layer stack take t = 0; those before it (embeddings) come from the
//   first slice's sources, those after it (final norm, output head) from the last slice's;
// - a slice's base model is its own `base_model`, else the config's; for methods with a base it
//   must be one of the slice's sources, and the other sources are the models;
// - parameters are looked up source -> slice -> module -> top level -> default (merge_recipe.hpp); a
//   per-model parameter's filters see the tensor the model is read from, a method parameter's
//   the output tensor.
//
// The layer stack is found from the tensor names alone (layer_stacks, parameters.hpp): a slice
// plan needs a reference model (the first slice's first source) with exactly one stack. Which
// tensors outside it come before and which after is decided by name, again without tables of
// architectures: a name with "embed", "wte" or "wpe" in it is before the stack (token and
// position embeddings), every other one after it.

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/merge/merge_plan.hpp"
#include "alloy/merge/merge_recipe.hpp"
#include "alloy/merge/parameters.hpp"
#include "alloy/merge/registry.hpp"

namespace alloy {

struct slice_source {
  std::size_t input = 0;  // which of the plan's inputs
  std::size_t first_layer = 0;
  std::size_t end_layer = 0;  // one past the last
  parameter_map parameters;   // this source's (the model's) parameters
  [[nodiscard]] std::size_t layers() const noexcept { return end_layer - first_layer; }
};

struct output_slice {
  std::vector<slice_source> sources;
  std::optional<std::size_t> base_input;  // this slice's base model; none: the recipe's
  parameter_map parameters;
};

struct slice_recipe {
  std::string method;
  parameter_map parameters;               // top level
  std::optional<std::size_t> base_input;  // the config's base model, if any
  std::vector<output_slice> slices;
  parameter_map module_parameters;        // the module's, when the slices are a module's (module_plan.hpp)
};

// A name outside the layer stack that comes before it (token and position embeddings).
inline bool is_before_layer_stack(std::string_view tensor_name) {
  for (std::string_view pre : {"embed", "wte", "wpe"}) {
    if (tensor_name.find(pre) != std::string_view::npos) return true;
  }
  return false;
}

namespace detail {

inline std::string slice_label(std::size_t slice) { return "slices[" + std::to_string(slice) + "]"; }

// The recipe one slice merges with: the models are its sources minus its base (for methods with
// a base), each with its own parameters, then the slice's, then the top level's.
struct planned_slice {
  merge_recipe recipe;
  std::optional<std::size_t> base;    // the base's source index, for methods that read one
  std::vector<std::size_t> models;    // indices into the slice's sources
  // The source whose tensors the output follows (dtype, shape): the base, else the first model.
  [[nodiscard]] std::size_t reference() const { return base ? *base : models.front(); }
};

inline planned_slice plan_slice_recipe(const slice_recipe& recipe, const method_definition& def, std::size_t index,
                                       std::span<const plan_input> inputs) {
  const output_slice& slice = recipe.slices[index];
  const std::string where = slice_label(index);
  planned_slice planned;
  planned.recipe.method = recipe.method;
  planned.recipe.parameters = recipe.parameters;
  planned.recipe.slice_parameters = slice.parameters;
  planned.recipe.module_parameters = recipe.module_parameters;
  const std::optional<std::size_t> base = slice.base_input ? slice.base_input : recipe.base_input;
  for (std::size_t s = 0; s < slice.sources.size(); ++s) {
    if (def.uses_base() && base && slice.sources[s].input == *base) {
      if (planned.base) fail(error_code::invalid_argument, where, ": the base model ", inputs[*base].label, " is a source twice");
      planned.base = s;
      continue;
    }
    planned.models.push_back(s);
    planned.recipe.model_parameters.push_back(slice.sources[s].parameters);
  }
  if (def.needs_base && !planned.base) {
    if (!base) fail(error_code::invalid_argument, where, ": ", recipe.method, " needs a base model (base_model)");
    fail(error_code::invalid_argument, where, ": the base model ", inputs[*base].label,
         " is not among the slice's sources; ", recipe.method, " reads the base's layers from a source of the slice");
  }
  check_model_count(planned.recipe, def, planned.models.size(), where + ".sources");
  planned.recipe.validate();
  // Required model parameters, said once per source rather than once per tensor.
  std::vector<plan_input> labels;
  for (std::size_t m : planned.models) labels.push_back({inputs[slice.sources[m].input].label, {}, {}});
  check_required_parameters(planned.recipe, def, labels);
  return planned;
}

}  // namespace detail

// Plans `recipe` over `inputs` (every model the slices name, by index). Fails, naming the slice,
// the source and the tensor, on: an empty slice list or slice, a layer range that is empty,
// reversed or beyond the model's stack, sources of one slice spanning different numbers of
// layers, a base model that is not a source, model counts the method refuses, a reference model
// without exactly one layer stack, and every per-tensor check of plan_merge (missing tensors,
// shapes, dtypes, parameters).
inline merge_plan plan_slices(const slice_recipe& recipe, std::span<const plan_input> inputs,
                              const plan_options& options = {}) {
  const method_definition& def = find_merge_method(recipe.method);
  if (recipe.slices.empty()) detail::fail(error_code::invalid_argument, "slices: the list is empty");
  const auto check_input = [&](std::size_t input) {
    if (input >= inputs.size()) detail::fail(error_code::invalid_argument, "slices: input ", input, " does not exist");
  };
  if (recipe.base_input) check_input(*recipe.base_input);

  // The layer stack, from the reference model: the first slice's first source.
  if (recipe.slices.front().sources.empty()) detail::fail(error_code::invalid_argument, "slices[0]: no sources");
  check_input(recipe.slices.front().sources.front().input);
  const plan_input& reference = inputs[recipe.slices.front().sources.front().input];
  const layer_stacks reference_stacks(reference.names);
  if (reference_stacks.stacks().size() != 1) {
    std::string found;
    for (const auto& [prefix, count] : reference_stacks.stacks()) {
      found += (found.empty() ? "" : ", ") + detail::concat(detail::quoted{prefix}, " (", count, " layers)");
    }
    detail::fail(error_code::invalid_argument, "slices: ", reference.label, " has ",
                 reference_stacks.stacks().empty() ? std::string("no layer stack (no tensor name has a layer index, "
                                                                 "as in model.layers.0.mlp.weight)")
                                                   : detail::concat(reference_stacks.stacks().size(), " layer stacks: ", found,
                                                                    "; slices need a model with one"));
  }
  const std::string stack = reference_stacks.stacks().front().first;

  // Each input's layers of that stack: the names after "stack.<index>.", per layer, in order.
  std::vector<std::optional<std::vector<std::vector<std::string>>>> layers_of(inputs.size());
  const auto layers = [&](std::size_t input) -> const std::vector<std::vector<std::string>>& {
    auto& cached = layers_of[input];
    if (!cached) {
      cached.emplace();
      for (const auto& name : inputs[input].names) {
        const auto position = layer_position_of(name);
        if (!position || position->stack != stack) continue;
        if (cached->size() <= position->index) cached->resize(position->index + 1);
        const std::size_t rest = position->stack.size() + std::to_string(position->index).size() + 1;
        (*cached)[position->index].push_back(name.substr(rest));
      }
    }
    return *cached;
  };

  std::vector<detail::planned_slice> planned;
  for (std::size_t i = 0; i < recipe.slices.size(); ++i) {
    const output_slice& slice = recipe.slices[i];
    const std::string where = detail::slice_label(i);
    if (slice.sources.empty()) detail::fail(error_code::invalid_argument, where, ": no sources");
    if (slice.base_input) check_input(*slice.base_input);
    for (std::size_t s = 0; s < slice.sources.size(); ++s) {
      const slice_source& source = slice.sources[s];
      check_input(source.input);
      const std::string label = where + ".sources[" + std::to_string(s) + "]";
      if (source.end_layer < source.first_layer) {
        detail::fail(error_code::invalid_argument, label, ".layer_range: [", source.first_layer, ", ", source.end_layer,
                     "] ends before it starts");
      }
      const std::size_t available = layers(source.input).size();
      if (source.end_layer > available) {
        detail::fail(error_code::invalid_argument, label, ".layer_range: [", source.first_layer, ", ", source.end_layer,
                     "] goes beyond ", inputs[source.input].label, ", whose stack ", detail::quoted{stack}, " has ",
                     available, " layers");
      }
      if (source.layers() != slice.sources.front().layers()) {
        detail::fail(error_code::invalid_argument, label, ".layer_range: spans ", source.layers(),
                     " layers but the slice's first source spans ", slice.sources.front().layers(),
                     "; every source of a slice spans the same number of layers");
      }
    }
    planned.push_back(detail::plan_slice_recipe(recipe, def, i, inputs));
  }

  merge_plan plan;
  plan.method = recipe.method;
  for (const auto& input : inputs) plan.inputs.push_back(input.label);
  plan.base_input = recipe.base_input;

  // One output tensor, from the tensor `source_name(s)` of each source s of slice `index`.
  const auto add_tensor = [&](std::string output_name, std::size_t index, double depth, const auto& source_name) {
    const output_slice& slice = recipe.slices[index];
    const detail::planned_slice& ps = planned[index];
    const std::size_t reference_input = slice.sources[ps.reference()].input;
    const std::string reference_name = source_name(ps.reference());
    const auto expected = inputs[reference_input].header(reference_name);
    if (!expected) {
      detail::fail(error_code::not_found, detail::slice_label(index), ": tensor ", detail::quoted{reference_name},
                   " is missing from ", inputs[reference_input].label, " (output tensor ", detail::quoted{output_name}, ")");
    }
    planned_tensor tensor;
    tensor.name = std::move(output_name);
    tensor.dims = expected->shape();
    tensor.depth = depth;
    tensor.what = is_mergeable(expected->dtype()) ? planned_tensor::action::merge : planned_tensor::action::copy;
    tensor.output_dtype = tensor.merged() ? options.output_dtype.value_or(expected->dtype()) : expected->dtype();
    const std::string missing_note = " (" + detail::slice_label(index) + ", output tensor " +
                                     detail::concat(detail::quoted{tensor.name}) + ")";
    if (ps.base) {
      tensor.base = tensor_source{reference_input, reference_name};
      tensor.input_bytes += expected->byte_size();
    }
    for (std::size_t m : ps.models) {
      const std::size_t input = slice.sources[m].input;
      const std::string name = source_name(m);
      tensor.input_bytes += detail::checked_source_bytes(inputs[input], name, *expected, reference_name,
                                                         inputs[reference_input].label, tensor.merged(), missing_note);
      tensor.models.push_back({input, name});
    }
    if (tensor.merged()) {
      std::vector<std::string> model_tensors;
      for (const auto& source : tensor.models) model_tensors.push_back(source.tensor);
      tensor.merge = resolve_merge(ps.recipe, tensor.name, tensor.depth, ps.models.size(), model_tensors);
    }
    plan.input_bytes += tensor.input_bytes;
    plan.output_bytes += tensor.output_bytes();
    plan.tensors.push_back(std::move(tensor));
  };

  // Before the stack, from the first slice; the layers; after the stack, from the last slice.
  std::vector<std::string> outside;
  for (const auto& name : reference.names) {
    const auto position = layer_position_of(name);
    if (!position || position->stack != stack) outside.push_back(name);
  }
  for (const auto& name : outside) {
    if (is_before_layer_stack(name)) add_tensor(name, 0, 0.0, [&](std::size_t) { return name; });
  }
  std::size_t output_layer = 0;
  for (std::size_t i = 0; i < recipe.slices.size(); ++i) {
    const output_slice& slice = recipe.slices[i];
    const std::size_t length = slice.sources.front().layers();
    for (std::size_t idx = 0; idx < length; ++idx, ++output_layer) {
      const double t = length > 1 ? static_cast<double>(idx) / static_cast<double>(length - 1) : 1.0;
      const std::size_t reference_layer = slice.sources.front().first_layer + idx;
      const auto& suffixes = layers(slice.sources.front().input)[reference_layer];
      if (suffixes.empty()) {
        detail::fail(error_code::not_found, detail::slice_label(i), ": ", inputs[slice.sources.front().input].label,
                     " has no tensors in layer ", reference_layer, " of ", detail::quoted{stack});
      }
      for (const auto& suffix : suffixes) {
        add_tensor(detail::concat(stack, output_layer, ".", suffix), i, t, [&](std::size_t s) {
          return detail::concat(stack, slice.sources[s].first_layer + idx, ".", suffix);
        });
      }
    }
  }
  for (const auto& name : outside) {
    if (!is_before_layer_stack(name)) add_tensor(name, recipe.slices.size() - 1, 0.0, [&](std::size_t) { return name; });
  }
  plan.assembled_stacks.push_back({stack, output_layer});
  return plan;
}

}  // namespace alloy
