#pragma once
// One status line on a terminal, redrawn in place: the progress display of alloy-merge and of the
// CLIP example. Nothing is printed when stderr is not a terminal (logs and pipes stay clean).

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace alloy::tools {

class terminal_status {
 public:
  explicit terminal_status(bool enabled) : enabled_(enabled && ::isatty(STDERR_FILENO) != 0) {}

  [[nodiscard]] bool enabled() const noexcept { return enabled_; }

  // Redraws the line as `text`, at most ten times a second unless `force` (the last update).
  void show(const std::string& text, bool force = false) {
    if (!enabled_) return;
    const auto now = clock::now();
    if (!force && shown_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    shown_ = true;
    std::fprintf(stderr, "\r%s\033[K", text.c_str());
    std::fflush(stderr);
  }
  // Ends the line where it is, or erases it.
  void finish(bool keep) {
    if (!enabled_ || !shown_) return;
    std::fprintf(stderr, keep ? "\n" : "\r\033[K");
    std::fflush(stderr);
    shown_ = false;
  }

  // "[=======>      ]" for a fraction in [0, 1].
  static std::string bar(double fraction, int width) {
    const int filled = fraction <= 0 ? 0 : fraction >= 1 ? width : static_cast<int>(fraction * width);
    std::string text(static_cast<std::size_t>(filled), '=');
    if (filled < width) text += '>' + std::string(static_cast<std::size_t>(width - filled - 1), ' ');
    return "[" + text + "]";
  }

 private:
  using clock = std::chrono::steady_clock;
  bool enabled_;
  bool shown_ = false;
  clock::time_point last_{};
};

}  // namespace alloy::tools
