#pragma once
// What alloy-merge does between reading the config and writing the folder: opens the models
// (memory-mapped; LoRA adapters folded in lazily), checks every tensor's name, shape, dtype and
// parameters across them (the plan, which is all a dry run does), then merges tensor by tensor
// into a model_writer, releasing each input's pages once its tensor is written.

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/alloy.hpp"
#include "alloy/store/lora_applied_store.hpp"
#include "json_file.hpp"
#include "merge_config.hpp"
#include "tokenizer_merge.hpp"

namespace alloy::tools {

// Which stage an error belongs to; main maps each to a documented exit code.
enum class failure_kind { config, input, output, device };

class stage_error : public error {
 public:
  stage_error(failure_kind kind, const error& cause) : error(cause.code(), cause.what()), kind_(kind) {}
  [[nodiscard]] failure_kind kind() const noexcept { return kind_; }

 private:
  failure_kind kind_;
};

// Runs `body`, tagging alloy errors with `kind` (those of code invalid_argument as config errors:
// a parameter out of range or missing for some tensor).
template <class Body>
decltype(auto) in_stage(failure_kind kind, Body&& body) {
  try {
    return body();
  } catch (const stage_error&) {
    throw;
  } catch (const error& e) {
    throw stage_error(e.code() == error_code::invalid_argument ? failure_kind::config
                      : e.code() == error_code::device         ? failure_kind::device
                                                                : kind,
                      e);
  }
}

// One input model: a safetensors file or folder, with a LoRA adapter folded in or not.
class model_input {
 public:
  model_input(model_reference reference, const cpu_backend& backend)
      : reference_(std::move(reference)), store_(open_store(reference_, backend)) {
    const std::filesystem::path path = reference_.model;
    folder_ = std::filesystem::is_directory(path) ? path
              : path.extension() == ".json"        ? alloy::detail::parent_or_current(path)
                                                   : std::filesystem::path();
  }

  [[nodiscard]] const model_reference& reference() const noexcept { return reference_; }
  // The model's folder (for config and tokenizer files), or empty for a bare .safetensors file.
  [[nodiscard]] const std::filesystem::path& folder() const noexcept { return folder_; }
  [[nodiscard]] const safetensors_store& files() const {
    return std::visit(
        [](const auto& s) -> const safetensors_store& {
          if constexpr (std::is_same_v<std::decay_t<decltype(s)>, safetensors_store>) {
            return s;
          } else {
            return s.base();
          }
        },
        store_);
  }
  // Name, dtype and shape without reading data (an adapted tensor keeps its base's).
  [[nodiscard]] std::optional<const_tensor_view> header(std::string_view name) const { return files().find(name); }
  [[nodiscard]] const_tensor_view view(std::string_view name) const {
    return std::visit([&](const auto& s) { return s.view(name); }, store_);
  }
  void release(std::string_view name) const {
    std::visit([&](const auto& s) { s.release(name); }, store_);
  }
  void prefetch(std::string_view name) const {
    std::visit([&](const auto& s) { s.prefetch(name); }, store_);
  }

 private:
  static std::filesystem::path checked_path(const std::string& text, std::string_view what) {
    std::error_code ec;
    if (!std::filesystem::exists(text, ec)) {
      const bool looks_like_hub_id = text.find('/') != std::string::npos && text.front() != '/' && text.front() != '.' &&
                                     std::count(text.begin(), text.end(), '/') == 1;
      alloy::fail(error_code::not_found, what, " ", alloy::quoted{text}, " does not exist",
                          looks_like_hub_id ? " (alloy-merge reads local folders and files only; download the "
                                              "model first, e.g. with huggingface-cli download)"
                                            : "");
    }
    return text;
  }

  using store_type = std::variant<safetensors_store, lora_applied_store<safetensors_store>>;

  static store_type open_store(const model_reference& reference, const cpu_backend& backend) {
    auto store = safetensors_store::open(checked_path(reference.model, "model"));
    if (reference.adapter.empty()) return store_type(std::in_place_index<0>, std::move(store));
    auto adapter = peft_lora_adapter::open(checked_path(reference.adapter, "LoRA adapter"));
    return store_type(std::in_place_index<1>, std::move(store), std::move(adapter), backend);
  }

  model_reference reference_;
  store_type store_;
  std::filesystem::path folder_;
};

// The merge, resolved: which inputs are the base and the models, the recipe, and the plan.
struct merge_job {
  merge_config config;
  std::vector<std::unique_ptr<model_input>> inputs;  // each distinct input, opened once
  const model_input* base = nullptr;
  std::vector<const model_input*> models;  // the recipe's models, in config order
  merge_recipe recipe;
  merge_plan plan;                           // in write order
  std::vector<const model_input*> sources;  // the plan's inputs, by index
  std::size_t peak_bytes = 0;  // estimated working memory of the largest tensor
  std::string peak_tensor;
  // tokenizer_source / tokenizer: the output vocabulary, the inputs in its model order, and the
  // tensors whose rows are tokens (each model's laid out in the output's order when read).
  std::optional<vocabulary_plan> vocabulary;
  std::vector<const model_input*> vocabulary_inputs;
  std::set<std::string, std::less<>> vocabulary_tensors;
  std::optional<std::string> chat_template;  // resolved: the text to write

