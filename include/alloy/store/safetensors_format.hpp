#pragma once
// The safetensors format, independent of files: parsing and validating a header, and writing one.
//
// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object mapping each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
// "__metadata__" object of strings), then the data section. Offsets are relative to the data
// section. As the format's specification requires, the tensors must cover the data section
// exactly: no overlaps, no holes, nothing after the last tensor.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/core/dtype.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/shape.hpp"

namespace alloy {

using metadata_map = std::map<std::string, std::string>;

// What a tensor will be, before it has data: the unit of planning for writers.
struct tensor_spec {
  std::string name;
  alloy::dtype dtype = alloy::dtype::f32;
  alloy::shape shape{};

  [[nodiscard]] std::size_t byte_size() const { return shape.numel() * size_of(dtype); }
  friend bool operator==(const tensor_spec&, const tensor_spec&) = default;
};

// One tensor of a parsed header; offsets are relative to the data section.
struct safetensors_entry {
  tensor_spec spec;
  std::size_t begin = 0;
  std::size_t end = 0;
};

struct safetensors_header {
  std::vector<safetensors_entry> tensors;  // in data order (ascending offsets)
  metadata_map metadata;
  std::size_t data_offset = 0;  // where the data section starts in the file: 8 + header length
};

namespace safetensors_limits {
// The reference implementation's cap; a larger header is refused before it is parsed.
inline constexpr std::size_t max_header_bytes = 100'000'000;
inline constexpr std::size_t max_tensors = 1'000'000;
// An index lists every tensor once, with a shard name: far below a header's cap in practice
// (a 405B model's index is about 100 KB).
inline constexpr std::size_t max_index_bytes = 100'000'000;
}  // namespace safetensors_limits

// What a Hugging Face `model.safetensors.index.json` says: which shard holds each tensor.
struct safetensors_index {
  std::map<std::string, std::vector<std::string>> tensors_by_shard;  // shard name -> tensors
  nlohmann::json metadata;  // the index's "metadata" object as written (total_size, ...), or null
};

namespace detail {

inline std::uint64_t read_le64(std::span<const std::byte> bytes) noexcept {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < 8; ++i) value |= std::to_integer<std::uint64_t>(bytes[i]) << (8 * i);
  return value;
}

// Keys of one JSON object seen so far, to refuse duplicates (nlohmann would keep the last).
struct duplicate_key_guard {
  std::vector<std::set<std::string>> open_objects;
  const std::string* where;

  bool operator()(int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using event_t = nlohmann::json::parse_event_t;
    if (event == event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == event_t::object_end) {
      open_objects.pop_back();
    } else if (event == event_t::key) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second) {
        fail(error_code::format, *where, ": duplicate ", depth == 1 ? "tensor name " : "key ",
             quoted{key});
      }
    }
    return true;
  }
};

// A JSON value from a file, shown in an error message: bounded in length and depth (a hostile
// header can nest arrays millions deep, and dump() recurses), never throwing on bad UTF-8.
inline constexpr std::size_t max_summary_length = 80;

inline void summarize_json_string(const std::string& text, std::string& out) {
  out += nlohmann::json(text.substr(0, max_summary_length))
             .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > max_summary_length) out += "...";
}

inline void summarize_json(const nlohmann::json& value, std::string& out, int depth) {
  constexpr std::size_t max_length = max_summary_length;
  if (out.size() > max_length) return;
  if (value.is_structured()) {
    const bool array = value.is_array();
    out += array ? '[' : '{';
    if (depth >= 3 && !value.empty()) out += "...";
    bool first = true;
    for (auto it = value.begin(); depth < 3 && it != value.end(); ++it) {
      if (!first) out += ", ";
      first = false;
      if (out.size() > max_length) {
        out += "...";
        break;
      }
      if (!array) {
        summarize_json_string(it.key(), out);
        out += ": ";
      }
      summarize_json(*it, out, depth + 1);
    }
    out += array ? ']' : '}';
  } else if (value.is_string()) {
    summarize_json_string(value.get_ref<const std::string&>(), out);
  } else {
    out += value.dump();
  }
}

inline std::string json_summary(const nlohmann::json& value) {
  std::string out;
  summarize_json(value, out, 0);
  return out;
}

