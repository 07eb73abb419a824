#pragma once
// The merge config alloy-merge reads: mergekit's YAML, for the methods alloy implements.
//
//   merge_method: ties                     # a method of alloy's registry
//   base_model: path/to/base               # a folder, a .safetensors file, or path+adapter
//   models:
//     - model: path/to/math
//       parameters: {weight: 0.6, density: [1, 0.5]}
//   parameters: {normalize: true}          # method parameters, and defaults for every model
//   dtype: bfloat16                        # output dtype unless out_dtype says otherwise
//   out_dtype: float16
//   tokenizer_source: union                # or base, or a model; or a tokenizer: section
//   chat_template: chatml                  # a template, a name mergekit ships, or auto
//
// or, instead of models, mergekit's slices (layer ranges stacked into the output's layers):
//
//   slices:
//     - sources:
//         - {model: path/to/a, layer_range: [0, 24], parameters: {...}}
//       base_model: path/to/a                # optional, per slice
//       parameters: {t: [0, 1]}              # between the sources' and the top level's
//
// or mergekit's modules (each module's models or slices; see alloy/merge/module_plan.hpp):
//
//   modules:
//     text_decoder: {slices: [...], parameters: {...}}
//     vision_tower: {models: [...]}
//
// Every key is checked: an unknown key is refused with its path, as are parameters the method
// does not define and values outside their range. Errors are alloy::error with code invalid_argument and a message that starts with
// the key's path.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "alloy/alloy.hpp"

namespace alloy::tools {

// A model as mergekit names it: a path, optionally with a PEFT LoRA adapter ("path+adapter").
struct model_reference {
  std::string model;
  std::string adapter;

  [[nodiscard]] std::string text() const { return adapter.empty() ? model : model + "+" + adapter; }
  friend bool operator==(const model_reference&, const model_reference&) = default;
};

struct model_entry {
  model_reference reference;
  parameter_map parameters;
};

// mergekit's `slices`: layer ranges of the inputs stacked into the output's layers.
struct slice_source_entry {
  model_reference reference;
  std::size_t first_layer = 0;
  std::size_t end_layer = 0;  // one past the last (layer_range is half-open)
  parameter_map parameters;
};

struct slice_entry {
  std::vector<slice_source_entry> sources;
  std::optional<model_reference> base_model;  // this slice's; none: the config's
  parameter_map parameters;
};

// How an output token's embedding row is made where a model lacks the token, or always with
// `force` (mergekit's TokenEmbeddingConfig): another model's row of the same token, a zero row,
// or a given row (by token or id) of a given model.
struct token_embedding_rule {
  enum class kind : std::uint8_t { model, zero, model_token };
  kind source = kind::model;
  model_reference model;       // kind::model, kind::model_token
  std::string token;           // kind::model_token: the source token, or
  std::optional<std::int64_t> token_id;  // its id
  bool force = false;          // every model takes this row, even where it has the token
};

// mergekit's tokenizer_source / tokenizer: the output vocabulary and how the embeddings follow it.
struct tokenizer_settings {
  enum class kind : std::uint8_t { base, union_of_models, model };
  kind source = kind::base;
  model_reference model;  // kind::model
  std::vector<std::pair<std::string, token_embedding_rule>> tokens;  // in config order; also added to the vocabulary
  std::optional<std::size_t> pad_to_multiple_of;
};

// mergekit's `modules`: one part of the model (a vision tower, a language model), merged on its own.
struct module_entry {
  std::string name;                          // the key: mergekit's module name
  std::optional<std::string> weight_prefix;  // alloy's: the module's tensor names start with it
  std::vector<model_entry> models;           // either models
  std::vector<slice_entry> slices;           // or slices
  parameter_map parameters;
};

struct merge_config {
  std::string method;
  std::optional<model_reference> base_model;
  std::vector<model_entry> models;   // a whole-model merge, or
  std::vector<slice_entry> slices;   // mergekit's slices, or
  std::vector<module_entry> modules;  // mergekit's modules (exactly one of the three is given)
  parameter_map parameters;
  std::optional<dtype> compute_dtype;  // mergekit's `dtype`
  std::optional<dtype> out_dtype;
  // tokenizer_source or tokenizer given: the output vocabulary is built and every model's
  // embeddings are permuted into it (mergekit); none: the donor's tokenizer files are copied.
  std::optional<tokenizer_settings> tokenizer;
  std::optional<std::string> chat_template;  // a template, a name mergekit ships, or "auto"
  std::string source_text;             // the YAML as written, kept with the merged model

