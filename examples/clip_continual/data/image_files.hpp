#pragma once
// Users' own images for the CLIP example, read with stb_image (PNG, JPEG, BMP, GIF, PGM/PPM, ...)
// and resized to the model's image size with stb_image_resize:
//
//   load_image_folder(root, size, channels)   root/<class>/<image files>, classes in sorted folder
//                                             order (torchvision's ImageFolder convention)
//   load_image_csv(file.csv, size, channels)  a header `path,label` or `path,caption`, then one
//                                             image per line; paths relative to the CSV's folder;
//                                             labels are integers or class names (sorted)
//
// Every failure names the file (and the CSV line) at fault; nothing is returned half-loaded.

#include <stb_image.h>
#include <stb_image_resize.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "alloy/core/error.hpp"
#include "datasets.hpp"

namespace alloy_clip {

struct image_set {
  int size = 0;      // images are size x size
  int channels = 0;  // 1 (grey) or 3 (RGB)
  std::vector<std::uint8_t> pixels;  // [n, size, size, channels]
  std::vector<int> labels;           // class index per image (empty for captioned data)
  std::vector<std::string> captions;  // one per image (empty for labelled data)
  std::vector<std::string> classes;   // class names, by index
  [[nodiscard]] std::size_t count() const {
    return pixels.size() / (static_cast<std::size_t>(size) * static_cast<std::size_t>(size) * static_cast<std::size_t>(channels));
  }
};

namespace detail {

[[noreturn]] inline void fail_file(const std::filesystem::path& file, const std::string& why) {
  alloy::fail(alloy::error_code::format, file.string(), ": ", why);
}

// Decodes one image file, converts it to `channels`, resizes it to size x size, and appends it.
inline void append_image(image_set& set, const std::filesystem::path& file) {
  int width = 0, height = 0, found = 0;
  const std::unique_ptr<stbi_uc, void (*)(void*)> decoded(
      stbi_load(file.string().c_str(), &width, &height, &found, set.channels), stbi_image_free);
  if (!decoded) {
    const char* reason = stbi_failure_reason();
    fail_file(file, std::string("cannot be read as an image (") + (reason ? reason : "unknown reason") + ")");
  }
  const std::size_t bytes = static_cast<std::size_t>(set.size) * static_cast<std::size_t>(set.size) *
                            static_cast<std::size_t>(set.channels);
  const std::size_t offset = set.pixels.size();
  set.pixels.resize(offset + bytes);
  if (!stbir_resize_uint8(decoded.get(), width, height, 0, set.pixels.data() + offset, set.size, set.size, 0,
                          set.channels)) {
    fail_file(file, "could not be resized");
  }
}

inline image_set empty_set(int size, int channels) {
  if (size <= 0 || (channels != 1 && channels != 3)) {
    alloy::fail(alloy::error_code::invalid_argument, "image size ", size, " and channels ", channels,
                        ": the size must be positive and channels 1 or 3");
  }
  image_set set;
  set.size = size;
  set.channels = channels;
  return set;
}

inline std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (c == '"' && quoted && i + 1 < line.size() && line[i + 1] == '"') {
      fields.back() += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      fields.emplace_back();
    } else if (c != '\r') {
      fields.back() += c;
    }
  }
  return fields;
}

}  // namespace detail

inline image_set load_image_folder(const std::filesystem::path& root, int size, int channels) {
  image_set set = detail::empty_set(size, channels);
  if (!std::filesystem::is_directory(root)) detail::fail_file(root, "is not a folder");
  std::vector<std::filesystem::path> class_dirs;
  for (const auto& entry : std::filesystem::directory_iterator(root)) {
    if (entry.is_directory()) class_dirs.push_back(entry.path());
  }
  std::sort(class_dirs.begin(), class_dirs.end());
  if (class_dirs.empty()) detail::fail_file(root, "has no class folders (expected root/<class>/<images>)");
  for (std::size_t label = 0; label < class_dirs.size(); ++label) {
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(class_dirs[label])) {
      if (entry.is_regular_file() && entry.path().filename().string().front() != '.') files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) detail::fail_file(class_dirs[label], "holds no image files");
    set.classes.push_back(class_dirs[label].filename().string());
    for (const auto& file : files) {
      detail::append_image(set, file);
      set.labels.push_back(static_cast<int>(label));
    }
  }
  return set;
}

