#pragma once
// alloy-merge never writes over its inputs. Before any model is opened, the output path is
// compared with every input the config names (model folders and files, LoRA adapters), all
// resolved through symbolic links (and the config file itself): an output that is an input, lies inside one, or contains one
// would be replaced (--allow-overwrite) or written into, and is refused whatever the flags. So is
// an output that exists and is not a folder (model_writer refuses those too, later; here the
// message comes before anything is read).

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "alloy/alloy.hpp"
#include "merge_config.hpp"

namespace alloy::tools {

namespace detail {

// `inner` equals `outer` or lies below it (both absolute and normalised).
inline bool is_within(const std::filesystem::path& inner, const std::filesystem::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (o->empty()) continue;  // a trailing separator
    if (i == inner.end() || *i != *o) return false;
  }
  return true;
}

// The path an input occupies on disk: a model folder, or the folder of an index file (its shards
// lie beside it), or a single file. Nothing when it does not exist (opening it reports that).
inline std::optional<std::filesystem::path> occupied_path(const std::string& text) {
  std::error_code ec;
  const std::filesystem::path resolved = std::filesystem::canonical(text, ec);
  if (ec) return std::nullopt;
  if (!std::filesystem::is_directory(resolved, ec) && resolved.extension() == ".json") return resolved.parent_path();
  return resolved;
}

}  // namespace detail

// Throws alloy::error (already_exists) naming the output and the input it would destroy. The
// config file is an input too.
inline void check_output_spares_inputs(const merge_config& config, const std::filesystem::path& config_file,
                                       const std::filesystem::path& output) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path target = fs::weakly_canonical(fs::absolute(output, ec), ec);
  if (ec) alloy::fail(error_code::io, "output ", alloy::quoted{output.string()}, ": cannot resolve the path: ", ec.message());
  const auto check = [&](const std::string& input, const char* what) {
    const std::optional<fs::path> occupied = detail::occupied_path(input);
    if (!occupied) return;
    const char* relation = target == *occupied                  ? "is"
                           : detail::is_within(target, *occupied) ? "lies inside"
                           : detail::is_within(*occupied, target) ? "contains"
                                                                  : nullptr;
    if (relation == nullptr) return;
    alloy::fail(error_code::already_exists, "output ", alloy::quoted{output.string()}, " ", relation, " the ", what, " ",
                alloy::quoted{input}, (target == *occupied ? "" : " (" + occupied->string() + ")"),
                "; alloy-merge never writes over an input, whatever the flags: choose another output folder");
  };
  for (const model_reference& reference : config.referenced_models()) {
    const bool is_base = config.base_model && reference == *config.base_model;
    check(reference.model, is_base ? "base model" : "input model");
    if (!reference.adapter.empty()) check(reference.adapter, "LoRA adapter");
  }
  for (const model_reference& reference : config.tokenizer_only_models()) check(reference.model, "tokenizer source");
  if (fs::is_regular_file(config_file, ec)) check(config_file.string(), "config");
  // Not an input, but not a folder either (a file, a link to one, a device): never replaced.
  alloy::detail::refuse_non_folder_output(output, "alloy-merge writes a folder and replaces only a folder (choose another "
                                                  "output path)");
}

}  // namespace alloy::tools