  // Every model the config names (the base first), each once.
  [[nodiscard]] std::vector<model_reference> referenced_models() const {
    std::vector<model_reference> references;
    const auto add = [&](const model_reference& reference) {
      if (std::find(references.begin(), references.end(), reference) == references.end()) references.push_back(reference);
    };
    if (base_model) add(*base_model);
    const auto add_slices = [&](const std::vector<slice_entry>& list) {
      for (const auto& slice : list) {
        if (slice.base_model) add(*slice.base_model);
        for (const auto& source : slice.sources) add(source.reference);
      }
    };
    for (const auto& entry : models) add(entry.reference);
    add_slices(slices);
    for (const auto& module : modules) {
      for (const auto& entry : module.models) add(entry.reference);
      add_slices(module.slices);
    }
    return references;
  }
  // The models that are read but not merged: a tokenizer source outside the merge.
  [[nodiscard]] std::vector<model_reference> tokenizer_only_models() const {
    std::vector<model_reference> extra;
    if (tokenizer && tokenizer->source == tokenizer_settings::kind::model) {
      const auto merged = referenced_models();
      if (std::find(merged.begin(), merged.end(), tokenizer->model) == merged.end()) extra.push_back(tokenizer->model);
    }
    return extra;
  }
};

namespace detail {

[[noreturn]] inline void config_fail(std::string_view path, const std::string& message) {
  alloy::fail(error_code::invalid_argument, path, ": ", message);
}

inline std::string describe_node(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Scalar: return "'" + node.Scalar() + "'";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    default: return "an undefined value";
  }
}

inline std::string child_path(std::string_view parent, std::string_view key) {
  return parent.empty() ? std::string(key) : std::string(parent) + "." + std::string(key);
}

// The keys of a mapping, each once; a key written twice is an error (YAML forbids it, and
// yaml-cpp would silently keep one of them).
inline std::vector<std::pair<std::string, YAML::Node>> mapping_entries(const YAML::Node& node, std::string_view path) {
  if (!node.IsMap()) config_fail(path.empty() ? "the config" : path, "expected a mapping, got " + describe_node(node));
  std::vector<std::pair<std::string, YAML::Node>> entries;
  std::set<std::string> seen;
  for (const auto& item : node) {
    if (!item.first.IsScalar()) config_fail(path.empty() ? "the config" : path, "a key is not a plain name");
    std::string key = item.first.Scalar();
    if (!seen.insert(key).second) config_fail(child_path(path, key), "the key is written twice");
    entries.emplace_back(std::move(key), item.second);
  }
  return entries;
}

inline std::string scalar_text(const YAML::Node& node, std::string_view path) {
  if (!node.IsScalar()) config_fail(path, "expected text, got " + describe_node(node));
  return node.Scalar();
}

// A number as YAML writes it; booleans (true/false, as mergekit's normalize: true) are 1 and 0.
inline double number(const YAML::Node& node, std::string_view path) {
  if (!node.IsScalar()) config_fail(path, "expected a number, got " + describe_node(node));
  const std::string& text = node.Scalar();
  if (text == "true" || text == "True" || text == "TRUE") return 1.0;
  if (text == "false" || text == "False" || text == "FALSE") return 0.0;
  double value = 0;
  if (!YAML::convert<double>::decode(node, value)) config_fail(path, "expected a number, got '" + text + "'");
  if (!std::isfinite(value)) config_fail(path, "'" + text + "' is not a finite number");
  return value;
}

inline std::vector<double> scalar_or_gradient(const YAML::Node& node, std::string_view path) {
  if (node.IsSequence()) {
    if (node.size() == 0) config_fail(path, "a gradient needs at least one value");
    std::vector<double> values;
    for (std::size_t i = 0; i < node.size(); ++i) values.push_back(number(node[i], std::string(path) + "[" + std::to_string(i) + "]"));
    return values;
  }
  return {number(node, path)};
}

inline parameter_setting::condition condition_of(const YAML::Node& node, std::string_view path) {
  parameter_setting::condition condition;
  bool has_value = false;
  for (const auto& [key, value] : mapping_entries(node, path)) {
    if (key == "filter") {
      if (!value.IsNull()) condition.filter = scalar_text(value, child_path(path, key));
    } else if (key == "value") {
      condition.value = scalar_or_gradient(value, child_path(path, key));
      has_value = true;
    } else {
      config_fail(child_path(path, key), "unknown key in a conditional parameter (it takes filter and value)");
    }
  }
  if (!has_value) config_fail(path, "a conditional parameter needs a value");
  return condition;
}

// A parameter as mergekit writes it: a scalar, a gradient, one {filter, value}, or a list of them.
inline parameter_setting setting_of(const YAML::Node& node, std::string_view path) {
  if (node.IsMap()) return parameter_setting::conditional({condition_of(node, path)});
  if (node.IsSequence() && node.size() > 0 && node[0].IsMap()) {
    std::vector<parameter_setting::condition> conditions;
    for (std::size_t i = 0; i < node.size(); ++i) {
      const std::string item = std::string(path) + "[" + std::to_string(i) + "]";
      if (!node[i].IsMap()) config_fail(item, "expected {filter, value} like the other entries, got " + describe_node(node[i]));
      conditions.push_back(condition_of(node[i], item));
    }
    return parameter_setting::conditional(std::move(conditions));
  }
  const std::vector<double> values = scalar_or_gradient(node, path);
  return values.size() == 1 ? parameter_setting(values.front()) : parameter_setting::gradient(values);
}

inline std::string parameter_names(const method_definition& def) {
  std::string names;
  for (const auto& p : def.parameters) names += (names.empty() ? "" : ", ") + std::string(p.name);
  return names;
}

inline parameter_map parameters_of(const YAML::Node& node, std::string_view path, const method_definition& def,
                                   bool model_level) {
  parameter_map map;
  if (node.IsNull()) return map;
  for (const auto& [key, value] : mapping_entries(node, path)) {
    const std::string where = child_path(path, key);
    const parameter_definition* p = def.find(key);
    if (p == nullptr) {
      config_fail(where, std::string(def.name) + " has no parameter '" + key + "' (its parameters: " +
                             parameter_names(def) + ")");
    }
    if (model_level && p->where == parameter_definition::scope::method) {
      config_fail(where, "'" + key + "' applies to the whole merge; set it in the top-level parameters");
    }
    if (p->type == parameter_definition::kind::choice) {
      const std::string word = scalar_text(value, where);
      if (!p->accepts(word)) config_fail(where, "'" + word + "' is not " + p->expected());
      map.emplace(key, parameter_setting(word));
      continue;
    }
    parameter_setting setting = setting_of(value, where);
    for (double v : setting.all_values()) {
      if (!p->accepts(v)) {
        std::ostringstream message;
        if (v < p->minimum || v > p->maximum) {
          message << v << " is outside the range of " << key << ", [" << p->minimum << ", " << p->maximum << "]";
        } else {
          message << v << " is not valid for " << key << ": it must be " << p->expected();
        }
        config_fail(where, message.str());
      }
    }
    map.emplace(key, std::move(setting));
  }
  return map;
}

inline std::string path_of(const YAML::Node& node, std::string_view path) {
  if (node.IsScalar()) return node.Scalar();
  if (node.IsMap()) {
    for (const auto& [key, value] : mapping_entries(node, path)) {
      if (key == "path") return scalar_text(value, child_path(path, key));
      if (key != "revision" || !value.IsNull()) {
        config_fail(child_path(path, key), "alloy-merge reads local paths only ({path: ...})");
      }
    }
  }
  config_fail(path, "expected a path, got " + describe_node(node));
}

// "path", "path+adapter", or mergekit's expanded form {model: {path: ...}, lora: {path: ...}}.
inline model_reference reference_of(const YAML::Node& node, std::string_view path) {
  model_reference reference;
  if (node.IsScalar()) {
    const std::string& text = node.Scalar();
    const auto plus = text.find('+');
    reference.model = text.substr(0, plus);
    if (plus != std::string::npos) reference.adapter = text.substr(plus + 1);
    if (plus != std::string::npos && reference.adapter.empty()) config_fail(path, "'" + text + "' has an empty adapter after '+'");
  } else if (node.IsMap()) {
    for (const auto& [key, value] : mapping_entries(node, path)) {
      if (key == "model") {
        reference.model = path_of(value, child_path(path, key));
      } else if (key == "lora") {
        if (!value.IsNull()) reference.adapter = path_of(value, child_path(path, key));
      } else if (key != "override_architecture" || !value.IsNull()) {
        config_fail(child_path(path, key), "is not supported in a model reference (use model and lora)");
      }
    }
  } else {
    config_fail(path, "expected a model path, got " + describe_node(node));
  }
  if (reference.model.empty()) config_fail(path, "the model path is empty");
  return reference;
}

inline dtype dtype_of(const YAML::Node& node, std::string_view path) {
  const std::string text = scalar_text(node, path);
  std::optional<dtype> type = parse_dtype(text);
  if (text == "fp32") type = dtype::f32;
  if (text == "fp16") type = dtype::f16;
  if (!type || !is_mergeable(*type)) config_fail(path, "'" + text + "' is not one of float32, float16, bfloat16");
  return *type;
}

// A whole number >= 0 (a layer index).
inline std::size_t layer_number(const YAML::Node& node, std::string_view path) {
  const double value = number(node, path);
  if (value < 0 || value != std::floor(value) || value > 1e9) config_fail(path, "expected a layer number (0, 1, ...)");
  return static_cast<std::size_t>(value);
}

// slices: [{sources: [{model, layer_range: [first, end], parameters}], base_model, parameters,
// residual_weight}], as mergekit's OutputSliceDefinition (residual_weight is declared there and
// read by nothing; accepted and ignored alike).
inline std::vector<slice_entry> slices_of(const YAML::Node& node, const std::string& list_path, const method_definition& def) {
  if (!node.IsSequence()) config_fail(list_path, "expected a list, got " + describe_node(node));
  if (node.size() == 0) config_fail(list_path, "the list is empty");
  std::vector<slice_entry> slices;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const std::string path = list_path + "[" + std::to_string(i) + "]";
    slice_entry slice;
    bool has_sources = false;
    for (const auto& [key, value] : mapping_entries(node[i], path)) {
      const std::string where = child_path(path, key);
      if (key == "sources") {
        if (!value.IsSequence() || value.size() == 0) config_fail(where, "expected a list of sources, got " + describe_node(value));
        for (std::size_t s = 0; s < value.size(); ++s) {
          const std::string at = where + "[" + std::to_string(s) + "]";
          slice_source_entry source;
          bool has_model = false, has_range = false;
          for (const auto& [source_key, source_value] : mapping_entries(value[s], at)) {
            const std::string field = child_path(at, source_key);
            if (source_key == "model") {
              source.reference = reference_of(source_value, field);
              has_model = true;
            } else if (source_key == "layer_range") {
              if (!source_value.IsSequence() || source_value.size() != 2) {
                config_fail(field, "expected [first, end] (half-open, as mergekit), got " + describe_node(source_value));
              }
              source.first_layer = layer_number(source_value[0], field + "[0]");
              source.end_layer = layer_number(source_value[1], field + "[1]");
              has_range = true;
            } else if (source_key == "parameters") {
              source.parameters = parameters_of(source_value, field, def, true);
            } else {
              config_fail(field, "unknown key in a slice source (it takes model, layer_range and parameters)");
            }
          }
          if (!has_model) config_fail(at, "has no model");
          if (!has_range) config_fail(at, "has no layer_range");
          slice.sources.push_back(std::move(source));
        }
        has_sources = true;
      } else if (key == "base_model") {
        if (!value.IsNull()) slice.base_model = reference_of(value, where);
      } else if (key == "parameters") {
        slice.parameters = parameters_of(value, where, def, false);
      } else if (key == "residual_weight") {
        if (!value.IsNull()) (void)number(value, where);
      } else {
        config_fail(where, "unknown key in a slice (it takes sources, base_model, parameters)");
      }
    }
    if (!has_sources) config_fail(path, "has no sources");
    slices.push_back(std::move(slice));
  }
  return slices;
}

