#pragma once
// Byte counts for people, shared by alloy's tools: "1.21 GB" (decimal, as Hugging Face and
// --shard-size count) or "1.1 GiB" (binary).

#include <cstdio>
#include <string>

namespace alloy::tools {

inline std::string human_bytes(double bytes, bool binary = false) {
  const char* decimal_units[] = {"B", "KB", "MB", "GB", "TB"};
  const char* binary_units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  const double step = binary ? 1024.0 : 1000.0;
  int unit = 0;
  while (bytes >= step && unit < 4) {
    bytes /= step;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.2f %s", bytes,
                binary ? binary_units[unit] : decimal_units[unit]);
  return text;
}

}  // namespace alloy::tools
