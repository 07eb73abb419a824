#pragma once
// alloy reports failures with one exception type whose message names what is at fault (the file,
// tensor, key or value) and what was expected; `code()` lets callers branch without parsing text.

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace alloy {

enum class error_code : std::uint8_t {
  invalid_argument,  // a caller passed a value outside the documented domain
  not_found,         // a tensor, file or key that must exist does not
  already_exists,    // a name or output that must be new is taken
  format,            // a file violates its format (safetensors header, index, ...)
  shape_mismatch,    // shapes or element counts disagree
  dtype_mismatch,    // dtypes disagree or a dtype is not supported for the operation
  io,                // the operating system refused a read, write, map or rename
  limit,             // a size exceeds one of alloy's documented limits
  device,            // a GPU runtime call failed (no device, out of device memory, a kernel fault)
};

constexpr std::string_view to_string(error_code code) noexcept {
  switch (code) {
    case error_code::invalid_argument: return "invalid argument";
    case error_code::not_found: return "not found";
    case error_code::already_exists: return "already exists";
    case error_code::format: return "format error";
    case error_code::shape_mismatch: return "shape mismatch";
    case error_code::dtype_mismatch: return "dtype mismatch";
    case error_code::io: return "I/O error";
    case error_code::limit: return "limit exceeded";
    case error_code::device: return "device error";
  }
  return "error";
}

class error : public std::runtime_error {
 public:
  error(error_code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  [[nodiscard]] error_code code() const noexcept { return code_; }

 private:
  error_code code_;
};

namespace detail {

// Builds a message from any streamable parts; only ever on the error path.
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace detail

// Throws alloy::error with `code` and the message made of `parts` (anything streamable), the way
// alloy reports every failure; for programs built on alloy that report theirs alike:
//
//   alloy::fail(alloy::error_code::not_found, "no task named ", alloy::quoted{name});
template <class... Parts>
[[noreturn]] void fail(error_code code, const Parts&... parts) {
  throw error(code, detail::concat(parts...));
}

// Quotes a user-supplied name in a message, so that empty names and trailing spaces stay visible.
struct quoted {
  std::string_view text;
  // Names come from files: control characters are escaped, and a name longer than a message
  // should carry is cut (with its length said).
  static constexpr std::size_t max_shown = 200;
  friend std::ostream& operator<<(std::ostream& out, quoted q) {
    out << '\'';
    for (char c : q.text.substr(0, max_shown)) {
      const auto byte = static_cast<unsigned char>(c);
      if (byte < 0x20 || byte == 0x7f) {
        constexpr char hex[] = "0123456789abcdef";
        out << "\\x" << hex[byte >> 4] << hex[byte & 0xf];
      } else {
        out << c;
      }
    }
    if (q.text.size() > max_shown) return out << "...' (" << q.text.size() << " bytes)";
    return out << '\'';
  }
};

namespace detail {
using alloy::fail;    // the library's own internals keep writing detail::fail
using alloy::quoted;
}  // namespace detail
}  // namespace alloy