// models: [{model, parameters}], each model once.
inline std::vector<model_entry> models_of(const YAML::Node& node, const std::string& list_path, const method_definition& def) {
  if (!node.IsSequence()) config_fail(list_path, "expected a list, got " + describe_node(node));
  if (node.size() == 0) config_fail(list_path, "the list is empty");
  std::vector<model_entry> models;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const std::string path = list_path + "[" + std::to_string(i) + "]";
    model_entry entry;
    bool has_model = false;
    for (const auto& [key, value] : mapping_entries(node[i], path)) {
      if (key == "model") {
        entry.reference = reference_of(value, path + ".model");
        has_model = true;
      } else if (key == "parameters") {
        entry.parameters = parameters_of(value, path + ".parameters", def, true);
      } else {
        config_fail(path + "." + key, "unknown key in a model entry (it takes model and parameters)");
      }
    }
    if (!has_model) config_fail(path, "has no model");
    for (const auto& earlier : models) {
      if (earlier.reference == entry.reference) config_fail(path, "'" + entry.reference.text() + "' is listed twice");
    }
    models.push_back(std::move(entry));
  }
  return models;
}

// modules: {name: {models | slices, parameters, weight_prefix}}, as mergekit's OutputModuleDefinition
// (weight_prefix is alloy's: where a module's tensors are when its name does not say it).
inline std::vector<module_entry> modules_of(const YAML::Node& node, const method_definition& def) {
  if (!node.IsMap()) config_fail("modules", "expected a mapping of module names to modules, got " + describe_node(node));
  std::vector<module_entry> modules;
  for (const auto& [name, value] : mapping_entries(node, "modules")) {
    const std::string path = child_path("modules", name);
    if (name.empty()) config_fail(path, "a module needs a name");
    module_entry module;
    module.name = name;
    for (const auto& [key, field] : mapping_entries(value, path)) {
      const std::string where = child_path(path, key);
      if (key == "models") {
        module.models = models_of(field, where, def);
      } else if (key == "slices") {
        module.slices = slices_of(field, where, def);
      } else if (key == "parameters") {
        module.parameters = parameters_of(field, where, def, false);
      } else if (key == "weight_prefix") {
        module.weight_prefix = scalar_text(field, where);
        if (module.weight_prefix->empty()) config_fail(where, "is empty");
      } else {
        config_fail(where, "unknown key in a module (it takes models or slices, parameters, weight_prefix)");
      }
    }
    if (module.models.empty() == module.slices.empty()) {
      config_fail(path, module.models.empty() ? "has neither models nor slices (give one of the two, as mergekit)"
                                              : "has both models and slices (give one of the two, as mergekit)");
    }
    modules.push_back(std::move(module));
  }
  if (modules.empty()) config_fail("modules", "no modules given");
  return modules;
}

}  // namespace detail

