#pragma once
// mergekit's `modules`: a model made of parts (a vision-language model's language model, vision
// tower and projector), each merged on its own, with its own models or slices and parameters,
// planned into one merge_plan that the executor runs like any other.
//
//   modules:
//     text_decoder:                            the language model: layers 0..31 of A and B
//       slices:
//         - sources:
//             - {model: A, layer_range: [0, 32]}
//             - {model: B, layer_range: [0, 32]}
//       parameters: {t: [0, 1]}
//     vision_tower:                            the vision tower: A's and B's, merged whole
//       models: [{model: A}, {model: B}]
//       parameters: {t: 0.2}
//
// The semantics are mergekit's (plan.py, normalize_config / plan_module): a module's `models` is
// a whole-model merge of the module's tensors (methods with a base merge the others relative to
// it; linear-type methods merge the base as one more model when it is not listed), its `slices`
// a slice plan of its one layer stack (slice_plan.hpp); gradients run over the module's own
// stacks; parameters are looked up source -> slice -> module -> top level -> default.
//
// Which tensors form a module is found from the tensor names, without mergekit's tables of
// architectures (module_partition below):
// - a module with a `weight_prefix` takes the names that start with it;
// - a module whose name is a component of tensor names ("vision_tower" in
//   "model.vision_tower.encoder.layers.0.mlp.fc1.weight", "multi_modal_projector", Whisper's
//   "encoder" and "decoder"), or one of its aliases (module_aliases: "visual" for vision_tower,
//   "merger" for multi_modal_projector, as Qwen2-VL names them), takes the names that contain it;
// - at most one module whose name is no component of any name (mergekit's "text_decoder", whose
//   tensors sit under "language_model." or under no prefix at all) takes every other name.
// The most specific claim wins (a prefix over a component, the deeper component); a name two
// modules claim equally is an error naming both; a name no module takes is an error too
// (mergekit leaves such tensors out of its output, which then does not load).

#include <algorithm>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/merge/merge_plan.hpp"
#include "alloy/merge/merge_recipe.hpp"
#include "alloy/merge/registry.hpp"
#include "alloy/merge/slice_plan.hpp"

namespace alloy {

struct module_model {
  std::size_t input = 0;     // which of the plan's inputs
  parameter_map parameters;  // the model's
};

struct output_module {
  std::string name;                          // the config's key ("vision_tower")
  std::optional<std::string> weight_prefix;  // its tensors' names start with this; none: found from the name
  std::vector<module_model> models;          // a whole-model merge of the module's tensors,
  std::vector<output_slice> slices;          // or slices of its layer stack (exactly one of the two)
  parameter_map parameters;
};

struct module_recipe {
  std::string method;
  parameter_map parameters;               // top level
  std::optional<std::size_t> base_input;  // the config's base model, if any
  std::vector<output_module> modules;
};

// The models a `models:` list merges, as mergekit decides: a method that uses a base leaves it out
// (it is the base); any other merges it as one more model when the list does not name it. Returns
// input indices, in list order.
inline std::vector<std::size_t> merged_models(const method_definition& def, std::optional<std::size_t> base,
                                              std::span<const std::size_t> listed) {
  std::vector<std::size_t> models;
  bool base_listed = false;
  for (std::size_t input : listed) {
    if (base && input == *base) {
      base_listed = true;
      if (def.uses_base()) continue;
    }
    models.push_back(input);
  }
  if (base && !def.uses_base() && !base_listed) models.push_back(*base);
  return models;
}

// The other names under which models hold mergekit's modules: Qwen2-VL's vision tower is
// "visual." and its projector "visual.merger."; SigLIP towers sit under "vision_model.".
inline std::span<const std::string_view> module_aliases(std::string_view module) {
  static constexpr std::string_view vision[] = {"visual", "vision_model", "vision_encoder"};
  static constexpr std::string_view projector[] = {"merger", "mm_projector", "multimodal_projector"};
  if (module == "vision_tower") return vision;
  if (module == "multi_modal_projector") return projector;
  return {};
}

// Which module each tensor name belongs to (the rule above), decided once from every input's names.
// Where several modules could take a name, the most specific wins: a weight_prefix over a name
// component, a longer prefix over a shorter one, a deeper component over a shallower one
// ("visual.merger.mlp.0.weight" is the projector's, not the vision tower's).
class module_partition {
 public:
  template <class Inputs>
  module_partition(std::span<const output_module> modules, const Inputs& inputs) : modules_(modules) {
    for (const output_module& module : modules) {
      if (module.weight_prefix && module.weight_prefix->empty()) {
        detail::fail(error_code::invalid_argument, "modules.", module.name, ".weight_prefix: is empty");
      }
    }
    // Each module's components: its name, and its aliases that no other module is named.
    components_.resize(modules.size());
    for (std::size_t m = 0; m < modules.size(); ++m) {
      if (modules[m].weight_prefix) continue;
      components_[m].push_back(modules[m].name);
      for (std::string_view alias : module_aliases(modules[m].name)) {
        const bool taken = std::any_of(modules.begin(), modules.end(), [&](const output_module& other) { return other.name == alias; });
        if (!taken) components_[m].emplace_back(alias);
      }
    }
    std::vector<std::string> unnamed;
    for (std::size_t m = 0; m < modules.size(); ++m) {
      if (modules[m].weight_prefix) continue;
      bool found = false;
      for (const auto& input : inputs) {
        for (const auto& name : input.names) found = found || claim(m, name) > 0;
        if (found) break;
      }
      if (!found) {
        unnamed.push_back(modules[m].name);
        rest_ = m;
      }
    }
    if (unnamed.size() > 1) {
      std::string list;
      for (const auto& name : unnamed) list += (list.empty() ? "" : ", ") + detail::concat(detail::quoted{name});
      detail::fail(error_code::invalid_argument, "modules: ", list,
                   " are no component of any tensor name; one module (the language model, mergekit's text_decoder) "
                   "may take the tensors no other module takes, the others need a weight_prefix");
    }
  }

