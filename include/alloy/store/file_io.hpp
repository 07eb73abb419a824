#pragma once
// POSIX file primitives for the stores: read-only memory maps, whole-buffer writes, fsync, and the
// temporary-name-then-rename discipline that keeps half-written files from ever carrying a final
// name. Every failure names the path and the operating system's reason.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "alloy/core/error.hpp"

namespace alloy {
namespace detail {

[[noreturn]] inline void fail_os(std::string_view action, const std::filesystem::path& path,
                                 int error_number) {
  fail(error_code::io, "cannot ", action, " ", path.string(), ": ", std::strerror(error_number));
}

// An owned file descriptor.
class unique_fd {
 public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // Closes and reports the error that close() can carry for buffered writes.
  void close_checked(const std::filesystem::path& path) {
    const int fd = std::exchange(fd_, -1);
    if (fd >= 0 && ::close(fd) != 0) fail_os("close", path, errno);
  }

 private:
  int fd_ = -1;
};

inline void write_all(int fd, std::span<const std::byte> bytes, const std::filesystem::path& path) {
  while (!bytes.empty()) {
    const ssize_t written = ::write(fd, bytes.data(), bytes.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      fail_os("write", path, errno);
    }
    bytes = bytes.subspan(static_cast<std::size_t>(written));
  }
}

inline void fsync_or_fail(int fd, const std::filesystem::path& path) {
  if (::fsync(fd) != 0) fail_os("fsync", path, errno);
}

// Makes a rename or a new entry in `directory` durable.
inline void fsync_directory(const std::filesystem::path& directory) {
  const unique_fd fd(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) fail_os("open directory", directory, errno);
  fsync_or_fail(fd.get(), directory);
}

inline std::filesystem::path parent_or_current(const std::filesystem::path& path) {
  auto parent = path.parent_path();
  return parent.empty() ? std::filesystem::path(".") : parent;
}

}  // namespace detail

// A sibling of `final_path` that no other writer (thread or process) picks: the same folder, so
// that rename() is atomic, and a hidden name that says what it is if a crash leaves it behind.
inline std::filesystem::path temporary_sibling(const std::filesystem::path& final_path,
                                               std::string_view purpose) {
  static std::atomic<unsigned> counter{0};
  auto name = std::string(".") + final_path.filename().string() + ".alloy-" + std::string(purpose) +
              "-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
  return final_path.parent_path() / name;
}

namespace detail {
using alloy::temporary_sibling;
}  // namespace detail

// Writes `contents` to `path` so that a crash or a full disk never leaves half a file: into a
// temporary sibling, synced, renamed over `path`, and the rename synced. Replaces `path` if it
// exists (a regular file); fails, naming the path and the system's reason, otherwise.
inline void write_file_atomically(const std::filesystem::path& path, std::string_view contents) {
  const std::filesystem::path temporary = detail::temporary_sibling(path, "write");
  {
    detail::unique_fd fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (fd.get() < 0) detail::fail_os("create", temporary, errno);
    try {
      detail::write_all(fd.get(), std::as_bytes(std::span(contents)), temporary);
      detail::fsync_or_fail(fd.get(), temporary);
      fd.close_checked(temporary);
    } catch (...) {
      std::error_code ignored;
      std::filesystem::remove(temporary, ignored);
      throw;
    }
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    detail::fail_os("rename into", path, error);
  }
  detail::fsync_directory(detail::parent_or_current(path));
}


namespace detail {
// What a stat mode says a path is, for messages.
inline const char* file_kind(mode_t mode) noexcept {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "a special file";
}
}  // namespace detail

// A read-only, private memory map of a whole file. Views into it stay valid while it lives. If
// another process truncates the file while it is mapped, reads past the new end raise SIGBUS:
// alloy never writes over its inputs, and neither should anything else during a merge.
class mapped_file {
 public:
  mapped_file() = default;