// A merge config is a few hundred bytes; anything near this size is not one. (YAML aliases let a
// small file name a huge tree; the reader walks only the keys it knows, never a whole tree.)
inline constexpr std::size_t max_config_bytes = 1 << 20;

namespace detail {

// tokenizer_source: base | union | a model.
inline tokenizer_settings tokenizer_source_of(const YAML::Node& node, std::string_view path) {
  tokenizer_settings settings;
  const std::string text = scalar_text(node, path);
  if (text == "base") {
    settings.source = tokenizer_settings::kind::base;
  } else if (text == "union") {
    settings.source = tokenizer_settings::kind::union_of_models;
  } else {
    settings.source = tokenizer_settings::kind::model;
    settings.model = reference_of(node, path);
  }
  return settings;
}

// One entry of tokenizer.tokens: {source: MODEL | {kind: zero} | {kind: model_token, model, token
// | token_id}, force}.
inline token_embedding_rule token_rule_of(const YAML::Node& node, std::string_view path) {
  token_embedding_rule rule;
  bool has_source = false;
  for (const auto& [key, value] : mapping_entries(node, path)) {
    const std::string where = child_path(path, key);
    if (key == "force") {
      rule.force = number(value, where) != 0.0;
    } else if (key == "source") {
      has_source = !value.IsNull();
      if (value.IsScalar()) {
        rule.source = token_embedding_rule::kind::model;
        rule.model = reference_of(value, where);
        continue;
      }
      std::string kind;
      bool has_model = false;
      for (const auto& [field, item] : mapping_entries(value, where)) {
        const std::string at = child_path(where, field);
        if (field == "kind") {
          kind = scalar_text(item, at);
        } else if (field == "model") {
          rule.model = reference_of(item, at);
          has_model = true;
        } else if (field == "token") {
          rule.token = scalar_text(item, at);
        } else if (field == "token_id") {
          const double id = number(item, at);
          if (id < 0 || id != std::floor(id) || id > 9.0e15) config_fail(at, "expected a token id (a whole number >= 0)");
          rule.token_id = static_cast<std::int64_t>(id);
        } else {
          config_fail(at, "unknown key in a token source (it takes kind, model, token, token_id)");
        }
      }
      if (kind == "zero") {
        rule.source = token_embedding_rule::kind::zero;
      } else if (kind == "model_token") {
        rule.source = token_embedding_rule::kind::model_token;
        if (!has_model) config_fail(where, "a model_token source needs a model");
        if (rule.token.empty() == !rule.token_id.has_value()) {
          config_fail(where, "a model_token source takes exactly one of token and token_id");
        }
      } else {
        config_fail(child_path(where, "kind"), "expected zero or model_token, got '" + kind + "'");
      }
    } else {
      config_fail(where, "unknown key in a token's embedding (it takes source and force)");
    }
  }
  if (!has_source) config_fail(path, "a token's embedding needs a source (a model, {kind: zero} or {kind: model_token, ...})");
  return rule;
}

// mergekit's tokenizer section: {source (default union), tokens, pad_to_multiple_of}.
inline tokenizer_settings tokenizer_section_of(const YAML::Node& node) {
  tokenizer_settings settings;
  settings.source = tokenizer_settings::kind::union_of_models;
  for (const auto& [key, value] : mapping_entries(node, "tokenizer")) {
    const std::string where = child_path("tokenizer", key);
    if (key == "source") {
      const tokenizer_settings source = tokenizer_source_of(value, where);
      settings.source = source.source;
      settings.model = source.model;
    } else if (key == "tokens") {
      if (value.IsNull()) continue;
      for (const auto& [token, rule] : mapping_entries(value, where)) {
        settings.tokens.emplace_back(token, token_rule_of(rule, child_path(where, token)));
      }
    } else if (key == "pad_to_multiple_of") {
      if (value.IsNull()) continue;
      const double multiple = number(value, where);
      if (multiple < 1 || multiple != std::floor(multiple) || multiple > 65536) {
        config_fail(where, "expected a whole number in [1, 65536]");
      }
      settings.pad_to_multiple_of = static_cast<std::size_t>(multiple);
    } else {
      config_fail(where, "unknown key in tokenizer (it takes source, tokens, pad_to_multiple_of)");
    }
  }
  return settings;
}

}  // namespace detail