inline std::size_t json_size(const nlohmann::json& value, const std::string& where,
                             std::string_view tensor, std::string_view field) {
  if (!value.is_number_unsigned()) {
    fail(error_code::format, where, ": tensor ", quoted{tensor}, " has ", field, " ", json_summary(value),
         ", expected a non-negative integer");
  }
  return value.get<std::uint64_t>();
}

inline safetensors_entry parse_entry(const std::string& name, const nlohmann::json& value,
                                     const std::string& where) {
  if (name.empty()) fail(error_code::format, where, ": a tensor has an empty name");
  if (!value.is_object()) {
    fail(error_code::format, where, ": tensor ", quoted{name},
         " must be described by an object, got ", value.type_name());
  }
  for (const auto& [key, ignored] : value.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail(error_code::format, where, ": tensor ", quoted{name}, " has unknown field ",
           quoted{key}, " (expected dtype, shape, data_offsets)");
    }
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(key)) {
      fail(error_code::format, where, ": tensor ", quoted{name}, " has no ", key);
    }
  }
  const auto& dtype_json = value["dtype"];
  if (!dtype_json.is_string()) {
    fail(error_code::format, where, ": tensor ", quoted{name}, " has dtype ", json_summary(dtype_json),
         ", expected a string");
  }
  const auto type = dtype_from_name(dtype_json.get_ref<const std::string&>());
  if (!type) {
    fail(error_code::format, where, ": tensor ", quoted{name}, " has unknown dtype ",
         json_summary(dtype_json));
  }
  const auto& shape_json = value["shape"];
  if (!shape_json.is_array()) {
    fail(error_code::format, where, ": tensor ", quoted{name}, " has shape ", json_summary(shape_json),
         ", expected an array");
  }
  if (shape_json.size() > shape::max_rank) {
    fail(error_code::limit, where, ": tensor ", quoted{name}, " has rank ", shape_json.size(),
         ", more than alloy's maximum of ", shape::max_rank);
  }
  std::vector<shape::extent_type> extents;
  for (const auto& extent : shape_json) {
    const std::size_t size = json_size(extent, where, name, "a shape dimension");
    if (size > static_cast<std::size_t>(INT64_MAX)) {
      fail(error_code::limit, where, ": tensor ", quoted{name}, " has dimension ", size,
           ", beyond 63 bits");
    }
    extents.push_back(static_cast<shape::extent_type>(size));
  }
  safetensors_entry entry;
  entry.spec.name = name;
  entry.spec.dtype = *type;
  try {
    entry.spec.shape = shape(std::span<const shape::extent_type>(extents));
  } catch (const error& e) {
    fail(e.code(), where, ": tensor ", quoted{name}, ": ", e.what());
  }
  const auto& offsets = value["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    fail(error_code::format, where, ": tensor ", quoted{name}, " has data_offsets ",
         json_summary(offsets), ", expected [begin, end]");
  }
  entry.begin = json_size(offsets[0], where, name, "a data offset");
  entry.end = json_size(offsets[1], where, name, "a data offset");
  if (entry.end < entry.begin) {
    fail(error_code::format, where, ": tensor ", quoted{name}, " has data_offsets [", entry.begin,
         ", ", entry.end, "] that end before they begin");
  }
  const std::size_t expected =
      checked_byte_size(entry.spec.shape.numel(), size_of(*type), where + ": tensor '" + name + "'");
  if (entry.end - entry.begin != expected) {
    fail(error_code::format, where, ": tensor ", quoted{name}, " of dtype ", *type, " and shape ",
         entry.spec.shape, " needs ", expected, " bytes but its data_offsets [", entry.begin,
         ", ", entry.end, "] span ", entry.end - entry.begin);
  }
  return entry;
}

}  // namespace detail