  [[nodiscard]] const model_input& reference() const { return base != nullptr ? *base : *models.front(); }
  // What the writer is told: every tensor's name, output dtype and shape, in output order.
  [[nodiscard]] std::vector<tensor_spec> output_specs() const {
    std::vector<tensor_spec> specs;
    for (const auto& t : plan.tensors) specs.push_back({t.name, t.output_dtype, t.dims});
    return specs;
  }
};

namespace detail {

inline std::optional<dtype> output_dtype_of(const merge_config& config) {
  return config.out_dtype ? config.out_dtype : config.compute_dtype;
}

// The job's input for `reference`, opened on first use (input errors tagged as such).
inline const model_input* open_input(merge_job& job, const model_reference& reference, const cpu_backend& backend) {
  for (const auto& input : job.inputs) {
    if (input->reference() == reference) return input.get();
  }
  return in_stage(failure_kind::input, [&] {
    job.inputs.push_back(std::make_unique<model_input>(reference, backend));
    return job.inputs.back().get();
  });
}

// What planning reads of an input: its tensor names and headers, labelled by its path. A
// vocabulary matrix is described with the output vocabulary's rows, as the source will give it.
inline plan_input describe(const model_input& input, const merge_job& job) {
  // Headers only: an adapted tensor keeps its base's dtype and shape, and is not folded here.
  plan_input described{input.reference().text(), {}, [&input, &job](std::string_view name) {
    auto header = input.header(name);
    if (header && job.vocabulary_tensors.contains(name)) {
      header = const_tensor_view(header->data(), header->dtype(),
                                 shape{static_cast<shape::extent_type>(job.vocabulary->rows), header->shape()[1]});
    }
    return header;
  }};
  for (const auto& name : input.files().names()) described.names.push_back(name);
  return described;
}

// mergekit's tokenizer merge, planned: the output vocabulary over every referenced model (the
// base first), and the tensors whose rows are its tokens: the donor's 2-D floating tensors
// outside the layer stacks with vocab_size rows (token embeddings, output heads), which every
// model must have with at least its own vocab_size rows.
inline void plan_vocabulary(merge_job& job) {
  const merge_config& config = job.config;
  std::vector<model_reference> references;
  std::vector<std::filesystem::path> folders;
  const auto add = [&](const model_input* input) {
    if (std::find(job.vocabulary_inputs.begin(), job.vocabulary_inputs.end(), input) != job.vocabulary_inputs.end()) return;
    job.vocabulary_inputs.push_back(input);
    references.push_back(input->reference());
    folders.push_back(input->folder());
  };
  if (job.base != nullptr) add(job.base);
  for (const model_input* model : job.models) add(model);
  if (config.chat_template) job.chat_template = resolve_chat_template(*config.chat_template, folders);
  if (!config.tokenizer) return;
  std::error_code ec;
  if (config.tokenizer->source == tokenizer_settings::kind::base && config.tokenizer->tokens.empty() &&
      !config.tokenizer->pad_to_multiple_of && !std::filesystem::is_regular_file(folders.front() / "tokenizer.json", ec)) {
    return;  // no vocabulary to read (a slow tokenizer only): the base's files are copied, as without the setting
  }
  std::filesystem::path tokenizer_only;  // a tokenizer source outside the merge: only its files are read
  for (const auto& extra : config.tokenizer_only_models()) tokenizer_only = extra.model;
  job.vocabulary = alloy::tools::plan_vocabulary(*config.tokenizer, references, folders, job.base != nullptr, tokenizer_only);
  if (job.vocabulary->keeps_donor_vocabulary) return;
  const model_input& donor = *job.vocabulary_inputs.front();
  const std::size_t donor_size = job.vocabulary->vocabularies.front().vocab_size;
  for (const auto& name : donor.files().names()) {
    const auto header = donor.header(name);
    if (header && header->shape().rank() == 2 && is_mergeable(header->dtype()) && !layer_position_of(name) &&
        static_cast<std::size_t>(header->shape()[0]) == donor_size) {
      job.vocabulary_tensors.insert(name);
    }
  }
  if (job.vocabulary_tensors.empty()) {
    alloy::fail(error_code::format, donor.reference().text(), ": no token embedding to lay out in the new vocabulary ",
                "(no 2-D tensor outside the layer stacks has vocab_size = ", donor_size, " rows)");
  }
  for (std::size_t i = 0; i < job.vocabulary_inputs.size(); ++i) {
    const std::size_t size = job.vocabulary->vocabularies[i].vocab_size;
    for (const auto& name : job.vocabulary_tensors) {
      const auto header = job.vocabulary_inputs[i]->header(name);
      if (header && (header->shape().rank() != 2 || static_cast<std::size_t>(header->shape()[0]) < size)) {
        alloy::fail(error_code::shape_mismatch, "tensor ", alloy::quoted{name}, " has shape ", header->shape(), " in ",
                    references[i].text(), ", fewer rows than its vocab_size ", size);
      }
    }
  }
}

// Which models take part, as mergekit decides (alloy's merged_models): methods that use a base
// leave it out of the models even when the config lists it; linear and karcher merge every
// referenced model, the base included.
inline void choose_models(merge_job& job, const cpu_backend& backend) {
  const method_definition& def = find_merge_method(job.config.method);
  const auto open = [&](const model_reference& reference) { return open_input(job, reference, backend); };
  if (job.config.base_model) job.base = open(*job.config.base_model);
  job.recipe.method = job.config.method;
  job.recipe.parameters = job.config.parameters;
  std::vector<const model_input*> candidates;  // the listed models, then the base if it is not one
  std::vector<std::size_t> listed;
  for (const auto& entry : job.config.models) {
    listed.push_back(candidates.size());
    candidates.push_back(open(entry.reference));
  }
  std::optional<std::size_t> base;
  if (job.base != nullptr) {
    base = static_cast<std::size_t>(std::find(candidates.begin(), candidates.end(), job.base) - candidates.begin());
    if (*base == candidates.size()) candidates.push_back(job.base);
  }
  for (std::size_t i : merged_models(def, base, listed)) {
    job.models.push_back(candidates[i]);
    job.recipe.model_parameters.push_back(i < job.config.models.size() ? job.config.models[i].parameters : parameter_map{});
  }
}

// A whole-model merge: the base (if any) is input 0, then the models.
inline void plan_models(merge_job& job, const cpu_backend& backend) {
  choose_models(job, backend);
  in_stage(failure_kind::input, [&] { plan_vocabulary(job); });
  std::optional<plan_input> base;
  if (job.base != nullptr) {
    base = describe(*job.base, job);
    job.sources.push_back(job.base);
  }
  std::vector<plan_input> models;
  for (const model_input* model : job.models) {
    models.push_back(describe(*model, job));
    job.sources.push_back(model);
  }
  job.plan = in_stage(failure_kind::input, [&] {
    return alloy::plan_merge(job.recipe, base ? &*base : nullptr, std::span<const plan_input>(models),
                             {.output_dtype = output_dtype_of(job.config)});
  });
}

// The plan's index of `reference` in a slice or module job, where every model the config names
// is an input once; the config's base model is input 0 when there is one.
inline std::size_t source_index(merge_job& job, const model_reference& reference, const cpu_backend& backend) {
  const model_input* input = open_input(job, reference, backend);
  const auto found = std::find(job.sources.begin(), job.sources.end(), input);
  if (found != job.sources.end()) return static_cast<std::size_t>(found - job.sources.begin());
  job.sources.push_back(input);
  return job.sources.size() - 1;
}

inline std::vector<output_slice> output_slices(merge_job& job, const std::vector<slice_entry>& slices,
                                               const cpu_backend& backend) {
  std::vector<output_slice> planned;
  for (const auto& slice : slices) {
    output_slice out;
    for (const auto& source : slice.sources) {
      out.sources.push_back({source_index(job, source.reference, backend), source.first_layer, source.end_layer, source.parameters});
    }
    if (slice.base_model) out.base_input = source_index(job, *slice.base_model, backend);
    out.parameters = slice.parameters;
    planned.push_back(std::move(out));
  }
  return planned;
}

// The inputs of a slice or module job as planning sees them, once every input is opened: the
// models are every input but the base; a vocabulary is built only where every model has the
// donor's.
inline std::vector<plan_input> describe_sources(merge_job& job, const char* layout) {
  for (const model_input* input : job.sources) {
    if (input != job.base) job.models.push_back(input);
  }
  in_stage(failure_kind::input, [&] { plan_vocabulary(job); });
  if (job.vocabulary && !job.vocabulary->keeps_donor_vocabulary) {
    alloy::fail(error_code::invalid_argument, "tokenizer_source: the vocabularies of the models differ; alloy-merge ",
                "builds a vocabulary for models:, not for ", layout, " (mergekit takes the embeddings from one slice there)");
  }
  std::vector<plan_input> inputs;
  for (const model_input* input : job.sources) inputs.push_back(describe(*input, job));
  return inputs;
}

// mergekit's slices (alloy's plan_slices).
inline void plan_slice_job(merge_job& job, const cpu_backend& backend) {
  slice_recipe recipe;
  recipe.method = job.config.method;
  recipe.parameters = job.config.parameters;
  if (job.config.base_model) {
    recipe.base_input = source_index(job, *job.config.base_model, backend);
    job.base = job.sources[*recipe.base_input];
  }
  recipe.slices = output_slices(job, job.config.slices, backend);
  const std::vector<plan_input> inputs = describe_sources(job, "slices");
  job.plan = in_stage(failure_kind::input, [&] {
    return alloy::plan_slices(recipe, inputs, {.output_dtype = output_dtype_of(job.config)});
  });
}

// mergekit's modules (alloy's plan_modules).
inline void plan_module_job(merge_job& job, const cpu_backend& backend) {
  module_recipe recipe;
  recipe.method = job.config.method;
  recipe.parameters = job.config.parameters;
  if (job.config.base_model) {
    recipe.base_input = source_index(job, *job.config.base_model, backend);
    job.base = job.sources[*recipe.base_input];
  }
  for (const module_entry& module : job.config.modules) {
    output_module out{module.name, module.weight_prefix, {}, output_slices(job, module.slices, backend), module.parameters};
    for (const model_entry& entry : module.models) {
      out.models.push_back({source_index(job, entry.reference, backend), entry.parameters});
    }
    recipe.modules.push_back(std::move(out));
  }
  const std::vector<plan_input> inputs = describe_sources(job, "modules");
  job.plan = in_stage(failure_kind::input, [&] {
    return alloy::plan_modules(recipe, inputs, {.output_dtype = output_dtype_of(job.config)});
  });
}

}  // namespace detail

// A count the donor's config states that the merge changes: what it says (`from`) and what is
// written. A slice merge changes the layers; embeddings merged over the rows every model has
// (mergekit's rule for vocabularies of different sizes) change the vocabulary.
struct count_change {
  std::size_t from = 0;
  std::size_t to = 0;
};

// A layer stack whose layer count a slice merge changes, and the donor's other stacks' counts
// (which tell whether a count in the config is this stack's).
struct layer_change {
  std::string stack;  // its name prefix, "model.layers."
  count_change count;
  std::vector<std::size_t> other_stacks;  // the donor's other stacks' layer counts
};

namespace detail {
// The places a config states a count under one of `keys`: at the top level (owner "") and in
// sub-configs (text_config, vision_config, ...).
inline std::vector<std::pair<std::string, nlohmann::ordered_json*>> stated_counts(nlohmann::ordered_json& config,
                                                                                std::span<const char* const> keys) {
  std::vector<std::pair<std::string, nlohmann::ordered_json*>> found;
  const auto collect = [&](const std::string& owner, nlohmann::ordered_json& object) {
    for (const char* key : keys) {
      const auto it = object.find(key);
      if (it != object.end() && it->is_number_integer()) found.emplace_back(owner, &*it);
    }
  };
  collect("", config);
  for (auto& [key, value] : config.items()) {
    if (value.is_object()) collect(key, value);
  }
  return found;
}

inline std::string key_list(std::span<const char* const> keys) {
  std::string names;
  for (std::size_t k = 0; k < keys.size(); ++k) names += std::string(k == 0 ? "" : k + 1 == keys.size() ? " or " : ", ") + keys[k];
  return names;
}

// Sets the count wherever the config states the donor's (`from`). When `must_match`, fails where
// the config states such counts and none is `from` (it describes another stack, or another
// model); a config that states none is left as it is.
inline void set_stated_count(nlohmann::ordered_json& config, std::span<const char* const> keys, std::string_view what,
                             const count_change& change, const std::filesystem::path& path, bool must_match) {
  const auto stated = stated_counts(config, keys);
  std::size_t changed = 0;
  for (const auto& [owner, value] : stated) {
    if (value->get<long long>() != static_cast<long long>(change.from)) continue;
    *value = change.to;
    ++changed;
  }
  if (must_match && !stated.empty() && changed == 0) {
    alloy::fail(error_code::format, path.string(), ": no ", what, " (", key_list(keys), ", at the top level or in a ",
                "sub-config) is ", change.from, ", the donor model's, so the merged model's ", change.to,
                " cannot be written into it");
  }
}

inline constexpr const char* layer_count_keys[] = {"num_hidden_layers", "n_layer", "num_layers", "n_layers", "depth"};
inline constexpr const char* vocabulary_keys[] = {"vocab_size", "n_vocab"};

// Whether sub-config `owner` ("vision_config") describes the stack `stack` names: its stem
// ("vision") is in the stack's name, or it is the language model's ("text", "llm", "language")
// and the stack is under "language_model".
inline bool describes_stack(std::string_view owner, std::string_view stack) {
  const std::string_view stem = owner.substr(0, owner.find("_config"));
  if (stem.empty() || owner == stem) return false;
  if (stack.find(stem) != std::string_view::npos) return true;
  return (stem == "text" || stem == "llm" || stem == "language") && stack.find("language_model") != std::string_view::npos;
}

// Sets each changed stack's layer count. A count the config states once for that number is the
// stack's; where another stack of the donor has as many layers, the count is the one in the
// sub-config that names the stack (vision_config for "vision_tower...layers."), else it is
// ambiguous and refused.
inline void set_layer_counts(nlohmann::ordered_json& config, std::span<const layer_change> changes,
                             const std::filesystem::path& path) {
  for (const layer_change& change : changes) {
    if (change.count.from == change.count.to) continue;
    const bool shared = std::find(change.other_stacks.begin(), change.other_stacks.end(), change.count.from) !=
                        change.other_stacks.end();
    if (!shared) {
      set_stated_count(config, layer_count_keys, "layer count", change.count, path, true);
      continue;
    }
    std::size_t changed = 0;
    for (const auto& [owner, value] : stated_counts(config, layer_count_keys)) {
      if (value->get<long long>() != static_cast<long long>(change.count.from) || !describes_stack(owner, change.stack)) continue;
      *value = change.count.to;
      ++changed;
    }
    if (changed == 0) {
      alloy::fail(error_code::format, path.string(), ": the merged stack ", alloy::quoted{change.stack}, " has ",
                  change.count.to, " layers, but the donor has another stack of ", change.count.from,
                  " layers too and no sub-config (text_config, vision_config, ...) names this one, so which layer count (",
                  key_list(layer_count_keys), ") to change is ambiguous");
    }
  }
}
}  // namespace detail

// config.json with torch_dtype set to what was written, as mergekit does, and for a slice merge
// the new layer counts, for a new vocabulary its size.
inline std::string updated_model_config(const std::filesystem::path& path, std::optional<dtype> written,
                                        std::span<const layer_change> layers = {},
                                        std::optional<count_change> vocabulary = std::nullopt) {
  nlohmann::ordered_json config = read_json_file(path, "a model config", 16'000'000);
  if (written && config.is_object()) {
    config["torch_dtype"] = *written == dtype::bf16 ? "bfloat16" : *written == dtype::f16 ? "float16" : "float32";
  }
  if (config.is_object()) detail::set_layer_counts(config, layers, path);
  if (vocabulary && config.is_object()) {
    // A config whose vocab_size is not its embedding's rows (padded matrices) keeps it.
    detail::set_stated_count(config, detail::vocabulary_keys, "vocabulary size", *vocabulary, path, false);
  }
  return config.dump(2) + "\n";
}

// The output's config.json, from the donor's (the base's, else the first model's) at `path`.
inline std::string output_model_config(const merge_job& job, const std::filesystem::path& path) {
  std::vector<layer_change> layers;
  const layer_stacks donor_stacks(job.reference().files().names());
  for (const assembled_stack& stack : job.plan.assembled_stacks) {
    layer_change change{stack.prefix, {donor_stacks.layer_count(stack.prefix), stack.layers}, {}};
    for (const auto& [prefix, count] : donor_stacks.stacks()) {
      if (prefix != stack.prefix) change.other_stacks.push_back(count);
    }
    layers.push_back(std::move(change));
  }
  // The vocabulary: the rows of the first embedding merged over fewer rows than the donor has.
  std::optional<count_change> vocabulary;
  for (const planned_tensor& tensor : job.plan.tensors) {
    const auto donor = job.reference().header(tensor.name);
    if (!donor || donor->shape() == tensor.dims || !tensor.merged()) continue;
    vocabulary = count_change{static_cast<std::size_t>(donor->shape()[0]), static_cast<std::size_t>(tensor.dims[0])};
    break;
  }
  return updated_model_config(path, detail::output_dtype_of(job.config), layers, vocabulary);
}

// Opens every model and checks the whole merge without reading tensor data (alloy's plan_merge,
// or plan_slices for mergekit's slices, with the inputs named by their paths). Throws stage_error.
inline merge_job plan_merge(merge_config config, const cpu_backend& backend) {
  merge_job job;
  job.config = std::move(config);
  if (!job.config.slices.empty()) {
    detail::plan_slice_job(job, backend);
  } else if (!job.config.modules.empty()) {
    detail::plan_module_job(job, backend);
  } else {
    detail::plan_models(job, backend);
  }
  // The config.json the output will carry, made now so that a config it cannot be written into
  // fails before any tensor is merged.
  if (const auto& folder = job.reference().folder(); !folder.empty()) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(folder / "config.json", ec)) {
      in_stage(failure_kind::input, [&] { (void)output_model_config(job, folder / "config.json"); });
    }
  }
  // Working memory per tensor: inputs' mapped pages, the output buffer and the other one (which the
  // writing thread reads; it keeps the size of the largest tensor it held), and the policies'
  // scratch (f32 magnitudes for selection, a bit mask per model, DELLA's byte mask); adapters: f32
  // copies of W and B A.
  std::size_t largest_output = 0;
  for (const auto& tensor : job.plan.tensors) largest_output = std::max(largest_output, tensor.output_bytes());
  for (const auto& tensor : job.plan.tensors) {
    const std::size_t n = tensor.dims.numel();
    const std::size_t readers = tensor.models.size() + (tensor.base ? 1 : 0);
    std::size_t scratch = tensor.merged() ? n * 4 + readers * (n / 8 + 8) + n : 0;
    if (job.vocabulary_tensors.contains(tensor.name)) scratch += readers * n * 4;  // the laid-out matrices
    for (const model_input* input : job.sources) {
      if (!input->reference().adapter.empty()) scratch += n * (4 + size_of(tensor.output_dtype));
    }
    const std::size_t working = tensor.input_bytes + tensor.output_bytes() + largest_output + scratch;
    if (working > job.peak_bytes) {
      job.peak_bytes = working;
      job.peak_tensor = tensor.name;
    }
  }
  // Write order: as the safetensors writer aligns them (wider dtypes first, else as read).
  std::vector<tensor_spec> specs = job.output_specs();
  order_for_alignment(specs);
  std::map<std::string, planned_tensor, std::less<>> by_name;
  for (auto& t : job.plan.tensors) by_name.emplace(t.name, std::move(t));
  job.plan.tensors.clear();
  for (const auto& spec : specs) job.plan.tensors.push_back(std::move(by_name.at(spec.name)));
  return job;
}