// Reads a config from YAML text; `source` names it in messages (a file name).
inline merge_config parse_merge_config(const std::string& text, std::string_view source = "the config") {
  if (text.size() > max_config_bytes) {
    alloy::fail(error_code::limit, source, ": ", text.size(), " bytes is too large for a merge config (limit ",
                        max_config_bytes, " bytes)");
  }
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    alloy::fail(error_code::invalid_argument, source, ": not valid YAML at line ", e.mark.line + 1,
                        ", column ", e.mark.column + 1, ": ", e.msg);
  }
  if (!root.IsMap()) {
    alloy::fail(error_code::invalid_argument, source, ": expected a mapping with merge_method and models, got ",
                        detail::describe_node(root));
  }
  merge_config config;
  config.source_text = text;
  const auto entries = detail::mapping_entries(root, "");
  const auto find = [&](std::string_view key) -> const YAML::Node* {
    for (const auto& [k, v] : entries) {
      if (k == key) return &v;
    }
    return nullptr;
  };
  for (const auto& [key, value] : entries) {
    static const std::set<std::string, std::less<>> known{"merge_method", "base_model",       "models",
                                                          "slices",       "modules",          "parameters",
                                                          "dtype",        "out_dtype",        "tokenizer_source",
                                                          "tokenizer",    "chat_template"};
    if (!known.contains(key)) {
      detail::config_fail(key, "unknown key (alloy-merge reads merge_method, base_model, models, slices, modules, "
                               "parameters, dtype, out_dtype, tokenizer_source, tokenizer, chat_template)");
    }
  }

  const YAML::Node* method = find("merge_method");
  if (method == nullptr) detail::config_fail("merge_method", "is missing");
  config.method = detail::scalar_text(*method, "merge_method");
  const method_definition* def = nullptr;
  for (const auto& candidate : merge_methods()) {
    if (candidate.name == config.method) def = &candidate;
  }
  if (def == nullptr) {
    std::string names;
    for (const auto& candidate : merge_methods()) names += (names.empty() ? "" : ", ") + std::string(candidate.name);
    detail::config_fail("merge_method", "unknown method '" + config.method + "' (alloy-merge implements " + names + ")");
  }

  if (const YAML::Node* base = find("base_model"); base != nullptr && !base->IsNull()) {
    config.base_model = detail::reference_of(*base, "base_model");
  }
  const YAML::Node* models = find("models");
  const YAML::Node* slices = find("slices");
  const YAML::Node* modules = find("modules");
  const int layouts = (models != nullptr ? 1 : 0) + (slices != nullptr ? 1 : 0) + (modules != nullptr ? 1 : 0);
  if (layouts > 1) {
    detail::config_fail(modules != nullptr ? "modules" : "slices",
                        "a config gives exactly one of models (whole models), slices (layer ranges) and modules "
                        "(per-module models or slices), as mergekit");
  }
  if (slices != nullptr) {
    config.slices = detail::slices_of(*slices, "slices", *def);
  } else if (modules != nullptr) {
    config.modules = detail::modules_of(*modules, *def);
  } else if (models == nullptr || models->IsNull()) {
    detail::config_fail("models", "is missing: list the models to merge (or give slices or modules)");
  } else {
    config.models = detail::models_of(*models, "models", *def);
  }
  if (const YAML::Node* parameters = find("parameters")) {
    config.parameters = detail::parameters_of(*parameters, "parameters", *def, false);
  }
  if (const YAML::Node* type = find("dtype"); type != nullptr && !type->IsNull()) {
    config.compute_dtype = detail::dtype_of(*type, "dtype");
  }
  if (const YAML::Node* type = find("out_dtype"); type != nullptr && !type->IsNull()) {
    config.out_dtype = detail::dtype_of(*type, "out_dtype");
  }
  const YAML::Node* tokenizer_source = find("tokenizer_source");
  const YAML::Node* tokenizer = find("tokenizer");
  if (tokenizer_source != nullptr && !tokenizer_source->IsNull() && tokenizer != nullptr && !tokenizer->IsNull()) {
    detail::config_fail("tokenizer", "a config gives tokenizer_source or a tokenizer section, not both (as mergekit)");
  }
  if (tokenizer_source != nullptr && !tokenizer_source->IsNull()) {
    config.tokenizer = detail::tokenizer_source_of(*tokenizer_source, "tokenizer_source");
  } else if (tokenizer != nullptr && !tokenizer->IsNull()) {
    config.tokenizer = detail::tokenizer_section_of(*tokenizer);
  }
  if (const YAML::Node* chat = find("chat_template"); chat != nullptr && !chat->IsNull()) {
    config.chat_template = detail::scalar_text(*chat, "chat_template");
  }
  if (config.tokenizer && config.tokenizer->source != tokenizer_settings::kind::base && config.models.empty()) {
    detail::config_fail(tokenizer_source != nullptr ? "tokenizer_source" : "tokenizer",
                        "building a vocabulary is supported with models:, not with slices or modules (the embeddings "
                        "come from one slice there); use tokenizer_source: base or no tokenizer setting");
  }
  // A method with a base needs one for every merge: the config's, or every slice's own.
  const auto slices_have_base = [](const std::vector<slice_entry>& list) {
    return !list.empty() && std::all_of(list.begin(), list.end(), [](const slice_entry& slice) { return slice.base_model.has_value(); });
  };
  const bool every_merge_has_base =
      slices_have_base(config.slices) ||
      (!config.modules.empty() && std::all_of(config.modules.begin(), config.modules.end(),
                                              [&](const module_entry& module) { return slices_have_base(module.slices); }));
  if (def->needs_base && !config.base_model && !every_merge_has_base) {
    detail::config_fail("base_model", "is missing; " + config.method + " merges task vectors relative to a base model");
  }
  return config;
}

inline merge_config read_merge_config(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    alloy::fail(error_code::invalid_argument, "config ", path.string(), " is a folder, not a YAML file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) alloy::fail(error_code::not_found, "cannot read config ", path.string());
  // Read at most one byte past the cap (the config may be a pipe, whose size is unknown).
  std::string text(max_config_bytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (in.bad()) alloy::fail(error_code::io, "cannot read config ", path.string());
  return parse_merge_config(text, path.string());
}

}  // namespace alloy::tools
