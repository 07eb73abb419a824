#pragma once
// PEFT LoRA adapters folded into a model's weights, as PEFT's merge_and_unload (and mergekit's
// `model+adapter` references) do:
//
//   W' = W + s B A,   s = lora_alpha / r   (lora_alpha / sqrt(r) with use_rslora)
//
// An adapter folder holds adapter_config.json and adapter_model.safetensors, whose tensors are
// named `base_model.model.<module>.lora_A.weight` (r x in) and `...lora_B.weight` (out x r). The
// rank r is read from the tensors, alpha from `alpha_pattern` (a module name suffix) or
// `lora_alpha`. Conv1D layers (`fan_in_fan_out`, GPT-2) and embeddings (`lora_embedding_A/B`)
// store the update transposed. Tensors of `modules_to_save` (saved as
// `base_model.model.<module>.weight`) replace the base's. DoRA and bias updates are refused.
//
// lora_applied_store.hpp shows a base store with an adapter folded in.

#include <cmath>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/core/convert.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/matmul.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/named_store.hpp"
#include "alloy/store/parameter_store.hpp"
#include "alloy/store/safetensors_store.hpp"

namespace alloy {

inline constexpr std::string_view peft_adapter_config_name = "adapter_config.json";
inline constexpr std::string_view peft_adapter_weights_name = "adapter_model.safetensors";

class peft_lora_adapter {
 public:
  // PEFT writes a few hundred bytes; a config near this size is not one.
  static constexpr std::size_t max_config_bytes = 16'000'000;

  // How one base tensor changes.
  struct update {
    std::string a;            // adapter tensor names; empty for a replacement
    std::string b;
    std::string replacement;  // a modules_to_save tensor that replaces the base's
    double scale = 1.0;
    bool transposed = false;  // the update is (B A)^T: Conv1D (fan_in_fan_out) and embeddings
  };

  static peft_lora_adapter open(const std::filesystem::path& folder) {
    namespace fs = std::filesystem;
    const fs::path config_path = folder / peft_adapter_config_name;
    const fs::path weights_path = folder / peft_adapter_weights_name;
    std::error_code ec;
    if (!fs::is_directory(folder, ec)) {
      detail::fail(error_code::not_found, "LoRA adapter ", folder.string(), " is not a folder");
    }
    if (!fs::exists(config_path, ec)) {
      detail::fail(error_code::not_found, "LoRA adapter ", folder.string(), " has no ", peft_adapter_config_name);
    }
    if (!fs::exists(weights_path, ec)) {
      detail::fail(error_code::not_found, "LoRA adapter ", folder.string(), " has no ", peft_adapter_weights_name,
                   " (adapter_model.bin is not read: convert it to safetensors)");
    }
    nlohmann::json config;
    {
      const mapped_file file(config_path);
      if (file.bytes().size() > max_config_bytes) {
        detail::fail(error_code::limit, config_path.string(), ": ", file.bytes().size(),
                     " bytes is too large for an adapter config (limit ", max_config_bytes, " bytes)");
      }
      const auto* text = reinterpret_cast<const char*>(file.bytes().data());
      try {
        config = nlohmann::json::parse(text, text + file.bytes().size());
      } catch (const nlohmann::json::exception& e) {
        detail::fail(error_code::format, config_path.string(), ": not valid JSON: ", e.what());
      }
    }
    return peft_lora_adapter(folder, config, safetensors_store::open_file(weights_path));
  }

  [[nodiscard]] const std::filesystem::path& folder() const noexcept { return folder_; }
  [[nodiscard]] const std::map<std::string, update, std::less<>>& updates() const noexcept { return updates_; }
  [[nodiscard]] const update* find(std::string_view base_name) const {
    const auto it = updates_.find(base_name);
    return it == updates_.end() ? nullptr : &it->second;
  }
  [[nodiscard]] const safetensors_store& tensors() const noexcept { return tensors_; }

  // Checks the adapter against the model it is applied to: every tensor it changes exists, is
  // floating, and has the shape the update produces.
  template <parameter_store Base>
  void check_against(const Base& base, std::string_view base_description) const {
    for (const auto& [name, u] : updates_) {
      const auto target = base.find(name);
      if (!target) {
        detail::fail(error_code::not_found, "LoRA adapter ", folder_.string(), " changes tensor ", detail::quoted{name},
                     ", which ", base_description, " does not have");
      }
      if (!is_mergeable(target->dtype())) {
        detail::fail(error_code::dtype_mismatch, "LoRA adapter ", folder_.string(), " changes tensor ",
                     detail::quoted{name}, " of dtype ", target->dtype(), " in ", base_description);
      }
      const shape produced = update_shape(u);
      if (!(produced == target->shape())) {
        detail::fail(error_code::shape_mismatch, "LoRA adapter ", folder_.string(), ": the update of tensor ",
                     detail::quoted{name}, " has shape ", produced, " but the tensor has shape ", target->shape(),
                     " in ", base_description);
      }
    }
  }