// The files a merged model takes from its base (or first model): configuration and tokenizer.
inline const std::vector<std::string_view>& carried_file_names() {
  static const std::vector<std::string_view> names{
      "config.json",          "generation_config.json", "tokenizer.json",     "tokenizer_config.json",
      "special_tokens_map.json", "tokenizer.model",     "vocab.json",         "merges.txt",
      "vocab.txt",            "added_tokens.json",      "spiece.model",       "chat_template.jinja",
      "chat_template.json",   "preprocessor_config.json"};
  return names;
}

inline std::string model_card(const merge_job& job) {
  std::string card = "---\nlibrary_name: transformers\ntags:\n- alloy\n- merge\n---\n# Merged model\n\n";
  card += "This model was merged with alloy-merge using the **" + job.config.method + "** method";
  card += job.base != nullptr ? " with " + job.base->reference().text() + " as the base.\n\n" : ".\n\n";
  card += "## Models merged\n\n";
  for (const auto* model : job.models) card += "* " + model->reference().text() + "\n";
  card += "\n## Configuration\n\n```yaml\n" + job.config.source_text;
  if (!job.config.source_text.empty() && job.config.source_text.back() != '\n') card += "\n";
  card += "```\n";
  return card;
}

struct write_options {
  std::filesystem::path output;
  std::size_t max_shard_bytes = 5'000'000'000;
  bool allow_overwrite = false;
  // Called after each tensor with (tensors done, bytes written); throws to stop the merge.
  std::function<void(std::size_t, std::size_t)> progress;
  // Stop at the first NaN or infinity in a tensor read or merged (--check-finite).
  bool check_finite = false;
};

