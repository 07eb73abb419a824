#pragma once
// PAM, parameter alignment for merging (Sokar et al., 2025): while a task copy T trains, every K
// optimizer steps, per tensor, take the top-p fraction of the global weights G by magnitude; where
// such an entry's sign differs from T's at the same position, reset T there, to zero or to G's
// value. Entries of G outside the top p, and entries where G or T is exactly zero, are left alone:
// they carry no sign to agree with. With p = 1 no conflict with G remains wherever G is non-zero.
//
// The top-p masks depend on G only, which is fixed during a task: `set_global` computes them once
// per task (floor(p n) entries per tensor, ties broken by position) and `align` reuses them.
// `align` reports, per tensor, how many entries it reset, and hands each tensor's reset mask to
// an optional callback so that optimizer state at those entries can be reset too (the default the
// paper implies: a reset weight should not keep the momentum that pushed it across).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/select.hpp"
#include "alloy/align/regularizers.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

enum class pam_reset : std::uint8_t { to_zero, to_global };

struct pam_options {
  double p = 0.5;                       // fraction of G's entries (by magnitude) to align with
  std::size_t every = 1;                // align every K optimizer steps
  pam_reset reset = pam_reset::to_zero;
  cpu_backend backend{};
};

struct pam_report {
  std::map<std::string, std::size_t, std::less<>> reset_per_tensor;
  std::size_t total_reset = 0;
  std::size_t total_considered = 0;  // entries inside the top-p masks
};

// True where T's sign opposes G's (both non-zero; NaN never conflicts): the entries PAM resets.
ALLOY_HD ALLOY_ALWAYS_INLINE bool sign_conflict(float g, float t) noexcept {
  const int g_sign = (g > 0.0f) - (g < 0.0f);  // integer signs: exact, and the loop vectorises
  const int t_sign = (t > 0.0f) - (t < 0.0f);
  return g_sign * t_sign < 0;
}

// Per element: values[0] = G, values[1] = T; reset T where the mask bit is set. (The form a
// device backend applies; the CPU pass below fuses it with the conflict test.)
struct pam_reset_kernel {
  const std::uint64_t* reset_bits = nullptr;
  bool to_global = false;
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t index) const {
    if ((reset_bits[index >> 6] >> (index & 63)) & 1u) return to_global ? values[0] : 0.0f;
    return values[1];
  }
};

using pam_reset_callback = std::function<void(std::string_view tensor, const bit_mask& reset)>;

// One alignment pass, the step PAM repeats: inside the given top-p masks of G, resets T where its
// sign opposes G's (to zero or to G), and reports the counts. Hands each tensor's reset mask to
// `on_reset`. pam_aligner calls it with masks it keeps per task; adapters call it directly.
template <parameter_store Global, mutable_parameter_store Task>
pam_report align_signs(const cpu_backend& backend, const Global& global, Task& task, const tensor_masks& top_masks,
                       pam_reset reset_mode, const pam_reset_callback& on_reset = {}) {
  pam_report report;
  for (const auto& entry : top_masks) {
    const std::string& name = entry.first;
    const bit_mask& top = entry.second;  // (a named reference: lambdas cannot capture bindings in clang 14)
    const const_tensor_view g = global.view(name);
    const auto found = task.find_mutable(name);
    if (!found) detail::fail(error_code::not_found, "pam: the task weights lack tensor ", detail::quoted{name});
    const tensor_view t = *found;
    if (!(t.shape() == g.shape()) || top.size() != g.numel()) {
      detail::fail(error_code::shape_mismatch, "pam: tensor ", detail::quoted{name}, " has shape ", t.shape(),
                   " in the task weights but ", g.shape(), " in the global weights (and ", top.size(),
                   " entries in its mask)");
    }
    const const_tensor_view inputs[] = {g, t};
    bit_mask reset(g.numel());
    const bool to_global = reset_mode == pam_reset::to_global;
    // One pass: each block of G and T is read once, 64 elements decide one word of the reset mask
    // (blocks start on word boundaries), and a block of T is written back only where it changed.
    for_each_block(backend, inputs, g.numel(), [&](std::size_t) {
      return [&](const float* const* columns, std::size_t count, std::size_t first) {
        const float* gv = columns[0];
        const float* tv = columns[1];
        alignas(64) std::uint8_t hit[detail::block_elements];
        for (std::size_t j = 0; j < count; ++j) hit[j] = sign_conflict(gv[j], tv[j]);
        for (std::size_t j = count; j < (count + 63) / 64 * 64; ++j) hit[j] = 0;
        bool changed = false;
        std::uint64_t block_words[detail::block_elements / 64] = {};
        for (std::size_t start = 0; start < count; start += 64) {
          // Eight 0/1 bytes into eight bits at once: the multiply gathers byte i's low bit into bit 56 + i.
          std::uint64_t conflicts = 0;
          for (std::size_t byte = 0; byte < 64; byte += 8) {
            std::uint64_t eight;
            std::memcpy(&eight, hit + start + byte, 8);
            conflicts |= ((eight * 0x0102040810204080ull) >> 56) << byte;
          }
          const std::size_t word = (first + start) >> 6;
          conflicts &= top.word(word);
          reset.set_word(word, conflicts);
          block_words[start >> 6] = conflicts;
          changed = changed || conflicts != 0;
        }
        if (!changed) return;
        alignas(64) float updated[detail::block_elements];
        for (std::size_t j = 0; j < count; ++j) {
          const bool reset_here = (block_words[j >> 6] >> (j & 63)) & 1u;
          updated[j] = reset_here ? (to_global ? gv[j] : 0.0f) : tv[j];
        }
        detail::store_block(t, first, count, updated);  // T's own values round-trip exactly
      };
    });
    const std::size_t count = reset.count();
    report.reset_per_tensor.emplace(name, count);
    report.total_reset += count;
    report.total_considered += top.count();
    if (count == 0) continue;
    if (on_reset) on_reset(name, reset);
  }
  return report;
}

class pam_aligner {
 public:
  using reset_callback = pam_reset_callback;

  explicit pam_aligner(pam_options options = {}) : options_(options) {
    if (!(options_.p >= 0.0 && options_.p <= 1.0)) {
      detail::fail(error_code::invalid_argument, "pam: p = ", options_.p, " must be in [0, 1]");
    }
    if (options_.every == 0) detail::fail(error_code::invalid_argument, "pam: every must be at least 1 step");
  }

  // Computes the top-p masks of G for the task that starts now.
  template <parameter_store Global>
  void set_global(const Global& global) {
    top_ = top_magnitude_masks(options_.backend, global, options_.p);
  }

  // Counts an optimizer step; true when alignment is due (every K-th step).
  bool step() noexcept { return ++steps_ % options_.every == 0; }

  // Resets T's sign conflicts with G inside the top-p masks. G must be the store given to
  // set_global (its values are read for reset-to-global and for signs).
  template <parameter_store Global, mutable_parameter_store Task>
  pam_report align(const Global& global, Task& task, const reset_callback& on_reset = {}) const {
    return align_signs(options_.backend, global, task, top_, options_.reset, on_reset);
  }

  // The top-p masks of the current task's G.
  [[nodiscard]] const tensor_masks& top_masks() const noexcept { return top_; }
  [[nodiscard]] const pam_options& options() const noexcept { return options_; }
  [[nodiscard]] std::size_t steps() const noexcept { return steps_; }

 private:
  pam_options options_;
  tensor_masks top_;
  std::size_t steps_ = 0;
};

}  // namespace alloy
