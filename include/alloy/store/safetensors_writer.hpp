#pragma once
// Writing safetensors: one file, or a Hugging Face style model folder (sharded, with an index).
// Data streams in tensor by tensor, in the planned order, so a merge never holds a whole model.
// Output is written under a temporary name, fsynced, and renamed only when complete: a crash or
// an error leaves either nothing or a finished file under the final name, never a partial one.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/store/file_io.hpp"
#include "alloy/store/parameter_store.hpp"
#include "alloy/store/safetensors_format.hpp"
#include "alloy/store/safetensors_store.hpp"

namespace alloy {

// Writes one safetensors file whose tensors are fixed up front (`plan`, in file order) and whose
// data arrives in that order through `write`.
class safetensors_file_writer {
 public:
  safetensors_file_writer(std::filesystem::path final_path, std::vector<tensor_spec> plan,
                          const metadata_map& metadata = {})
      : final_path_(std::move(final_path)),
        temporary_path_(detail::temporary_sibling(final_path_, "partial")),
        plan_(std::move(plan)) {
    const std::string header = serialize_safetensors_header(plan_, metadata);
    fd_ = detail::unique_fd(
        ::open(temporary_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (fd_.get() < 0) detail::fail_os("create", temporary_path_, errno);
    try {
      detail::write_all(fd_.get(), std::as_bytes(std::span(header)), temporary_path_);
    } catch (...) {
      discard();
      throw;
    }
  }

  safetensors_file_writer(safetensors_file_writer&& other) noexcept
      : final_path_(std::move(other.final_path_)),
        temporary_path_(std::move(other.temporary_path_)),
        plan_(std::move(other.plan_)),
        fd_(std::move(other.fd_)),
        next_(other.next_),
        finished_(std::exchange(other.finished_, true)) {}
  safetensors_file_writer& operator=(safetensors_file_writer&&) = delete;
  safetensors_file_writer(const safetensors_file_writer&) = delete;
  safetensors_file_writer& operator=(const safetensors_file_writer&) = delete;

  ~safetensors_file_writer() {
    if (!finished_) discard();
  }

  // The next tensor of the plan: its name, dtype and shape must match the plan.
  void write(std::string_view name, const_tensor_view tensor) {
    if (finished_) detail::fail(error_code::invalid_argument, final_path_.string(), ": writer is finished");
    const tensor_spec& expected = expect_next(name);
    if (tensor.dtype() != expected.dtype || !(tensor.shape() == expected.shape)) {
      detail::fail(error_code::shape_mismatch, final_path_.string(), ": tensor ",
                   detail::quoted{name}, " was planned as ", expected.dtype, " ", expected.shape,
                   " but is ", tensor.dtype(), " ", tensor.shape());
    }
    detail::write_all(fd_.get(), tensor.bytes(), temporary_path_);
    ++next_;
  }

  // The name of the tensor `write` expects next, or empty when every tensor is written.
  [[nodiscard]] std::string_view next_name() const noexcept {
    return next_ < plan_.size() ? std::string_view(plan_[next_].name) : std::string_view();
  }

  // Checks that every planned tensor was written, makes the file durable and gives it its name.
  // With `replace`, an existing file of that name is replaced atomically; otherwise it is refused.
  void commit(bool replace = false) {
    if (finished_) detail::fail(error_code::invalid_argument, final_path_.string(), ": writer is finished");
    if (next_ != plan_.size()) {
      detail::fail(error_code::invalid_argument, final_path_.string(), ": commit before tensor ",
                   detail::quoted{plan_[next_].name}, " (", plan_.size() - next_,
                   " of ", plan_.size(), " tensors not written)");
    }
    try {
      detail::fsync_or_fail(fd_.get(), temporary_path_);
      fd_.close_checked(temporary_path_);
      if (replace) {
        if (std::rename(temporary_path_.c_str(), final_path_.c_str()) != 0) {
          detail::fail_os("rename into", final_path_, errno);
        }
      } else {
        // link() fails if the final name exists, unlike rename(): no silent overwrite, no race.
        if (::link(temporary_path_.c_str(), final_path_.c_str()) != 0) {
          if (errno == EEXIST) {
            detail::fail(error_code::already_exists, "refusing to overwrite existing file ",
                         final_path_.string());
          }
          detail::fail_os("create", final_path_, errno);
        }
        ::unlink(temporary_path_.c_str());
      }
      detail::fsync_directory(detail::parent_or_current(final_path_));
    } catch (...) {
      discard();
      throw;
    }
    finished_ = true;
  }

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return final_path_; }

 private:
  const tensor_spec& expect_next(std::string_view name) const {
    if (next_ >= plan_.size()) {
      detail::fail(error_code::invalid_argument, final_path_.string(), ": tensor ",
                   detail::quoted{name}, " written after the last planned tensor");
    }
    if (plan_[next_].name != name) {
      detail::fail(error_code::invalid_argument, final_path_.string(), ": tensor ",
                   detail::quoted{name}, " written out of order; expected ",
                   detail::quoted{plan_[next_].name});
    }
    return plan_[next_];
  }

  void discard() noexcept {
    fd_.reset();
    ::unlink(temporary_path_.c_str());
    finished_ = true;
  }

  std::filesystem::path final_path_;
  std::filesystem::path temporary_path_;
  std::vector<tensor_spec> plan_;
  detail::unique_fd fd_;
  std::size_t next_ = 0;
  bool finished_ = false;
};

// Orders tensors so that each one's data starts aligned to its element size: wider dtypes first
// (as the reference writer does), the given order kept within a width.
inline void order_for_alignment(std::vector<tensor_spec>& plan) {
  std::stable_sort(plan.begin(), plan.end(), [](const tensor_spec& a, const tensor_spec& b) {
    return size_of(a.dtype) > size_of(b.dtype);
  });
}

// The shard of each tensor of `plan` (in order) when shards hold at most `max_shard_bytes`: a new
// shard starts when the next tensor would overflow a non-empty one, so a tensor larger than the
// limit gets a shard of its own.
inline std::vector<std::size_t> assign_shards(std::span<const tensor_spec> plan, std::size_t max_shard_bytes) {
  std::vector<std::size_t> shard_of(plan.size());
  std::size_t shard = 0;
  std::size_t shard_bytes = 0;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    const std::size_t bytes = plan[i].byte_size();
    if (i > 0 && shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes) {
      ++shard;
      shard_bytes = 0;
    }
    shard_bytes += bytes;
    shard_of[i] = shard;
  }
  return shard_of;
}

namespace detail {
// Only a folder is ever replaced, whatever the options: a file (or a link) in an output folder's
// place is most likely something else the user meant to keep. `what` ends the message.
inline void refuse_non_folder_output(const std::filesystem::path& folder, std::string_view what) {
  std::error_code ec;
  const auto status = std::filesystem::symlink_status(folder, ec);
  if (!std::filesystem::exists(status) || std::filesystem::is_directory(status)) return;
  struct stat info {};
  const bool known = ::lstat(folder.c_str(), &info) == 0;
  fail(error_code::already_exists, "output ", folder.string(), " exists and is ", known ? file_kind(info.st_mode) : "not a folder",
       "; ", what);
}
}  // namespace detail

struct model_write_options {
  // Largest shard in bytes (Hugging Face's default is 5 GB). A tensor larger than this gets a
  // shard of its own.
  std::size_t max_shard_bytes = 5'000'000'000;
  metadata_map metadata = {{"format", "pt"}};
  bool allow_overwrite = false;
};

// Writes a model folder: `model.safetensors` when everything fits in one shard, otherwise
// `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`, and any extra files the
// caller adds (config.json, tokenizer files). The folder is built under a temporary sibling name
// and renamed into place by `commit`.
class model_writer {
 public:
  model_writer(std::filesystem::path folder, std::vector<tensor_spec> plan,
               model_write_options options = {})
      : folder_(std::move(folder)), options_(std::move(options)) {
    namespace fs = std::filesystem;
    if (folder_.filename().empty()) folder_ = folder_.parent_path();  // "out/" -> "out"
    if (options_.max_shard_bytes == 0) {
      detail::fail(error_code::invalid_argument, "maximum shard size must be positive");
    }
    check_destination();
    staging_ = detail::temporary_sibling(folder_, "staging");
    std::error_code ec;
    if (!fs::create_directory(staging_, ec) || ec) detail::fail_os("create folder", staging_, ec.value());
    split_into_shards(std::move(plan));
  }