namespace detail {

// The output folder's writer: a staging folder renamed into place by finish_output.
inline void open_writer(std::optional<model_writer>& writer, const merge_job& job, const write_options& options) {
  in_stage(failure_kind::output, [&] {
    writer.emplace(options.output, job.output_specs(),
                   model_write_options{.max_shard_bytes = options.max_shard_bytes, .metadata = {{"format", "pt"}},
                                       .allow_overwrite = options.allow_overwrite});
  });
}

// The carried files (config with the written dtype, tokenizer, generation config), the config as
// written and a model card; then the folder appears under its final name.
inline void finish_output(const merge_job& job, model_writer& writer) {
  in_stage(failure_kind::output, [&] {
    const model_input& source = job.reference();
    // The tokenizer's files: a new vocabulary's, written; else those of the tokenizer source (a
    // model, or the donor), copied; with the chat template set where the config gives one.
    const bool new_vocabulary = job.vocabulary && job.vocabulary->rewrites_tokenizer;
    std::filesystem::path tokenizer_folder = source.folder();
    if (job.config.tokenizer && job.config.tokenizer->source == tokenizer_settings::kind::model) {
      tokenizer_folder = job.vocabulary->output.folder;
    }
    const auto is_tokenizer_file = [](std::string_view name) {
      return name != "config.json" && name != "generation_config.json" && name != "preprocessor_config.json";
    };
    std::error_code ec;
    for (const auto name : carried_file_names()) {
      const std::filesystem::path folder = is_tokenizer_file(name) ? tokenizer_folder : source.folder();
      if (folder.empty()) continue;
      const std::filesystem::path path = folder / name;
      if (!std::filesystem::is_regular_file(path, ec)) continue;
      if (name == "config.json") {
        const std::string contents = in_stage(failure_kind::input, [&] { return output_model_config(job, path); });
        writer.add_file(name, contents);
        continue;
      }
      const bool templated = job.chat_template.has_value();
      if (name == "tokenizer_config.json" && (new_vocabulary || templated)) {
        nlohmann::ordered_json config = in_stage(failure_kind::input, [&] {
          return read_json_file(path, "a tokenizer config", detail::max_tokenizer_bytes);
        });
        if (new_vocabulary) config = output_tokenizer_config(std::move(config), job.vocabulary->output);
        if (templated && config.is_object()) config["chat_template"] = *job.chat_template;
        writer.add_file(name, config.dump(2) + "\n");
        continue;
      }
      if (name == "tokenizer.json" && new_vocabulary) continue;  // written below
      if (name == "chat_template.jinja" && templated) continue;
      if (name == "chat_template.json" && templated) continue;  // the configured template replaces them
      // The slow tokenizer's files describe the old vocabulary: left out with a new one.
      const bool slow = name == "tokenizer.model" || name == "vocab.json" || name == "merges.txt" || name == "vocab.txt" ||
                        name == "added_tokens.json" || name == "spiece.model";
      if (slow && new_vocabulary) continue;
      writer.copy_file(path, name);
    }
    if (new_vocabulary) writer.add_file("tokenizer.json", job.vocabulary->output.document.dump(2) + "\n");
    if (job.chat_template) writer.add_file("chat_template.jinja", *job.chat_template);
    writer.add_file("mergekit_config.yml", job.config.source_text);
    writer.add_file("README.md", model_card(job));
    writer.commit();
  });
}

// Where element `flat` sits in a tensor of shape `dims`, as [i, j, ...].
inline std::string element_position(const shape& dims, std::size_t flat) {
  std::vector<std::size_t> position(dims.rank());
  for (std::size_t axis = dims.rank(); axis-- > 0;) {
    const auto extent = static_cast<std::size_t>(dims[axis]);
    position[axis] = flat % extent;
    flat /= extent;
  }
  std::string text = "[";
  for (std::size_t axis = 0; axis < position.size(); ++axis) text += (axis ? ", " : "") + std::to_string(position[axis]);
  return text + "]";
}

// Fails, naming `what`, the tensor and the element, if `view` holds a NaN or an infinity.
inline void require_finite(const cpu_backend& backend, const_tensor_view view, const std::string& what,
                           const std::string& tensor) {
  const std::optional<std::size_t> at = first_non_finite(backend, view);
  if (!at) return;
  const bool readable = view.dtype() == dtype::f64 || view.dtype() == dtype::f32 || view.dtype() == dtype::f16 ||
                        view.dtype() == dtype::bf16;  // 8-bit floats: said by their bits only
  const float value = readable ? load_as_float(view, *at) : std::nanf("");
  alloy::fail(error_code::format, what, ": tensor ", alloy::quoted{tensor}, " holds ",
                      !readable ? "a NaN or infinity" : std::isnan(value) ? "NaN" : value > 0 ? "+inf" : "-inf",
                      " at element ", element_position(view.shape(), *at), " (flat index ", *at, "; --check-finite)");
}

// --check-finite, after: finite inputs can still merge to an infinity (a weight sum beyond the
// output dtype's range, e.g. 65504 in float16).
inline void require_finite_output(const cpu_backend& backend, const_tensor_view merged, const planned_tensor& tensor) {
  require_finite(backend, merged, "the merged result in " + std::string(name(tensor.output_dtype)) +
                                      " (from finite inputs)", tensor.name);
}

}  // namespace detail

