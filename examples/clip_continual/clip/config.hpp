#pragma once
// CLIP's configuration, read from and written to a Hugging Face `config.json` (the `text_config`
// and `vision_config` objects of CLIPConfig), so that a checkpoint folder made by transformers
// configures this model, and a folder saved here configures transformers. Fields absent from the
// file take transformers' defaults; a field of the wrong type, or a value the model cannot use,
// is an error naming the field.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "alloy/core/error.hpp"

namespace alloy_clip {

struct tower_config {
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 12;
  std::int64_t num_attention_heads = 0;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
};

struct text_config : tower_config {
  std::int64_t vocab_size = 49408;
  std::int64_t max_position_embeddings = 77;
  std::int64_t pad_token_id = 1;
  std::int64_t bos_token_id = 49406;
  std::int64_t eos_token_id = 49407;
  text_config() {
    hidden_size = 512;
    intermediate_size = 2048;
    num_attention_heads = 8;
  }
};

struct vision_config : tower_config {
  std::int64_t image_size = 224;
  std::int64_t patch_size = 32;
  std::int64_t num_channels = 3;
  vision_config() {
    hidden_size = 768;
    intermediate_size = 3072;
    num_attention_heads = 12;
  }
  [[nodiscard]] std::int64_t patches_per_side() const { return image_size / patch_size; }
  [[nodiscard]] std::int64_t positions() const { return patches_per_side() * patches_per_side() + 1; }
};

struct clip_config {
  text_config text;
  vision_config vision;
  std::int64_t projection_dim = 512;
  double logit_scale_init_value = 2.6592;

  static clip_config from_json(const nlohmann::json& json, const std::string& source = "config.json") {
    if (!json.is_object()) fail(source, "the configuration is not a JSON object");
    clip_config config;
    read(json, "projection_dim", config.projection_dim, source);
    read(json, "logit_scale_init_value", config.logit_scale_init_value, source);
    if (const auto it = json.find("text_config"); it != json.end() && !it->is_null()) {
      const std::string where = source + ": text_config";
      read_tower(*it, config.text, where);
      read(*it, "vocab_size", config.text.vocab_size, where);
      read(*it, "max_position_embeddings", config.text.max_position_embeddings, where);
      read(*it, "pad_token_id", config.text.pad_token_id, where);
      read(*it, "bos_token_id", config.text.bos_token_id, where);
      read(*it, "eos_token_id", config.text.eos_token_id, where);
    }
    if (const auto it = json.find("vision_config"); it != json.end() && !it->is_null()) {
      const std::string where = source + ": vision_config";
      read_tower(*it, config.vision, where);
      read(*it, "image_size", config.vision.image_size, where);
      read(*it, "patch_size", config.vision.patch_size, where);
      read(*it, "num_channels", config.vision.num_channels, where);
    }
    config.validate(source);
    return config;
  }

  static clip_config load(const std::filesystem::path& file) {
    std::ifstream in(file);
    if (!in) fail(file.string(), "cannot be opened");
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(in);
    } catch (const nlohmann::json::parse_error& e) {
      fail(file.string(), std::string("is not valid JSON: ") + e.what());
    }
    return from_json(json, file.string());
  }