  model_writer(model_writer&&) = delete;
  model_writer(const model_writer&) = delete;
  model_writer& operator=(const model_writer&) = delete;
  model_writer& operator=(model_writer&&) = delete;

  ~model_writer() {
    if (!committed_) {
      current_.reset();
      std::error_code ec;
      std::filesystem::remove_all(staging_, ec);
    }
  }

  // Tensors arrive in plan order (shard after shard).
  void write(std::string_view name, const_tensor_view tensor) {
    const auto it = shard_of_.find(name);
    if (it == shard_of_.end()) {
      detail::fail(error_code::invalid_argument, folder_.string(), ": tensor ",
                   detail::quoted{name}, " is not in the plan");
    }
    const bool current_complete = !current_ || current_->next_name().empty();
    if (it->second == shard_next_ && current_complete) {
      finish_current_shard();
      open_next_shard();
    } else if (!current_ || it->second + 1 != shard_next_) {
      detail::fail(error_code::invalid_argument, folder_.string(), ": tensor ",
                   detail::quoted{name}, " written out of order; expected ",
                   detail::quoted{expected_next()});
    }
    current_->write(name, tensor);
  }

  // Adds a small file (config, tokenizer, model card) at `relative` inside the folder.
  void add_file(const std::filesystem::path& relative, std::string_view contents) {
    write_small_file(staging_ / relative, contents);
  }
  void copy_file(const std::filesystem::path& source, const std::filesystem::path& relative) {
    std::error_code ec;
    std::filesystem::copy_file(source, staging_ / relative, ec);
    if (ec) detail::fail_os("copy " + source.string() + " to", staging_ / relative, ec.value());
  }

