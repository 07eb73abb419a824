#pragma once
// A merge, planned: for every output tensor, where its inputs come from (which input, which of its
// tensors), what is done with them (merged by a resolved policy, or copied), and what is written
// (name, dtype, shape). Planning reads names, dtypes and shapes only, never tensor data, and checks
// everything a merge can check before it starts: a plan that exists can run to the end unless a
// file changes under it or the data themselves disagree (integer buffers that differ).
//
// The plan is the one place where a config's meaning is decided (as mergekit's plan.py); the
// executor (execute_plan.hpp) walks any plan on any backend. The plain plan below maps each
// output tensor to the tensor of the same name in every input; another mapping (mergekit's
// `slices`: output layer k from input layer j of model m) is another planner producing the same
// structure, not another traversal.

#include <algorithm>
#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "alloy/core/dtype.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/shape.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/merge/merge_recipe.hpp"
#include "alloy/merge/parameters.hpp"
#include "alloy/merge/registry.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

// One input tensor of a planned tensor: input `input` of the plan, its tensor named `tensor`.
struct tensor_source {
  std::size_t input = 0;
  std::string tensor;
  friend bool operator==(const tensor_source&, const tensor_source&) = default;
};

// What planning knows of an input: a label for messages ("model 1", a path), its tensor names in
// order, and each tensor's dtype and shape. `header` must not need the data (a view of a mapped
// file, or of a tensor not yet computed, whose data pointer is never read).
struct plan_input {
  std::string label;
  std::vector<std::string> names;
  std::function<std::optional<const_tensor_view>(std::string_view)> header;
};

// Any store as a plan input (its views serve as headers).
template <parameter_store Store>
plan_input describe_input(const Store& store, std::string label) {
  plan_input input{std::move(label), {}, [&store](std::string_view name) { return store.find(name); }};
  for (const auto& name : store.names()) input.names.emplace_back(name);
  return input;
}

struct planned_tensor {
  enum class action : std::uint8_t {
    merge,  // merged by `merge.policy` from `base` (methods that read one) and `models`
    copy,   // an integer or boolean buffer (position ids, masks): the reference's bytes, which
            // every model must hold too (checked when the data are read)
  };
  std::string name;  // in the output
  dtype output_dtype = dtype::f32;
  shape dims;
  double depth = 0;  // relative depth t in the layer stack, for gradients (see layer_stacks)
  action what = action::merge;
  std::optional<tensor_source> base;  // merge: the base, for methods that read one; copy: the base, if any
  std::vector<tensor_source> models;
  resolved_merge merge;  // merge only: the policy and each model's parameters for this tensor
  std::size_t input_bytes = 0;  // bytes of every input this tensor reads

  [[nodiscard]] bool merged() const noexcept { return what == action::merge; }
  // The tensor whose dtype and shape the output follows, and that a copy copies.
  [[nodiscard]] const tensor_source& reference() const { return base ? *base : models.front(); }
  [[nodiscard]] std::size_t output_bytes() const noexcept { return dims.numel() * size_of(output_dtype); }
};

// A layer stack assembled from slices: its name prefix ("model.layers.") and its layer count in
// the output.
struct assembled_stack {
  std::string prefix;
  std::size_t layers = 0;
  friend bool operator==(const assembled_stack&, const assembled_stack&) = default;
};

struct merge_plan {
  std::string method;
  std::vector<std::string> inputs;          // each input's label, by index
  std::optional<std::size_t> base_input;    // which input is the base model, if any
  std::vector<planned_tensor> tensors;      // in output order
  std::size_t input_bytes = 0;
  std::size_t output_bytes = 0;
  // The layer stacks slice plans assembled (slice_plan.hpp, one per module with slices), which a
  // model's config (num_hidden_layers) must then describe.
  std::vector<assembled_stack> assembled_stacks;
  // Module plans (module_plan.hpp): each module's tensors, a range of `tensors`, and how they were
  // chosen.
  struct module_range {
    std::string name;
    std::string rule;
    std::size_t first_tensor = 0;
    std::size_t tensor_count = 0;
  };
  std::vector<module_range> modules;

  [[nodiscard]] std::size_t merged_count() const noexcept {
    std::size_t count = 0;
    for (const auto& t : tensors) count += t.merged() ? 1u : 0u;
    return count;
  }
};

struct plan_options {
  // The dtype of every merged tensor; none: the reference's (the base's, else the first model's).
  // Copied buffers keep their dtype.
  std::optional<dtype> output_dtype;
  // A tensor that a model holds and the reference does not is an error naming it, unless this is
  // set (then it is left out of the merge).
  bool ignore_extra_tensors = false;
};

