#pragma once
// JSON files of a model folder (config.json, tokenizer.json, tokenizer_config.json), read through
// nlohmann with limits: nlohmann's dump() recurses once per level, so nesting and sizes no real
// file has are refused, with the file named.

#include <cstddef>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "alloy/alloy.hpp"

namespace alloy::tools {

inline nlohmann::ordered_json read_json_file(const std::filesystem::path& path, std::string_view what,
                                             std::size_t max_bytes) {
  constexpr int max_depth = 256;
  const mapped_file file(path);
  if (file.bytes().size() > max_bytes) {
    alloy::fail(error_code::limit, path.string(), ": ", file.bytes().size(), " bytes is too large for ", what, " (limit ",
                max_bytes, " bytes)");
  }
  const auto* text = reinterpret_cast<const char*>(file.bytes().data());
  try {
    return nlohmann::ordered_json::parse(text, text + file.bytes().size(),
                                         [&](int depth, nlohmann::ordered_json::parse_event_t, nlohmann::ordered_json&) {
                                           if (depth > max_depth) {
                                             alloy::fail(error_code::limit, path.string(), ": nested more than ",
                                                         max_depth, " levels deep");
                                           }
                                           return true;
                                         });
  } catch (const nlohmann::json::exception& e) {
    alloy::fail(error_code::format, path.string(), ": not valid JSON: ", e.what());
  }
}

}  // namespace alloy::tools
