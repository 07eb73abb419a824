#pragma once
// CLIP checkpoints as Hugging Face folders: config.json plus model.safetensors (or a sharded
// index), read through alloy's safetensors store and written through alloy's crash-safe writer.
// Every tensor of the model must be in the file and every tensor of the file in the model, with
// the same shape (dtypes are converted); the only exception is the `position_ids` buffers that
// older transformers versions saved, which this model computes instead.

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "alloy/alloy.hpp"
#include "alloy/torch/transfer.hpp"
#include "config.hpp"
#include "model.hpp"
#include "alloy/store/file_io.hpp"

namespace alloy_clip {

inline bool is_position_ids(std::string_view name) {
  return name.size() >= 12 && name.substr(name.size() - 12) == "position_ids";
}

// Loads `folder`/config.json and the weights beside it into a new model.
inline clip_model load_pretrained(const std::filesystem::path& folder) {
  const clip_config config = clip_config::load(folder / "config.json");
  clip_model model(config);
  const auto weights = alloy::safetensors_store::open(folder);
  const alloy::store_subset wanted(weights, [](std::string_view name) { return !is_position_ids(name); });
  const auto parameters = model->named_parameters(/*recurse=*/true);
  for (const auto& item : parameters) {
    if (!wanted.contains(item.key())) {
      alloy::fail(alloy::error_code::not_found, folder.string(), ": the checkpoint lacks tensor ",
                          alloy::quoted{item.key()});
    }
  }
  // (assign refuses, by name, a tensor of the file that the model does not have.)
  alloy::torch_adapter::assign(*model, wanted);
  return model;
}

// Writes config.json and model.safetensors into `folder` (created if missing). Each file is
// written under a temporary name and renamed when complete.
inline void save_pretrained(clip_model& model, const std::filesystem::path& folder) {
  std::filesystem::create_directories(folder);
  alloy::write_file_atomically(folder / "config.json", model->config.to_json().dump(2) + "\n");
  // transformers refuses safetensors files without {"format": "pt"} in their metadata.
  alloy::save_safetensors(folder / "model.safetensors", alloy::torch_adapter::snapshot(*model), {{"format", "pt"}},
                          /*replace=*/true);
}

}  // namespace alloy_clip