namespace detail {

inline std::string reference_role(const merge_plan& plan) {
  return plan.base_input ? "the base model" : "the first model";
}

// Every model-scope parameter without a default is set for every model (in its own parameters or
// at the top level), said once per model rather than once per tensor.
inline void check_required_parameters(const merge_recipe& recipe, const method_definition& def,
                                      std::span<const plan_input> models) {
  for (std::size_t i = 0; i < models.size(); ++i) {
    for (const auto& p : def.parameters) {
      const auto levels = recipe.shared_levels();
      const bool set = recipe.model_parameters[i].contains(p.name) ||
                       std::any_of(levels.begin(), levels.end(), [&](const parameter_map* level) { return level->contains(p.name); });
      if (p.where == parameter_definition::scope::model && p.required() && !set) {
        fail(error_code::invalid_argument, "models: ", models[i].label, " has no ", p.name, "; ", recipe.method,
             " needs one for every model (set it in the model's parameters or in the top-level parameters)");
      }
    }
  }
}

// Model counts the method accepts (models besides the base), said with the count given.
inline void check_model_count(const merge_recipe& recipe, const method_definition& def, std::size_t count,
                              std::string_view where = "models") {
  if (count >= def.min_models && count <= def.max_models) return;
  const bool too_few = count < def.min_models;
  const std::size_t bound = too_few ? def.min_models : def.max_models;
  fail(error_code::invalid_argument, where, ": ", recipe.method, " needs ",
       def.min_models == def.max_models ? "exactly " : too_few ? "at least " : "at most ", bound, " model",
       bound == 1 ? "" : "s", def.uses_base() ? " besides the base" : "", ", got ", count);
}

// Whether `found` holds the first rows of a vocabulary matrix of `dims` (see vocabulary_rows).
inline bool holds_rows_of(const shape& found, const shape& dims) {
  return found.rank() == 2 && dims.rank() == 2 && found[1] == dims[1] && found[0] >= dims[0];
}

// The header of `name` in `input`, checked against the reference tensor `expected` (named
// `expected_name` in the input labelled `reference_label`): the same shape (or, `cropped`, at
// least its rows), and dtypes that convert into each other (floating ones) or are equal (buffers
// that are copied). Returns its bytes. `missing_note` ends the message when the input lacks the
// tensor.

inline std::size_t checked_source_bytes(const plan_input& input, std::string_view name, const_tensor_view expected,
                                        std::string_view expected_name, std::string_view reference_label,
                                        bool merged, std::string_view missing_note,
                                        const std::optional<shape>& cropped = std::nullopt) {
  const auto found = input.header(name);
  if (!found) fail(error_code::not_found, "tensor ", quoted{name}, " is missing from ", input.label, missing_note);
  const std::string reference =
      name == expected_name ? std::string(reference_label) : concat(quoted{expected_name}, " in ", reference_label);
  if (!(found->shape() == expected.shape()) && !(cropped && holds_rows_of(found->shape(), *cropped))) {
    fail(error_code::shape_mismatch, "tensor ", quoted{name}, " has shape ", found->shape(), " in ", input.label,
         " but ", expected.shape(), " in ", reference,
         " (mergekit leaves that model out of this tensor with a warning; alloy refuses rather than merge another "
         "set of models for one tensor; only token embeddings and output heads of other vocabulary sizes are merged, "
         "over their common rows)");
  }
  if (is_mergeable(found->dtype()) != merged || (!merged && found->dtype() != expected.dtype())) {
    fail(error_code::dtype_mismatch, "tensor ", quoted{name}, " is ", found->dtype(), " in ", input.label, " but ",
         expected.dtype(), " in ", reference, "; only floating dtypes convert into each other");
  }
  return found->byte_size();
}

// mergekit's rule for vocabularies of different sizes (rectify_embed_sizes): a floating 2-D
// tensor outside the layer stacks whose inputs differ in their row count only (a token
// embedding or an output head of models with more or fewer tokens) is merged over the rows
// every input has, the common top rows. The rows merged, where that applies.
template <class Readers>
std::optional<shape::extent_type> vocabulary_rows(const Readers& readers, std::string_view name, const shape& expected) {
  if (expected.rank() != 2 || layer_position_of(name)) return std::nullopt;
  shape::extent_type rows = expected[0];
  bool differ = false;
  for (const auto& [input, index] : readers) {
    const auto found = input->header(name);
    if (!found || !is_mergeable(found->dtype()) || found->shape().rank() != 2 || found->shape()[1] != expected[1]) {
      return std::nullopt;  // missing, not a weight, or not the same matrix: the usual checks say so
    }
    differ |= found->shape()[0] != expected[0];
    rows = std::min(rows, found->shape()[0]);
  }
  return differ ? std::optional(rows) : std::nullopt;
}

}  // namespace detail