  // Writes the adapted tensor `name` into `output` (the base's shape, any floating dtype):
  // W + s B A computed in f32 and rounded once, the product by the backend's add_scaled_product.
  template <class Backend>
  void apply(const Backend& backend, std::string_view name, const_tensor_view base, tensor_view output) const {
    const update* u = find(name);
    if (u == nullptr) {
      convert(base, output);
      return;
    }
    if (!u->replacement.empty()) {
      convert(tensors_.view(u->replacement), output);
      return;
    }
    const std::vector<float> a = as_f32(tensors_.view(u->a));
    const std::vector<float> b = as_f32(tensors_.view(u->b));
    const shape a_shape = tensors_.view(u->a).shape();
    const shape b_shape = tensors_.view(u->b).shape();
    const auto rank = static_cast<std::size_t>(a_shape[0]);
    // output = W + s L R with L rows x r and R r x cols: (B, A), or (A^T, B^T) when transposed.
    const std::size_t rows = static_cast<std::size_t>(u->transposed ? a_shape[1] : b_shape[0]);
    const std::size_t cols = static_cast<std::size_t>(u->transposed ? b_shape[0] : a_shape[1]);
    std::vector<float> left(rows * rank);
    std::vector<float> right(rank * cols);
    for (std::size_t k = 0; k < rank; ++k) {
      for (std::size_t i = 0; i < rows; ++i) left[i * rank + k] = u->transposed ? a[k * rows + i] : b[i * rank + k];
      for (std::size_t j = 0; j < cols; ++j) right[k * cols + j] = u->transposed ? b[j * rank + k] : a[k * cols + j];
    }
    std::vector<float> result = as_f32(base);
    add_scaled_product(backend, rows, cols, rank, static_cast<float>(u->scale), left.data(), right.data(), result.data());
    convert(const_tensor_view(std::span<const float>(result), base.shape()), output);
  }

  // Lets the pages of the adapter tensors behind `name` leave memory.
  void release(std::string_view name) const {
    if (const update* u = find(name)) {
      for (const std::string* part : {&u->a, &u->b, &u->replacement}) {
        if (!part->empty()) tensors_.release(*part);
      }
    }
  }