// The job's inputs as the executor reads them: views of the mapped files (LoRA adapters folded in
// on first access), checked for NaN and infinity with --check-finite, released once the tensor is
// written so that resident memory stays a few tensors.
class input_source {
 public:
  input_source(const merge_job& job, const cpu_backend& backend, bool check_finite)
      : job_(&job), backend_(&backend), check_finite_(check_finite) {}

  void read(const planned_tensor& tensor, tensor_inputs& out) const {
    in_stage(failure_kind::input, [&] {
      gather_inputs(tensor, out, [&](const tensor_source& source) { return job_->sources[source.input]->view(source.tensor); });
      if (check_finite_) {
        if (tensor.base) detail::require_finite(*backend_, *out.base, "base model " + label(*tensor.base), tensor.base->tensor);
        for (std::size_t i = 0; i < out.models.size(); ++i) {
          detail::require_finite(*backend_, out.models[i], "model " + label(tensor.models[i]), tensor.models[i].tensor);
        }
      }
      if (tensor.merged() && job_->vocabulary_tensors.contains(tensor.name)) lay_out_vocabulary(tensor, out);
    });
  }
  void release(const planned_tensor& tensor) const {
    if (tensor.base) job_->sources[tensor.base->input]->release(tensor.base->tensor);
    for (const auto& source : tensor.models) job_->sources[source.input]->release(source.tensor);
  }
  void prefetch(const planned_tensor& tensor) const {
    if (tensor.base) job_->sources[tensor.base->input]->prefetch(tensor.base->tensor);
    for (const auto& source : tensor.models) job_->sources[source.input]->prefetch(source.tensor);
  }