// Plans `recipe` over `models` (one parameter set per model in recipe.model_parameters) and an
// optional `base`: every output tensor is the reference's tensor of that name (the base's when
// there is a base, else the first model's, in its order), merged from the same name in every
// model, or copied when its dtype is not floating. The base is read by the methods that need one.
// Fails, naming the tensor, the input and the key, on: an unknown method or parameter, a missing
// base, too few or too many models, a tensor missing from an input or extra in one, shapes or
// dtypes that disagree, a parameter missing, not finite or out of range for some tensor.
inline merge_plan plan_merge(const merge_recipe& recipe, const plan_input* base, std::span<const plan_input> models,
                             const plan_options& options = {}) {
  recipe.validate();
  const method_definition& def = find_merge_method(recipe.method);
  if (def.needs_base && base == nullptr) detail::fail(error_code::invalid_argument, recipe.method, " needs a base model");
  if (models.empty()) detail::fail(error_code::invalid_argument, recipe.method, ": no models to merge");
  detail::check_model_count(recipe, def, models.size());
  if (recipe.model_parameters.size() != models.size()) {
    detail::fail(error_code::invalid_argument, recipe.method, ": ", models.size(), " models but ",
                 recipe.model_parameters.size(), " model parameter sets");
  }
  detail::check_required_parameters(recipe, def, models);

  merge_plan plan;
  plan.method = recipe.method;
  if (base != nullptr) {
    plan.base_input = 0;
    plan.inputs.push_back(base->label);
  }
  const std::size_t first_model = plan.inputs.size();
  for (const auto& model : models) plan.inputs.push_back(model.label);
  const plan_input& reference = base != nullptr ? *base : models.front();
  const std::string role = detail::reference_role(plan);

  // The inputs a merged tensor reads, with their plan indices: the base only for methods that use it.
  std::vector<std::pair<const plan_input*, std::size_t>> readers;
  if (base != nullptr && def.uses_base()) readers.emplace_back(base, 0);
  for (std::size_t i = 0; i < models.size(); ++i) readers.emplace_back(&models[i], first_model + i);

  if (!options.ignore_extra_tensors) {
    for (const auto& [input, index] : readers) {
      if (input == &reference) continue;
      for (const auto& name : input->names) {
        if (!reference.header(name)) {
          detail::fail(error_code::not_found, "tensor ", detail::quoted{name}, " of ", input->label, " is not in ",
                       role, " (", reference.label, ")");
        }
      }
    }
  }
  const layer_stacks stacks(reference.names);
  for (const auto& name : reference.names) {
    const auto expected = reference.header(name);
    if (!expected) detail::fail(error_code::not_found, "tensor ", detail::quoted{name}, " is listed by ", reference.label, " but not found in it");
    planned_tensor tensor;
    tensor.name = name;
    tensor.dims = expected->shape();
    tensor.depth = stacks.depth(name);
    tensor.what = is_mergeable(expected->dtype()) ? planned_tensor::action::merge : planned_tensor::action::copy;
    tensor.output_dtype = tensor.merged() ? options.output_dtype.value_or(expected->dtype()) : expected->dtype();
    if (base != nullptr && (def.uses_base() || !tensor.merged())) tensor.base = tensor_source{0, name};
    for (std::size_t i = 0; i < models.size(); ++i) tensor.models.push_back({first_model + i, name});
    std::optional<shape> cropped;
    if (tensor.merged()) {
      if (const auto rows = detail::vocabulary_rows(readers, name, expected->shape())) {
        tensor.dims = shape{*rows, expected->shape()[1]};
        cropped = tensor.dims;
      }
    }
    const std::string missing_note = " (" + role + (role == reference.label ? "" : ", " + reference.label + ",") + " has it)";
    for (const auto& [input, index] : readers) {
      tensor.input_bytes += detail::checked_source_bytes(*input, name, *expected, name, reference.label, tensor.merged(),
                                                         missing_note, cropped);
    }
    if (tensor.merged()) tensor.merge = resolve_merge(recipe, name, tensor.depth, models.size());
    plan.input_bytes += tensor.input_bytes;
    plan.output_bytes += tensor.output_bytes();
    plan.tensors.push_back(std::move(tensor));
  }
  return plan;
}

// The same over stores: the base is "the base model", model i is "model i" in messages.
template <parameter_store Base, parameter_store Model, std::size_t Extent>
merge_plan plan_merge(const merge_recipe& recipe, const Base* base, std::span<const Model, Extent> models,
                      const plan_options& options = {}) {
  std::optional<plan_input> base_input;
  if (base != nullptr) base_input = describe_input(*base, "the base model");
  std::vector<plan_input> model_inputs;
  for (std::size_t i = 0; i < models.size(); ++i) model_inputs.push_back(describe_input(models[i], "model " + std::to_string(i)));
  return plan_merge(recipe, base_input ? &*base_input : nullptr, std::span<const plan_input>(model_inputs), options);
}

}  // namespace alloy