 private:
  peft_lora_adapter(std::filesystem::path folder, const nlohmann::json& config, safetensors_store tensors)
      : folder_(std::move(folder)), tensors_(std::move(tensors)) {
    const std::string where = (folder_ / peft_adapter_config_name).string();
    if (!config.is_object()) detail::fail(error_code::format, where, ": expected a JSON object");
    const auto text = [&](const char* key) {
      return config.contains(key) && config[key].is_string() ? config[key].get<std::string>() : std::string();
    };
    if (const std::string type = text("peft_type"); !type.empty() && type != "LORA") {
      detail::fail(error_code::format, where, ": peft_type is ", detail::quoted{type}, "; only LORA adapters are applied");
    }
    const auto flag = [&](const char* key) { return config.contains(key) && config[key].is_boolean() && config[key].get<bool>(); };
    if (flag("use_dora")) detail::fail(error_code::format, where, ": DoRA adapters (use_dora) are not supported");
    // `pattern`: the alpha_pattern key the value belongs to, if any (a name from the file).
    const auto number = [&](const nlohmann::json& value, std::string_view key, const std::string* pattern = nullptr) {
      if (!value.is_number() || !std::isfinite(value.get<double>()) || value.get<double>() <= 0) {
        if (pattern != nullptr) {
          detail::fail(error_code::format, where, ": ", key, " ", detail::quoted{*pattern}, " is ",
                       detail::json_summary(value), ", expected a positive number");
        }
        detail::fail(error_code::format, where, ": ", key, " is ", detail::json_summary(value),
                     ", expected a positive number");
      }
      return value.get<double>();
    };
    if (!config.contains("lora_alpha")) detail::fail(error_code::format, where, ": lora_alpha is missing");
    const double alpha = number(config["lora_alpha"], "lora_alpha");
    std::vector<std::pair<std::string, double>> alpha_pattern;
    if (config.contains("alpha_pattern") && config["alpha_pattern"].is_object()) {
      for (const auto& [key, value] : config["alpha_pattern"].items()) {
        alpha_pattern.emplace_back(key, number(value, "alpha_pattern", &key));
      }
    }
    const bool rslora = flag("use_rslora");
    const bool fan_in_fan_out = flag("fan_in_fan_out");

    constexpr std::string_view prefix = "base_model.model.";
    struct pending {
      std::string a, b;
      bool embedding = false;
    };
    std::map<std::string, pending, std::less<>> pairs;  // by module name
    for (const auto& name : tensors_.names()) {
      std::string_view rest(name);
      if (rest.starts_with(prefix)) rest.remove_prefix(prefix.size());
      const auto part_of = [&](std::string_view suffix) { return rest.ends_with(suffix); };
      const auto module = [&](std::string_view suffix) { return std::string(rest.substr(0, rest.size() - suffix.size())); };
      if (part_of(".lora_A.weight")) {
        pairs[module(".lora_A.weight")].a = name;
      } else if (part_of(".lora_B.weight")) {
        pairs[module(".lora_B.weight")].b = name;
      } else if (part_of(".lora_embedding_A")) {
        auto& p = pairs[module(".lora_embedding_A")];
        p.a = name;
        p.embedding = true;
      } else if (part_of(".lora_embedding_B")) {
        auto& p = pairs[module(".lora_embedding_B")];
        p.b = name;
        p.embedding = true;
      } else if (rest.find(".lora_") != std::string_view::npos) {
        detail::fail(error_code::format, tensors_.description(), ": adapter tensor ", detail::quoted{name},
                     " is not a LoRA A or B weight alloy can apply (bias and magnitude vectors are not supported)");
      } else {
        update replacement;
        replacement.replacement = name;
        add(std::string(rest), std::move(replacement));
      }
    }
    for (auto& [module, p] : pairs) {
      if (p.a.empty() || p.b.empty()) {
        detail::fail(error_code::format, tensors_.description(), ": module ", detail::quoted{module}, " has ",
                     p.a.empty() ? "a LoRA B but no A" : "a LoRA A but no B", " tensor");
      }
      const const_tensor_view a = tensors_.view(p.a);
      const const_tensor_view b = tensors_.view(p.b);
      if (a.shape().rank() != 2 || b.shape().rank() != 2 || a.shape()[0] != b.shape()[1] || a.shape()[0] == 0) {
        detail::fail(error_code::shape_mismatch, tensors_.description(), ": LoRA tensors of module ",
                     detail::quoted{module}, " have shapes A ", a.shape(), " and B ", b.shape(),
                     "; expected A (r, in) and B (out, r) with r > 0");
      }
      for (const const_tensor_view* v : {&a, &b}) {
        if (!is_mergeable(v->dtype())) {
          detail::fail(error_code::dtype_mismatch, tensors_.description(), ": LoRA tensors of module ",
                       detail::quoted{module}, " are ", v->dtype(), "; expected F32, F16 or BF16");
        }
      }
      double module_alpha = alpha;
      for (const auto& [pattern, value] : alpha_pattern) {
        if (module == pattern || module.ends_with("." + pattern)) module_alpha = value;
      }
      const auto rank = static_cast<double>(a.shape()[0]);
      update u;
      u.a = p.a;
      u.b = p.b;
      u.scale = module_alpha / (rslora ? std::sqrt(rank) : rank);
      u.transposed = p.embedding || fan_in_fan_out;
      add(module + (p.embedding ? "" : ".weight"), std::move(u));
    }
    if (updates_.empty()) detail::fail(error_code::format, tensors_.description(), ": the adapter holds no LoRA tensors");
  }

  void add(std::string target, update u) {
    if (!updates_.emplace(target, std::move(u)).second) {
      detail::fail(error_code::format, tensors_.description(), ": tensor ", detail::quoted{target},
                   " is changed twice by the adapter");
    }
  }

  [[nodiscard]] shape update_shape(const update& u) const {
    if (!u.replacement.empty()) return tensors_.view(u.replacement).shape();
    const shape a = tensors_.view(u.a).shape();
    const shape b = tensors_.view(u.b).shape();
    return u.transposed ? shape{a[1], b[0]} : shape{b[0], a[1]};
  }

  static std::vector<float> as_f32(const_tensor_view view) {
    std::vector<float> values(view.numel());
    convert(view, tensor_view(std::span<float>(values), view.shape()));
    return values;
  }

  std::filesystem::path folder_;
  safetensors_store tensors_;
  std::map<std::string, update, std::less<>> updates_;
};

}  // namespace alloy