  explicit mapped_file(const std::filesystem::path& path) : path_(path) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever; it is
    // then refused below, as is anything else that is not a regular file. (The flag changes
    // nothing for a regular file, which is only mapped.)
    const detail::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
    if (fd.get() < 0) detail::fail_os("open", path, errno);
    struct stat info {};
    if (::fstat(fd.get(), &info) != 0) detail::fail_os("stat", path, errno);
    if (!S_ISREG(info.st_mode)) {
      detail::fail(error_code::io, "cannot read ", path.string(), ": it is ", detail::file_kind(info.st_mode),
                   ", not a regular file");
    }
    size_ = static_cast<std::size_t>(info.st_size);
    if (size_ == 0) return;  // mmap refuses empty maps; an empty file is an empty span
    void* address = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (address == MAP_FAILED) detail::fail_os("map", path, errno);
    data_ = static_cast<const std::byte*>(address);
  }

  mapped_file(mapped_file&& other) noexcept
      : path_(std::move(other.path_)),
        data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  mapped_file& operator=(mapped_file&& other) noexcept {
    if (this != &other) {
      unmap();
      path_ = std::move(other.path_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file() { unmap(); }

  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

  // Tells the kernel that a byte range will be read soon: it starts reading the pages from disk
  // in the background (nothing to do where they are cached), so that a streaming merge reads the
  // next tensor while it computes this one.
  void will_need(std::size_t offset, std::size_t length) const noexcept {
    if (data_ == nullptr || offset >= size_) return;
    length = std::min(length, size_ - offset);
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t first = offset / page * page;
    // NOLINTNEXTLINE: madvise takes a non-const pointer but does not write through it here.
    ::madvise(const_cast<std::byte*>(data_) + first, offset + length - first, MADV_WILLNEED);
  }

  // Tells the kernel that a byte range will not be read again soon, so its pages can leave the
  // resident set. Streaming merges call this after each tensor; later reads still work (the pages
  // come back from the file). Only whole pages inside the range are released.
  void release(std::size_t offset, std::size_t length) const noexcept {
    if (data_ == nullptr || offset >= size_) return;
    length = std::min(length, size_ - offset);
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t first = (offset + page - 1) / page * page;
    const std::size_t last = (offset + length) / page * page;
    if (last > first) {
      // NOLINTNEXTLINE: madvise takes a non-const pointer but does not write through it here.
      ::madvise(const_cast<std::byte*>(data_) + first, last - first, MADV_DONTNEED);
    }
  }

 private:
  void unmap() noexcept {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }

  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// A growable buffer of anonymous memory for one output tensor at a time, asked to be backed by
// huge pages where the kernel offers them (MADV_HUGEPAGE): a merged tensor of 256 MB then costs
// 128 page faults where a std::vector costs 65536 and a zero fill. Grows, never shrinks; its
// contents are undefined after a reserve that grows it.
class page_buffer {
 public:
  page_buffer() = default;
  page_buffer(const page_buffer&) = delete;
  page_buffer& operator=(const page_buffer&) = delete;
  ~page_buffer() { unmap(); }

  [[nodiscard]] std::byte* data() noexcept { return data_; }

  // Room for `size` bytes at data().
  void reserve(std::size_t size) {
    if (size > capacity_) {
      unmap();
      constexpr std::size_t huge_page = std::size_t{2} << 20;
      const std::size_t capacity = (size + huge_page - 1) / huge_page * huge_page;
      void* address = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (address == MAP_FAILED) {
        detail::fail(error_code::io, "cannot allocate ", capacity, " bytes for an output tensor: ", std::strerror(errno));
      }
#if defined(MADV_HUGEPAGE)
      ::madvise(address, capacity, MADV_HUGEPAGE);  // a hint: without it, ordinary pages
#endif
      data_ = static_cast<std::byte*>(address);
      capacity_ = capacity;
    }
  }

 private:
  void unmap() noexcept {
    if (data_ != nullptr) ::munmap(data_, capacity_);
    data_ = nullptr;
    capacity_ = 0;
  }

  std::byte* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace alloy