  // The module `name` belongs to; none: no module takes it. Fails on a name that two modules
  // claim equally (the same weight_prefix).
  [[nodiscard]] std::optional<std::size_t> module_of(std::string_view name) const {
    std::optional<std::size_t> owner;
    std::size_t best = 0;
    for (std::size_t m = 0; m < modules_.size(); ++m) {
      if (rest_ && m == *rest_) continue;
      const std::size_t rank = claim(m, name);
      if (rank == 0 || rank < best) continue;
      if (rank == best) {
        detail::fail(error_code::invalid_argument, "modules: tensor ", detail::quoted{name}, " belongs to both ",
                     detail::quoted{modules_[*owner].name}, " (", rule(*owner), ") and ", detail::quoted{modules_[m].name},
                     " (", rule(m), ")");
      }
      owner = m;
      best = rank;
    }
    return owner ? owner : rest_;
  }

  // How module `m` takes its tensors, for messages and the dry run.
  [[nodiscard]] std::string rule(std::size_t m) const {
    const output_module& module = modules_[m];
    if (module.weight_prefix) return detail::concat("names starting with ", detail::quoted{*module.weight_prefix});
    if (rest_ && m == *rest_) return "every tensor no other module takes";
    std::string list;
    for (const auto& component : components_[m]) list += (list.empty() ? "" : ", ") + detail::concat(detail::quoted{component});
    return detail::concat("names with the component ", list);
  }

 private:
  // How strongly module `m` claims `name`: 0 not at all; a component at dotted position p: p + 1;
  // a weight_prefix: above every component, longer prefixes higher.
  [[nodiscard]] std::size_t claim(std::size_t m, std::string_view name) const {
    const output_module& module = modules_[m];
    if (module.weight_prefix) return name.starts_with(*module.weight_prefix) ? name.size() + module.weight_prefix->size() + 1 : 0;
    std::size_t deepest = 0, position = 0, start = 0;
    while (true) {
      const std::size_t end = name.find('.', start);
      if (end == std::string_view::npos) break;  // the last part is the tensor's own name, no component
      const std::string_view part = name.substr(start, end - start);
      ++position;
      for (const auto& component : components_[m]) {
        if (part == component) deepest = position;
      }
      start = end + 1;
    }
    return deepest;
  }

