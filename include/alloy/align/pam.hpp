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
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
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

namespace detail {

// values[0] = G, values[1] = T: the entries inside G's top-p mask where T's sign opposes G's.
struct pam_conflict {
  const std::uint64_t* top_bits = nullptr;
  template <class Values>
  ALLOY_HD bool operator()(const Values& values, std::size_t index) const {
    return mask_bit(top_bits, index) && sign_conflict(values[0], values[1]);
  }
  // The CPU's block form: the sign tests of a block vectorise, then 64 of them and a word of the
  // top-p mask make each word of the result (the same bits as above).
  void select_block(const float* const* columns, std::size_t count, std::size_t first, std::uint64_t* words) const {
    alignas(64) std::uint8_t hit[block_elements];
    const float* g = columns[0];
    const float* t = columns[1];
    for (std::size_t j = 0; j < count; ++j) hit[j] = sign_conflict(g[j], t[j]);
    for (std::size_t j = count; j < (count + 63) / 64 * 64; ++j) hit[j] = 0;
    for (std::size_t start = 0; start < count; start += 64) {
      words[start >> 6] = pack_flags(hit + start) & top_bits[(first + start) >> 6];
    }
  }
};

// values[0] = G, values[1] = T: T reset (to zero or to G) where the reset mask is set, else T.
struct pam_reset_kernel {
  const std::uint64_t* reset_bits = nullptr;
  bool to_global = false;
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t index) const {
    if (mask_bit(reset_bits, index)) return to_global ? values[0] : 0.0f;
    return values[1];
  }
  // The CPU's block form: the reset bits expanded first, so that the select vectorises.
  void evaluate_block(const float* const* columns, std::size_t, std::size_t count, std::size_t first,
                      float* results) const {
    alignas(64) std::uint32_t reset[block_elements];
    unpack_bits(reset_bits, first, count, reset);
    const float* g = columns[0];
    const float* t = columns[1];
    for (std::size_t j = 0; j < count; ++j) results[j] = reset[j] != 0 ? (to_global ? g[j] : 0.0f) : t[j];
  }
};

struct no_reset_callback {
  template <class Mask>
  void operator()(std::string_view, const Mask&) const noexcept {}
};

}  // namespace detail

using pam_reset_callback = std::function<void(std::string_view tensor, const bit_mask& reset)>;

// One tensor of an alignment pass, as the backend sees it: G, T (written in place) and the words
// of G's top-p mask, all in the backend's memory.
struct pam_tensor {
  const_tensor_view global;
  tensor_view task;
  const std::uint64_t* top_bits = nullptr;
};

// Resets, in every tensor, T's entries inside G's top-p mask whose sign opposes G's (to zero or
// to G); returns each tensor's reset mask and writes its count into counts[i]. Through the
// backend's primitives: select_where, count_set, and elementwise where there is something to
// reset. T's own values round-trip exactly through f32, so only reset entries change. A backend
// compiled apart (the CUDA library) provides its own overload, found by argument-dependent lookup.
template <class Backend>
std::vector<mask_type_t<Backend>> reset_sign_conflicts(const Backend& backend, std::span<const pam_tensor> tensors,
                                                       pam_reset mode, std::span<std::size_t> counts) {
  std::vector<mask_type_t<Backend>> resets;
  resets.reserve(tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const const_tensor_view inputs[] = {tensors[i].global, tensors[i].task};
    auto reset = select_where(backend, inputs, tensors[i].global.numel(), detail::pam_conflict{tensors[i].top_bits});
    counts[i] = count_set(backend, reset);
    if (counts[i] != 0) {
      elementwise(backend, tensors[i].task, inputs, detail::pam_reset_kernel{reset.words(), mode == pam_reset::to_global});
    }
    resets.push_back(std::move(reset));
  }
  return resets;
}

// One alignment pass, the step PAM repeats: inside the given top-p masks of G, resets T where its
// sign opposes G's (to zero or to G), and reports the counts. Hands each tensor's reset mask to
// `on_reset` (for the optimizer's state at those entries). Every tensor is checked before any is
// written.
template <class Backend, parameter_store Global, mutable_parameter_store Task, class Masks,
          class OnReset = detail::no_reset_callback>