// Parses and validates the header of a complete safetensors file held in `file`. `where` names
// the file in error messages.
inline safetensors_header parse_safetensors_header(std::span<const std::byte> file,
                                                   const std::string& where) {
  if (file.size() < 8) {
    detail::fail(error_code::format, where, ": file is ", file.size(),
                 " bytes, too short for the 8-byte header length of a safetensors file");
  }
  const std::uint64_t header_length = detail::read_le64(file);
  if (header_length > safetensors_limits::max_header_bytes) {
    detail::fail(error_code::limit, where, ": header length ", header_length,
                 " exceeds the limit of ", safetensors_limits::max_header_bytes, " bytes");
  }
  if (header_length > file.size() - 8) {
    detail::fail(error_code::format, where, ": header length ", header_length,
                 " runs past the end of the file (", file.size(),
                 " bytes); the file is truncated or not safetensors");
  }
  const auto text = file.subspan(8, static_cast<std::size_t>(header_length));
  if (text.empty() || text[0] != std::byte{'{'}) {
    detail::fail(error_code::format, where, ": header does not start with '{'; not a safetensors file");
  }

  nlohmann::json json;
  try {
    const auto* first = reinterpret_cast<const char*>(text.data());
    json = nlohmann::json::parse(first, first + text.size(),
                                 detail::duplicate_key_guard{{}, &where});
  } catch (const nlohmann::json::exception& e) {
    detail::fail(error_code::format, where, ": header is not valid JSON: ", e.what());
  }
  if (!json.is_object()) detail::fail(error_code::format, where, ": header is not a JSON object");
  if (const std::size_t tensors = json.size() - (json.contains("__metadata__") ? 1 : 0);
      tensors > safetensors_limits::max_tensors) {
    detail::fail(error_code::limit, where, ": header lists ", tensors, " tensors, more than the limit of ",
                 safetensors_limits::max_tensors);
  }

  safetensors_header header;
  header.data_offset = 8 + static_cast<std::size_t>(header_length);
  const std::size_t data_size = file.size() - header.data_offset;
  header.tensors.reserve(json.size());
  for (const auto& [key, value] : json.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) {
        detail::fail(error_code::format, where, ": __metadata__ must be an object of strings");
      }
      for (const auto& [meta_key, meta_value] : value.items()) {
        if (!meta_value.is_string()) {
          detail::fail(error_code::format, where, ": __metadata__ value of ", detail::quoted{meta_key},
                       " is ", detail::json_summary(meta_value), ", expected a string");
        }
        header.metadata.emplace(meta_key, meta_value.get<std::string>());
      }
      continue;
    }
    header.tensors.push_back(detail::parse_entry(key, value, where));
  }

  std::sort(header.tensors.begin(), header.tensors.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::size_t expected_begin = 0;
  const safetensors_entry* previous = nullptr;
  for (const auto& entry : header.tensors) {
    if (entry.end > data_size) {
      detail::fail(error_code::format, where, ": tensor ", detail::quoted{entry.spec.name},
                   " has data_offsets [", entry.begin, ", ", entry.end,
                   "] beyond the data section of ", data_size, " bytes (truncated file?)");
    }
    if (entry.begin < expected_begin) {
      detail::fail(error_code::format, where, ": tensor ", detail::quoted{entry.spec.name},
                   " at bytes [", entry.begin, ", ", entry.end, ") overlaps tensor ",
                   detail::quoted{previous->spec.name}, " at bytes [", previous->begin, ", ",
                   previous->end, ")");
    }
    if (entry.begin > expected_begin) {
      detail::fail(error_code::format, where, ": data bytes [", expected_begin, ", ", entry.begin,
                   ") before tensor ", detail::quoted{entry.spec.name},
                   " belong to no tensor; the format forbids holes");
    }
    expected_begin = entry.end;
    previous = &entry;
  }
  if (expected_begin != data_size) {
    detail::fail(error_code::format, where, ": ", data_size - expected_begin,
                 " bytes after the last tensor belong to no tensor; the format forbids them");
  }
  return header;
}

// Shard names come from a file that someone else wrote; a name is a plain relative path that
// cannot leave the index's folder ("../x", "/abs", "a/../../x" are refused). Symlinks inside the
// folder are checked where the files are opened (safetensors_store).
inline void check_shard_name(const std::string& name, const std::string& where) {
  const std::filesystem::path relative(name);
  bool escapes = name.empty() || relative.is_absolute() || relative.has_root_name();
  for (const auto& part : relative) escapes = escapes || part == "..";
  if (escapes) {
    detail::fail(error_code::format, where, ": shard name ", detail::quoted{name},
                 " points outside the index's folder");
  }
  if (name.find('\0') != std::string::npos) {
    detail::fail(error_code::format, where, ": shard name ", detail::quoted{name}, " contains a NUL byte");
  }
}