inline image_set load_image_csv(const std::filesystem::path& csv, int size, int channels) {
  image_set set = detail::empty_set(size, channels);
  std::ifstream in(csv);
  if (!in) detail::fail_file(csv, "cannot be opened");
  std::string line;
  if (!std::getline(in, line)) detail::fail_file(csv, "is empty (expected a header: path,label or path,caption)");
  const auto header = detail::split_csv_line(line);
  if (header.size() != 2 || header[0] != "path" || (header[1] != "label" && header[1] != "caption")) {
    detail::fail_file(csv, "line 1: the header must be `path,label` or `path,caption`");
  }
  const bool captions = header[1] == "caption";
  std::vector<std::pair<std::filesystem::path, std::string>> rows;
  for (std::size_t number = 2; std::getline(in, line); ++number) {
    if (line.empty() || line == "\r") continue;
    const auto fields = detail::split_csv_line(line);
    if (fields.size() != 2 || fields[0].empty()) {
      detail::fail_file(csv, "line " + std::to_string(number) + ": expected `path," + header[1] + "`, got `" + line + "`");
    }
    const std::filesystem::path path = std::filesystem::path(fields[0]).is_absolute()
                                           ? std::filesystem::path(fields[0])
                                           : csv.parent_path() / fields[0];
    rows.emplace_back(path, fields[1]);
  }
  if (rows.empty()) detail::fail_file(csv, "lists no images");
  std::map<std::string, int> class_index;
  if (!captions) {
    // Integer labels are used as they are; names are numbered in sorted order.
    const bool numeric = std::all_of(rows.begin(), rows.end(), [](const auto& row) {
      return !row.second.empty() && row.second.find_first_not_of("0123456789") == std::string::npos;
    });
    std::set<std::string> names;
    for (const auto& row : rows) names.insert(row.second);
    if (numeric) {
      int largest = 0;
      for (const auto& name : names) largest = std::max(largest, std::stoi(name));
      for (int i = 0; i <= largest; ++i) set.classes.push_back(std::to_string(i));
      for (const auto& name : names) class_index[name] = std::stoi(name);
    } else {
      for (const auto& name : names) {
        class_index[name] = static_cast<int>(set.classes.size());
        set.classes.push_back(name);
      }
    }
  }
  for (const auto& [path, value] : rows) {
    detail::append_image(set, path);
    if (captions) set.captions.push_back(value);
    else set.labels.push_back(class_index.at(value));
  }
  return set;
}

// A user's labelled images (load_image_folder / load_image_csv with labels) as a dataset; the
// prompts default to "a photo of a {}.".
inline image_dataset from_image_set(const image_set& set, std::string name,
                                    std::vector<std::string> templates = {"a photo of a {}."}) {
  if (set.labels.empty() || set.labels.size() != set.count()) {
    alloy::fail(alloy::error_code::invalid_argument, "dataset ", name,
                        " has no class labels (captioned data is for pretraining, not classification)");
  }
  const auto n = static_cast<std::int64_t>(set.count());
  image_dataset out;
  out.name = std::move(name);
  out.images = ::torch::from_blob(const_cast<std::uint8_t*>(set.pixels.data()), {n, set.size, set.size, set.channels}, ::torch::kUInt8)
                   .permute({0, 3, 1, 2})
                   .contiguous();
  std::vector<std::int64_t> labels(set.labels.begin(), set.labels.end());
  out.labels = ::torch::tensor(labels, ::torch::kInt64);
  out.classes = set.classes;
  out.templates = std::move(templates);
  return out;
}

}  // namespace alloy_clip
