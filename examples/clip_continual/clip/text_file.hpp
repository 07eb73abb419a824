#pragma once
// The example's text files (config.json, vocab.json, run state, reports) are written under a
// temporary name and renamed when complete, so an interrupted write never leaves half a file.

#include <filesystem>
#include <fstream>
#include <string>

#include "alloy/core/error.hpp"

namespace alloy_clip {

inline void write_text_file(const std::filesystem::path& file, const std::string& text) {
  const std::filesystem::path partial = file.string() + ".partial";
  {
    std::ofstream out(partial, std::ios::binary);
    out << text;
    if (!out) alloy::detail::fail(alloy::error_code::io, "cannot write ", partial.string());
  }
  std::filesystem::rename(partial, file);
}

}  // namespace alloy_clip