  // Checks that every tensor was written, writes the index, syncs, and renames into place.
  void commit() {
    namespace fs = std::filesystem;
    if (committed_) detail::fail(error_code::invalid_argument, folder_.string(), ": already committed");
    if (current_ && !current_->next_name().empty()) {
      detail::fail(error_code::invalid_argument, folder_.string(), ": commit before tensor ",
                   detail::quoted{current_->next_name()}, " was written");
    }
    finish_current_shard();
    if (shard_next_ == 0 && shards_.front().empty()) {  // no tensors at all: one empty file
      open_next_shard();
      finish_current_shard();
    }
    if (shard_next_ < shards_.size()) {
      detail::fail(error_code::invalid_argument, folder_.string(), ": commit before tensor ",
                   detail::quoted{shards_[shard_next_].front().name}, " was written");
    }
    if (shards_.size() > 1) write_index();
    detail::fsync_directory(staging_);

    std::error_code ec;
    const bool exists = fs::exists(fs::symlink_status(folder_, ec));
    fs::path previous;
    if (exists) {
      check_destination();
      if (fs::is_directory(fs::symlink_status(folder_)) && fs::is_empty(folder_)) {
        fs::remove(folder_, ec);
      } else {
        previous = detail::temporary_sibling(folder_, "replaced");
        fs::rename(folder_, previous, ec);
      }
      if (ec) detail::fail_os("move aside", folder_, ec.value());
    }
    fs::rename(staging_, folder_, ec);
    if (ec) detail::fail_os("rename " + staging_.string() + " to", folder_, ec.value());
    committed_ = true;
    detail::fsync_directory(detail::parent_or_current(folder_));
    if (!previous.empty()) fs::remove_all(previous, ec);
  }

  [[nodiscard]] const std::filesystem::path& staging_path() const noexcept { return staging_; }
  [[nodiscard]] std::size_t shard_count() const noexcept { return shards_.size(); }

 private:
  void check_destination() const {
    namespace fs = std::filesystem;
    std::error_code ec;
    detail::refuse_non_folder_output(folder_, "alloy replaces only a folder (remove it, or choose another output path)");
    if (!fs::exists(fs::symlink_status(folder_, ec))) return;
    if (options_.allow_overwrite) return;
    if (fs::is_empty(folder_, ec)) return;
    detail::fail(error_code::already_exists, "output ", folder_.string(),
                 " exists and is not an empty folder (allow overwriting to replace it)");
  }