 private:
  [[nodiscard]] std::string label(const tensor_source& source) const {
    return job_->sources[source.input]->reference().text();
  }

  // Every reader's vocabulary matrix in the output's token order (f32, held until the next read).
  void lay_out_vocabulary(const planned_tensor& tensor, tensor_inputs& out) const {
    std::vector<const tensor_source*> sources;
    std::vector<const_tensor_view*> views;
    if (tensor.base) {
      sources.push_back(&*tensor.base);
      views.push_back(&*out.base);
    }
    for (std::size_t i = 0; i < tensor.models.size(); ++i) {
      sources.push_back(&tensor.models[i]);
      views.push_back(&out.models[i]);
    }
    std::vector<std::size_t> model_of;
    std::vector<const_tensor_view> originals;
    for (std::size_t i = 0; i < sources.size(); ++i) {
      const model_input* input = job_->sources[sources[i]->input];
      const auto at = std::find(job_->vocabulary_inputs.begin(), job_->vocabulary_inputs.end(), input);
      model_of.push_back(static_cast<std::size_t>(at - job_->vocabulary_inputs.begin()));
      originals.push_back(*views[i]);
    }
    laid_out_ = permute_vocabulary_rows(*job_->vocabulary, model_of, originals, tensor.name);
    for (std::size_t i = 0; i < views.size(); ++i) *views[i] = const_tensor_view(std::span<const float>(laid_out_[i]), tensor.dims);
  }