  std::span<const output_module> modules_;
  std::vector<std::vector<std::string>> components_;
  std::optional<std::size_t> rest_;
};

namespace detail {

// `inputs` with only the names of module `m`.
inline std::vector<plan_input> module_inputs(std::span<const plan_input> inputs, const module_partition& partition,
                                             std::size_t m) {
  std::vector<plan_input> restricted;
  for (const plan_input& input : inputs) {
    plan_input part{input.label, {}, input.header};
    for (const auto& name : input.names) {
      if (partition.module_of(name) == m) part.names.push_back(name);
    }
    restricted.push_back(std::move(part));
  }
  return restricted;
}

// Module `module`'s `models:` merge over `inputs` (already restricted to its names), with its
// inputs renumbered as `inputs` are.
inline merge_plan plan_module_models(const module_recipe& recipe, const output_module& module,
                                     std::span<const plan_input> inputs, const plan_options& options) {
  const method_definition& def = find_merge_method(recipe.method);
  std::vector<std::size_t> listed;
  for (const module_model& model : module.models) listed.push_back(model.input);
  const std::vector<std::size_t> models = merged_models(def, recipe.base_input, listed);
  merge_recipe merge;
  merge.method = recipe.method;
  merge.parameters = recipe.parameters;
  merge.module_parameters = module.parameters;
  std::vector<plan_input> model_inputs;
  for (std::size_t input : models) {
    const auto it = std::find_if(module.models.begin(), module.models.end(),
                                 [&](const module_model& model) { return model.input == input; });
    merge.model_parameters.push_back(it != module.models.end() ? it->parameters : parameter_map{});
    model_inputs.push_back(inputs[input]);
  }
  const plan_input* base = recipe.base_input ? &inputs[*recipe.base_input] : nullptr;
  merge_plan plan = plan_merge(merge, base, std::span<const plan_input>(model_inputs), options);
  // plan_merge numbers the base 0 and the models after it; the module plan numbers them as `inputs`.
  const std::size_t first_model = base != nullptr ? 1 : 0;
  const auto renumber = [&](tensor_source& source) {
    source.input = source.input < first_model ? *recipe.base_input : models[source.input - first_model];
  };
  for (planned_tensor& tensor : plan.tensors) {
    if (tensor.base) renumber(*tensor.base);
    for (tensor_source& source : tensor.models) renumber(source);
  }
  return plan;
}

}  // namespace detail

// Plans `recipe` over `inputs` (every model the modules name, by index). Fails, naming the
// module, on: no modules, a module with both or neither of models and slices, a module that takes
// no tensor of its reference model, a tensor two modules claim or none takes, and every check of
// plan_merge and plan_slices within a module.
inline merge_plan plan_modules(const module_recipe& recipe, std::span<const plan_input> inputs,
                               const plan_options& options = {}) {
  (void)find_merge_method(recipe.method);
  if (recipe.modules.empty()) detail::fail(error_code::invalid_argument, "modules: none given");
  const auto check_input = [&](std::size_t input, std::string_view where) {
    if (input >= inputs.size()) detail::fail(error_code::invalid_argument, where, ": input ", input, " does not exist");
  };
  if (recipe.base_input) check_input(*recipe.base_input, "base_model");
  for (const output_module& module : recipe.modules) {
    const std::string where = "modules." + module.name;
    if (module.models.empty() == module.slices.empty()) {
      detail::fail(error_code::invalid_argument, where, ": give either models or slices (one of the two)");
    }
    for (const module_model& model : module.models) check_input(model.input, where);
    if (!module.slices.empty() && module.slices.front().sources.empty()) {
      detail::fail(error_code::invalid_argument, where, ": slices[0]: no sources");
    }
  }
  const module_partition partition(std::span<const output_module>(recipe.modules), inputs);

  merge_plan plan;
  plan.method = recipe.method;
  for (const plan_input& input : inputs) plan.inputs.push_back(input.label);
  plan.base_input = recipe.base_input;
  for (std::size_t m = 0; m < recipe.modules.size(); ++m) {
    const output_module& module = recipe.modules[m];
    const std::vector<plan_input> restricted = detail::module_inputs(inputs, partition, m);
    merge_plan part;
    try {
      const std::size_t reference = module.models.empty() ? module.slices.front().sources.front().input
                                    : recipe.base_input   ? *recipe.base_input
                                                          : module.models.front().input;
      check_input(reference, "modules." + module.name);
      if (restricted[reference].names.empty()) {
        detail::fail(error_code::invalid_argument, "no tensor of ", inputs[reference].label, " belongs to it (it takes ",
                     partition.rule(m), ")");
      }
      if (!module.models.empty()) {
        part = detail::plan_module_models(recipe, module, restricted, options);
      } else {
        slice_recipe slices{recipe.method, recipe.parameters, recipe.base_input, module.slices, module.parameters};
        part = plan_slices(slices, restricted, options);
      }
    } catch (const error& e) {
      detail::fail(e.code(), "modules.", module.name, ": ", e.what());
    }
    plan.modules.push_back({module.name, partition.rule(m), plan.tensors.size(), part.tensors.size()});
    for (planned_tensor& tensor : part.tensors) plan.tensors.push_back(std::move(tensor));
    plan.input_bytes += part.input_bytes;
    plan.output_bytes += part.output_bytes;
    for (assembled_stack& stack : part.assembled_stacks) plan.assembled_stacks.push_back(std::move(stack));
  }
  // Every tensor of every input is in some module: mergekit would drop the others silently.
  for (const plan_input& input : inputs) {
    for (const auto& name : input.names) {
      if (!partition.module_of(name)) {
        std::string list;
        for (const output_module& module : recipe.modules) list += (list.empty() ? "" : ", ") + module.name;
        detail::fail(error_code::invalid_argument, "modules: tensor ", detail::quoted{name}, " of ", input.label,
                     " belongs to no module (", list,
                     "); mergekit would leave it out of the output, which then lacks it: add the module it belongs to");
      }
    }
  }
  return plan;
}

}  // namespace alloy
