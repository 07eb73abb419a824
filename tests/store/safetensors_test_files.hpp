#pragma once
// Builders for safetensors files with chosen (often broken) headers and data.

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "test_folder.hpp"

namespace alloy::testing {

// 8-byte little-endian length + header text + data, as given (no padding, no checks).
inline std::string raw_safetensors(std::string_view header, std::string_view data,
                                   std::uint64_t declared_length = UINT64_MAX) {
  const std::uint64_t length = declared_length == UINT64_MAX ? header.size() : declared_length;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((length >> (8 * i)) & 0xff);
  out.append(header);
  out.append(data);
  return out;
}

inline std::filesystem::path write_raw_safetensors(const std::filesystem::path& path,
                                                   std::string_view header, std::string_view data,
                                                   std::uint64_t declared_length = UINT64_MAX) {
  write_text_file(path, raw_safetensors(header, data, declared_length));
  return path;
}

}  // namespace alloy::testing