pam_report align_signs(const Backend& backend, const Global& global, Task& task, const Masks& top_masks,
                       pam_reset reset_mode, const OnReset& on_reset = {}) {
  std::vector<pam_tensor> tensors;
  std::vector<std::string_view> names;
  std::size_t considered = 0;
  for (const auto& entry : top_masks) {
    const std::string& name = entry.first;
    const auto g = global.find(name);
    const auto t = task.find_mutable(name);
    if (!g || !t) {
      detail::fail(error_code::not_found, "pam: the ", g ? "task" : "global", " weights lack tensor ",
                   detail::quoted{name});
    }
    if (!(t->shape() == g->shape()) || entry.second.size() != g->numel()) {
      detail::fail(error_code::shape_mismatch, "pam: tensor ", detail::quoted{name}, " has shape ", t->shape(),
                   " in the task weights but ", g->shape(), " in the global weights (and ", entry.second.size(),
                   " entries in its mask)");
    }
    detail::check_computable(*t, "pam: tensor '" + name + "' of the task weights");
    detail::check_computable(*g, "pam: tensor '" + name + "' of the global weights");
    tensors.push_back({*g, *t, entry.second.words()});
    names.push_back(name);
    considered += count_set(backend, entry.second);
  }
  std::vector<std::size_t> counts(tensors.size());
  const auto resets = reset_sign_conflicts(backend, std::span<const pam_tensor>(tensors), reset_mode, std::span(counts));
  pam_report report;
  report.total_considered = considered;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    report.reset_per_tensor.emplace(names[i], counts[i]);
    report.total_reset += counts[i];
    if (counts[i] == 0) continue;
    if constexpr (std::is_constructible_v<bool, const OnReset&>) {
      if (!on_reset) continue;
    }
    on_reset(names[i], resets[i]);
  }
  return report;
}

// PAM over a task: the top-p masks of G computed once when the task starts (by the backend given
// to set_global, in its mask type: bit_mask on the CPU, device masks on a GPU), then an alignment
// pass every K-th step. The backend is an argument of each call, never stored.
template <class Mask = bit_mask>
class pam_aligner {
 public:
  using reset_callback = pam_reset_callback;
  using masks_type = std::map<std::string, Mask, std::less<>>;

  explicit pam_aligner(pam_options options = {}) : options_(options) {
    if (!(options_.p >= 0.0 && options_.p <= 1.0)) {
      detail::fail(error_code::invalid_argument, "pam: p = ", options_.p, " must be in [0, 1]");
    }
    if (options_.every == 0) detail::fail(error_code::invalid_argument, "pam: every must be at least 1 step");
  }

  // Computes the top-p masks of G for the task that starts now.
  template <class Backend, parameter_store Global>
  void set_global(const Backend& backend, const Global& global) {
    static_assert(std::is_same_v<mask_type_t<Backend>, Mask>, "pam_aligner<Mask>: the backend's masks are another type");
    top_ = top_magnitude_masks(backend, global, options_.p);
  }

  // Counts an optimizer step; true when alignment is due (every K-th step).
  bool step() noexcept { return ++steps_ % options_.every == 0; }

  // Resets T's sign conflicts with G inside the top-p masks. G must be the store given to
  // set_global (its values are read for reset-to-global and for signs).
  template <class Backend, parameter_store Global, mutable_parameter_store Task,
            class OnReset = detail::no_reset_callback>
  pam_report align(const Backend& backend, const Global& global, Task& task, const OnReset& on_reset = {}) const {
    return align_signs(backend, global, task, top_, options_.reset, on_reset);
  }

  // The top-p masks of the current task's G.
  [[nodiscard]] const masks_type& top_masks() const noexcept { return top_; }
  [[nodiscard]] const pam_options& options() const noexcept { return options_; }
  [[nodiscard]] std::size_t steps() const noexcept { return steps_; }

 private:
  pam_options options_;
  masks_type top_;
  std::size_t steps_ = 0;
};

}  // namespace alloy