  // The config.json transformers writes for CLIPModel (the fields this model reads).
  [[nodiscard]] nlohmann::json to_json() const {
    const auto tower = [](const tower_config& t) {
      return nlohmann::json{{"hidden_size", t.hidden_size},
                            {"intermediate_size", t.intermediate_size},
                            {"num_hidden_layers", t.num_hidden_layers},
                            {"num_attention_heads", t.num_attention_heads},
                            {"hidden_act", t.hidden_act},
                            {"layer_norm_eps", t.layer_norm_eps},
                            {"projection_dim", 0}};
    };
    nlohmann::json text_json = tower(text);
    text_json.update({{"model_type", "clip_text_model"}, {"vocab_size", text.vocab_size},
                      {"max_position_embeddings", text.max_position_embeddings}, {"pad_token_id", text.pad_token_id},
                      {"bos_token_id", text.bos_token_id}, {"eos_token_id", text.eos_token_id},
                      {"projection_dim", projection_dim}});
    nlohmann::json vision_json = tower(vision);
    vision_json.update({{"model_type", "clip_vision_model"}, {"image_size", vision.image_size},
                        {"patch_size", vision.patch_size}, {"num_channels", vision.num_channels},
                        {"projection_dim", projection_dim}});
    return {{"architectures", {"CLIPModel"}},
            {"model_type", "clip"},
            {"projection_dim", projection_dim},
            {"logit_scale_init_value", logit_scale_init_value},
            {"text_config", text_json},
            {"vision_config", vision_json}};
  }

  void validate(const std::string& source = "config") const {
    const auto tower = [&](const tower_config& t, const std::string& name) {
      positive(t.hidden_size, source, name + ".hidden_size");
      positive(t.intermediate_size, source, name + ".intermediate_size");
      positive(t.num_hidden_layers, source, name + ".num_hidden_layers");
      positive(t.num_attention_heads, source, name + ".num_attention_heads");
      if (t.hidden_size % t.num_attention_heads != 0) {
        fail(source, name + ".hidden_size " + std::to_string(t.hidden_size) + " is not divisible by num_attention_heads " +
                         std::to_string(t.num_attention_heads));
      }
      if (t.hidden_act != "quick_gelu" && t.hidden_act != "gelu") {
        fail(source, name + ".hidden_act '" + t.hidden_act + "' is not supported (quick_gelu or gelu)");
      }
      if (!(t.layer_norm_eps > 0)) fail(source, name + ".layer_norm_eps must be positive");
    };
    tower(text, "text_config");
    tower(vision, "vision_config");
    positive(text.vocab_size, source, "text_config.vocab_size");
    positive(text.max_position_embeddings, source, "text_config.max_position_embeddings");
    positive(vision.patch_size, source, "vision_config.patch_size");
    positive(vision.num_channels, source, "vision_config.num_channels");
    positive(projection_dim, source, "projection_dim");
    if (vision.image_size % vision.patch_size != 0 || vision.image_size < vision.patch_size) {
      fail(source, "vision_config.image_size " + std::to_string(vision.image_size) +
                       " is not a positive multiple of patch_size " + std::to_string(vision.patch_size));
    }
  }

 private:
  [[noreturn]] static void fail(const std::string& source, const std::string& message) {
    alloy::fail(alloy::error_code::invalid_argument, source, ": ", message);
  }
  static void positive(std::int64_t value, const std::string& source, const std::string& field) {
    if (value <= 0) fail(source, field + " must be positive, not " + std::to_string(value));
  }
  template <class T>
  static void read(const nlohmann::json& json, const char* key, T& out, const std::string& source) {
    const auto it = json.find(key);
    if (it == json.end() || it->is_null()) return;
    const bool fits = std::is_same_v<T, std::string>   ? it->is_string()
                      : std::is_floating_point_v<T> ? it->is_number()
                                                    : it->is_number_integer();
    if (!fits) fail(source, std::string("field '") + key + "' has the wrong type (" + it->type_name() + ")");
    out = it->template get<T>();
  }
  static void read_tower(const nlohmann::json& json, tower_config& tower, const std::string& source) {
    if (!json.is_object()) fail(source, "is not a JSON object");
    read(json, "hidden_size", tower.hidden_size, source);
    read(json, "intermediate_size", tower.intermediate_size, source);
    read(json, "num_hidden_layers", tower.num_hidden_layers, source);
    read(json, "num_attention_heads", tower.num_attention_heads, source);
    read(json, "hidden_act", tower.hidden_act, source);
    read(json, "layer_norm_eps", tower.layer_norm_eps, source);
  }
};

}  // namespace alloy_clip