  void split_into_shards(std::vector<tensor_spec> plan) {
    const std::vector<std::size_t> assigned = assign_shards(plan, options_.max_shard_bytes);
    for (std::size_t i = 0; i < plan.size(); ++i) {
      tensor_spec& spec = plan[i];
      if (shards_.size() <= assigned[i]) shards_.emplace_back();
      if (!shard_of_.emplace(spec.name, shards_.size() - 1).second) {
        detail::fail(error_code::already_exists, folder_.string(), ": tensor name ",
                     detail::quoted{spec.name}, " appears twice in the plan");
      }
      shards_.back().push_back(std::move(spec));
    }
    if (shards_.empty()) shards_.emplace_back();  // a model with no tensors is still a valid file
    for (const auto& shard : shards_) {
      std::size_t bytes = 0;
      for (const auto& spec : shard) bytes += spec.byte_size();
      total_bytes_ += bytes;
    }
  }

  [[nodiscard]] std::string shard_file_name(std::size_t index) const {
    if (shards_.size() == 1) return std::string(safetensors_single_file_name);
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, shards_.size());
    return name;
  }

  [[nodiscard]] std::string_view expected_next() const {
    if (current_ && !current_->next_name().empty()) return current_->next_name();
    if (shard_next_ < shards_.size() && !shards_[shard_next_].empty()) {
      return shards_[shard_next_].front().name;
    }
    return "(nothing: every planned tensor is written)";
  }

  void open_next_shard() {
    current_.emplace(staging_ / shard_file_name(shard_next_), shards_[shard_next_], options_.metadata);
    ++shard_next_;
  }

  void finish_current_shard() {
    if (!current_) return;
    current_->commit();
    current_.reset();
  }

  void write_index() const {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total_bytes_}};
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    std::vector<std::pair<std::string, std::size_t>> sorted(shard_of_.begin(), shard_of_.end());
    std::sort(sorted.begin(), sorted.end());
    for (const auto& [name, shard] : sorted) weight_map[name] = shard_file_name(shard);
    index["weight_map"] = std::move(weight_map);
    write_small_file(staging_ / safetensors_index_file_name, index.dump(2) + "\n");
  }

  static void write_small_file(const std::filesystem::path& path, std::string_view contents) {
    detail::unique_fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (fd.get() < 0) detail::fail_os("create", path, errno);
    detail::write_all(fd.get(), std::as_bytes(std::span(contents)), path);
    detail::fsync_or_fail(fd.get(), path);
    fd.close_checked(path);
  }

  std::filesystem::path folder_;
  model_write_options options_;
  std::filesystem::path staging_;
  std::vector<std::vector<tensor_spec>> shards_;
  std::map<std::string, std::size_t, std::less<>> shard_of_;
  std::size_t total_bytes_ = 0;
  std::size_t shard_next_ = 0;
  std::optional<safetensors_file_writer> current_;
  bool committed_ = false;
};

namespace detail {
template <parameter_store S>
std::vector<tensor_spec> plan_of(const S& store) {
  std::vector<tensor_spec> plan;
  plan.reserve(store.size());
  for (const auto& name : store.names()) {
    const auto view = store.view(name);
    plan.push_back({std::string(name), view.dtype(), view.shape()});
  }
  order_for_alignment(plan);
  return plan;
}
}  // namespace detail

// Saves a whole store as one safetensors file.
template <parameter_store S>
void save_safetensors(const std::filesystem::path& path, const S& store,
                      const metadata_map& metadata = {}, bool replace = false) {
  safetensors_file_writer writer(path, detail::plan_of(store), metadata);
  for (std::string_view name = writer.next_name(); !name.empty(); name = writer.next_name()) {
    writer.write(name, store.view(name));
  }
  writer.commit(replace);
}

// Saves a whole store as a model folder (sharded when larger than options.max_shard_bytes).
template <parameter_store S>
void save_model(const std::filesystem::path& folder, const S& store,
                const model_write_options& options = {}) {
  model_writer writer(folder, detail::plan_of(store), options);
  for (const auto& spec : detail::plan_of(store)) writer.write(spec.name, store.view(spec.name));
  writer.commit();
}

}  // namespace alloy