// Parses the text of an index file: an object with a "weight_map" object from tensor name to
// shard file name (and an optional "metadata" object). A tensor listed twice, a shard name that is
// not a string or leaves the folder, and an empty map are refused.
inline safetensors_index parse_safetensors_index(std::string_view text, const std::string& where) {
  if (text.size() > safetensors_limits::max_index_bytes) {
    detail::fail(error_code::limit, where, ": index of ", text.size(), " bytes exceeds the limit of ",
                 safetensors_limits::max_index_bytes, " bytes");
  }
  nlohmann::json json;
  try {
    // A tensor listed twice in weight_map is ambiguous: refuse it rather than keep the last.
    json = nlohmann::json::parse(text.begin(), text.end(), detail::duplicate_key_guard{{}, &where});
  } catch (const nlohmann::json::exception& e) {
    detail::fail(error_code::format, where, ": not valid JSON: ", e.what());
  }
  if (!json.is_object() || !json.contains("weight_map") || !json["weight_map"].is_object()) {
    detail::fail(error_code::format, where, ": expected an object with a \"weight_map\" object");
  }
  const auto& weight_map = json["weight_map"];
  if (weight_map.empty()) detail::fail(error_code::format, where, ": weight_map is empty");
  if (weight_map.size() > safetensors_limits::max_tensors) {
    detail::fail(error_code::limit, where, ": weight_map lists ", weight_map.size(),
                 " tensors, more than the limit of ", safetensors_limits::max_tensors);
  }
  safetensors_index index;
  for (const auto& [tensor, file] : weight_map.items()) {
    if (tensor.empty()) detail::fail(error_code::format, where, ": weight_map has a tensor with an empty name");
    if (!file.is_string()) {
      detail::fail(error_code::format, where, ": weight_map entry for ", detail::quoted{tensor},
                   " is ", detail::json_summary(file), ", expected a shard file name");
    }
    const auto& shard = file.get_ref<const std::string&>();
    check_shard_name(shard, where);
    index.tensors_by_shard[shard].push_back(tensor);
  }
  if (const auto it = json.find("metadata"); it != json.end()) {
    if (!it->is_object() && !it->is_null()) {
      detail::fail(error_code::format, where, ": metadata is ", it->type_name(), ", expected an object");
    }
    index.metadata = *it;
  }
  return index;
}

// The header bytes (length prefix included) for tensors laid out in the given order. The JSON is
// padded with spaces so that the data section starts at a multiple of 8 bytes.
inline std::string serialize_safetensors_header(std::span<const tensor_spec> tensors,
                                                const metadata_map& metadata) {
  nlohmann::ordered_json json = nlohmann::ordered_json::object();
  if (!metadata.empty()) json["__metadata__"] = metadata;
  std::set<std::string_view> seen;
  std::size_t offset = 0;
  for (const auto& tensor : tensors) {
    if (tensor.name.empty() || tensor.name == "__metadata__") {
      detail::fail(error_code::invalid_argument, "cannot write a tensor named ",
                   detail::quoted{tensor.name}, " to safetensors (empty or reserved)");
    }
    if (!seen.insert(tensor.name).second) {
      detail::fail(error_code::already_exists, "tensor name ", detail::quoted{tensor.name},
                   " appears twice in one safetensors file");
    }
    const std::size_t bytes = tensor.byte_size();
    auto& entry = json[tensor.name];
    entry["dtype"] = std::string(name(tensor.dtype));
    entry["shape"] = std::vector<std::int64_t>(tensor.shape.begin(), tensor.shape.end());
    entry["data_offsets"] = {offset, offset + bytes};
    offset += bytes;
  }
  std::string text = json.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (std::size_t i = 0; i < 8; ++i) {
    out[i] = static_cast<char>((static_cast<std::uint64_t>(text.size()) >> (8 * i)) & 0xffu);
  }
  return out + text;
}

}  // namespace alloy
