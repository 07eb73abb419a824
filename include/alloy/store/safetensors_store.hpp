#pragma once
// A read-only parameter store over safetensors files: one file, or the shards of a Hugging Face
// `model.safetensors.index.json`. Files are memory-mapped, headers validated in full when the
// store opens, and views point straight into the maps (no copies). Names come in shard order,
// then in data order within a shard, so visiting them in order reads each file sequentially.

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/store/file_io.hpp"
#include "alloy/store/named_store.hpp"
#include "alloy/store/parameter_store.hpp"
#include "alloy/store/safetensors_format.hpp"

namespace alloy {

inline constexpr std::string_view safetensors_single_file_name = "model.safetensors";
inline constexpr std::string_view safetensors_index_file_name = "model.safetensors.index.json";

class safetensors_store : public named_store<safetensors_store> {
 public:
  struct shard {
    mapped_file file;
    safetensors_header header;
  };

  // Opens a `.safetensors` file, an index `.json`, or a folder holding `model.safetensors`,
  // `model.safetensors.index.json`, or exactly one other `*.safetensors[.index.json]`.
  static safetensors_store open(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const auto status = fs::status(path, ec);
    if (!fs::exists(status)) detail::fail(error_code::not_found, "no such file or folder: ", path.string());
    if (fs::is_directory(status)) return open(find_in_folder(path));
    if (path.extension() == ".json") return open_index(path);
    return open_file(path);
  }

  static safetensors_store open_file(const std::filesystem::path& path) {
    safetensors_store store;
    store.description_ = path.string();
    store.add_shard(path, nullptr);
    return store;
  }

  static safetensors_store open_index(const std::filesystem::path& index_path) {
    namespace fs = std::filesystem;
    const std::string where = index_path.string();
    const safetensors_index index = [&] {
      const mapped_file file(index_path);
      const auto bytes = file.bytes();
      return parse_safetensors_index({reinterpret_cast<const char*>(bytes.data()), bytes.size()}, where);
    }();
    const fs::path folder = detail::parent_or_current(index_path);
    std::error_code ec;
    const fs::path canonical_folder = fs::canonical(folder, ec);
    if (ec) detail::fail_os("resolve", folder, ec.value());

    safetensors_store store;
    store.description_ = where;
    for (const auto& [file_name, tensors] : index.tensors_by_shard) {
      // Tensor -> found in the shard; every tensor of the shard must be listed, and vice versa.
      std::map<std::string, bool> expected;
      for (const auto& tensor : tensors) expected.emplace(tensor, false);
      const fs::path shard_path = checked_shard_path(folder, canonical_folder, file_name, where);
      store.add_shard(shard_path, &expected);
      for (const auto& [tensor, found] : expected) {
        if (!found) {
          detail::fail(error_code::format, where, ": names tensor ", detail::quoted{tensor},
                       " in shard ", detail::quoted{file_name}, ", which does not contain it");
        }
      }
    }
    return store;
  }

  [[nodiscard]] std::optional<const_tensor_view> find(std::string_view name) const {
    const auto position = index_.find(name);
    if (!position) return std::nullopt;
    const auto& [shard_index, entry_index] = locations_[*position];
    const shard& owner = shards_[shard_index];
    const auto& entry = owner.header.tensors[entry_index];
    return const_tensor_view(owner.file.bytes().data() + owner.header.data_offset + entry.begin,
                             entry.spec.dtype, entry.spec.shape);
  }
  // The file that holds `name`.
  [[nodiscard]] const std::filesystem::path& file_of(std::string_view name) const {
    const auto position = index_.find(name);
    if (!position) detail::fail_missing_tensor(name, description_);
    return shards_[locations_[*position].first].file.path();
  }

  // Lets the pages of a tensor leave memory once it has been consumed (see mapped_file::release).
  void release(std::string_view name) const {
    on_bytes_of(name, [](const mapped_file& file, std::size_t offset, std::size_t length) { file.release(offset, length); });
  }
  // Starts reading a tensor's pages in the background (see mapped_file::will_need).
  void prefetch(std::string_view name) const {
    on_bytes_of(name, [](const mapped_file& file, std::size_t offset, std::size_t length) { file.will_need(offset, length); });
  }