  const merge_job* job_;
  const cpu_backend* backend_;
  bool check_finite_;
  mutable std::vector<std::vector<float>> laid_out_;
};

// Each merged tensor into one of two host buffers (page_buffer: huge pages where offered), handed
// to a thread that writes it (the writer shards and aligns it) while the next tensor is merged
// into the other: the copy into the page cache and the disk's writeback overlap the merge's
// compute, for the memory of one more output tensor. Writes keep the plan's order; an error of the writing thread is rethrown here, at the
// next commit or at finish.
class writer_sink {
 public:
  writer_sink(model_writer& writer, const cpu_backend& backend, const write_options& options)
      : writer_(&writer), backend_(&backend), options_(&options), thread_([this] { write_queued(); }) {}
  writer_sink(const writer_sink&) = delete;
  writer_sink& operator=(const writer_sink&) = delete;
  ~writer_sink() {
    {
      const std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }

  tensor_view output(const planned_tensor& tensor) {
    page_buffer& buffer = buffers_[filling_];
    buffer.reserve(tensor.output_bytes());
    return {buffer.data(), tensor.output_dtype, tensor.dims};
  }
  void commit(const planned_tensor& tensor) {
    const const_tensor_view result(buffers_[filling_].data(), tensor.output_dtype, tensor.dims);
    in_stage(failure_kind::input, [&] {
      if (options_->check_finite) detail::require_finite_output(*backend_, result, tensor);
    });
    wait_until_written();  // the other buffer is free again
    {
      const std::lock_guard lock(mutex_);
      queued_ = queued_tensor{tensor.name, result};
    }
    changed_.notify_all();
    filling_ ^= 1u;
  }
  // Waits for the last write; rethrows its error.
  void finish() { wait_until_written(); }

 private:
  struct queued_tensor {
    std::string name;
    const_tensor_view value;
  };

  void wait_until_written() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !queued_; });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    if (written_count_ != reported_) {
      reported_ = written_count_;
      const std::size_t count = written_count_, bytes = written_bytes_;
      lock.unlock();
      if (options_->progress) options_->progress(count, bytes);
    }
  }

  void write_queued() {
    std::unique_lock lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return queued_ || stopping_; });
      if (!queued_) return;
      const queued_tensor job = *queued_;
      lock.unlock();
      std::exception_ptr failure;
      try {
        in_stage(failure_kind::output, [&] { writer_->write(job.name, job.value); });
      } catch (...) {
        failure = std::current_exception();
      }
      lock.lock();
      if (failure && !error_) error_ = failure;
      ++written_count_;
      written_bytes_ += job.value.byte_size();
      queued_.reset();
      changed_.notify_all();
    }
  }

  model_writer* writer_;
  const cpu_backend* backend_;
  const write_options* options_;
  page_buffer buffers_[2];
  unsigned filling_ = 0;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<queued_tensor> queued_;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::size_t written_count_ = 0;
  std::size_t written_bytes_ = 0;
  std::size_t reported_ = 0;
  std::thread thread_;  // last: it starts once everything it reads exists
};

// --check-finite --dry-run: reads every input tensor the merge would read, without merging.
// `progress` is called as write_options::progress is (bytes: the output's that were checked).
inline void check_inputs_finite(const merge_job& job, const cpu_backend& backend,
                                const std::function<void(std::size_t, std::size_t)>& progress = {}) {
  const input_source source(job, backend, /*check_finite=*/true);
  tensor_inputs views;
  std::size_t checked = 0;
  for (std::size_t index = 0; index < job.plan.tensors.size(); ++index) {
    const planned_tensor& tensor = job.plan.tensors[index];
    source.read(tensor, views);
    source.release(tensor);
    checked += tensor.output_bytes();
    if (progress) progress(index + 1, checked);
  }
}

// Merges and writes. The folder appears under its final name only when complete.
inline void run_merge(const merge_job& job, const cpu_backend& backend, const write_options& options) {
  std::optional<model_writer> writer;
  detail::open_writer(writer, job, options);
  input_source source(job, backend, options.check_finite);
  {
    writer_sink sink(*writer, backend, options);
    in_stage(failure_kind::input, [&] { execute(job.plan, backend, source, sink); });
    sink.finish();
  }
  detail::finish_output(job, *writer);
}

}  // namespace alloy::tools