  // The `__metadata__` of the (first) file, e.g. {"format": "pt"}.
  [[nodiscard]] const metadata_map& metadata() const noexcept { return shards_.front().header.metadata; }
  [[nodiscard]] const std::vector<shard>& shards() const noexcept { return shards_; }
  [[nodiscard]] const std::string& description() const noexcept { return description_; }

 private:
  // action(file, offset, length) for the bytes of `name`; nothing for a name the store lacks.
  template <class Action>
  void on_bytes_of(std::string_view name, const Action& action) const {
    const auto position = index_.find(name);
    if (!position) return;
    const auto& [shard_index, entry_index] = locations_[*position];
    const shard& owner = shards_[shard_index];
    const auto& entry = owner.header.tensors[entry_index];
    action(owner.file, owner.header.data_offset + entry.begin, entry.end - entry.begin);
  }

  safetensors_store() = default;

  static std::filesystem::path find_in_folder(const std::filesystem::path& folder) {
    namespace fs = std::filesystem;
    for (auto name : {safetensors_index_file_name, safetensors_single_file_name}) {
      if (fs::exists(folder / name)) return folder / name;
    }
    std::vector<fs::path> indexes;
    std::vector<fs::path> files;
    std::error_code ec;
    for (const auto& item : fs::directory_iterator(folder, ec)) {
      const std::string file_name = item.path().filename().string();
      if (file_name.ends_with(".safetensors.index.json")) indexes.push_back(item.path());
      if (file_name.ends_with(".safetensors")) files.push_back(item.path());
    }
    if (ec) detail::fail_os("list", folder, ec.value());
    if (indexes.size() == 1) return indexes.front();
    if (indexes.empty() && files.size() == 1) return files.front();
    detail::fail(error_code::not_found, "folder ", folder.string(), " has no ",
                 safetensors_single_file_name, " or ", safetensors_index_file_name,
                 indexes.size() + files.size() > 1 ? ", and several other safetensors files: name one"
                                                   : ", and no other safetensors file");
  }

  // The shard must stay inside the index's folder after following symlinks too (the name itself
  // was checked by parse_safetensors_index).
  static std::filesystem::path checked_shard_path(const std::filesystem::path& folder,
                                                  const std::filesystem::path& canonical_folder,
                                                  const std::string& file_name,
                                                  const std::string& where) {
    namespace fs = std::filesystem;
    const fs::path relative(file_name);
    const fs::path path = folder / relative;
    std::error_code ec;
    const fs::path resolved = fs::canonical(path, ec);
    if (ec) {
      detail::fail(error_code::not_found, where, ": shard ", detail::quoted{file_name},
                   " cannot be opened: ", ec.message());
    }
    const auto [folder_end, ignored] =
        std::mismatch(canonical_folder.begin(), canonical_folder.end(), resolved.begin(), resolved.end());
    if (folder_end != canonical_folder.end()) {
      detail::fail(error_code::format, where, ": shard ", detail::quoted{file_name},
                   " resolves to ", resolved.string(), ", outside the index's folder");
    }
    return path;
  }

  // `expected`: for a shard named by an index, the tensors the index puts there (marked as found
  // here); every tensor of the shard must be among them.
  void add_shard(const std::filesystem::path& path, std::map<std::string, bool>* expected) {
    shard loaded{mapped_file(path), {}};
    loaded.header = parse_safetensors_header(loaded.file.bytes(), path.string());
    const std::size_t shard_index = shards_.size();
    for (std::size_t entry_index = 0; entry_index < loaded.header.tensors.size(); ++entry_index) {
      const std::string& name = loaded.header.tensors[entry_index].spec.name;
      if (expected != nullptr) {
        const auto it = expected->find(name);
        if (it == expected->end()) {
          detail::fail(error_code::format, path.string(), ": holds tensor ", detail::quoted{name},
                       " that the index ", description_, " does not assign to this shard");
        }
        it->second = true;
      }
      index_.add(name, description_);
      locations_.emplace_back(shard_index, entry_index);
    }
    shards_.push_back(std::move(loaded));
  }

  std::string description_;
  std::vector<shard> shards_;
  std::vector<std::pair<std::size_t, std::size_t>> locations_;  // per name: shard, entry
};

static_assert(parameter_store<safetensors_store>);

}  // namespace alloy
