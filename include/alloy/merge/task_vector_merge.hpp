#pragma once
// Task-vector merging: task arithmetic, TIES, DARE, breadcrumbs and DELLA are one algorithm with
// different sparsification and sign-consensus steps (as mergekit's generalized task arithmetic).
//
// With base b, models m_i, weights w_i and task vectors d_i = m_i - b, per tensor:
//   1. sparsify each d_i (keep a subset of entries; optionally rescale what is kept)
//   2. weight:  e_i = w_i d_i
//   3. consensus (TIES family): per entry, the majority sign s = sign(sum_i e_i) (`sum`) or
//      sign(sum_i sign(e_i)) (`count`), with 0 counting as +; keep e_i whose sign equals s
//      (zero entries never agree)
//   4. mix:     m = sum of kept e_i;  divisor = sum of w_i over kept entries (with consensus) or
//      over all models (without); a zero divisor becomes 1
//   5. result = b + lambda * (normalize ? m / divisor : m)
// Everything is computed in f32 and rounded once into the output's dtype.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/draws.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/random.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/exec/select.hpp"
#include "alloy/merge/linear_merge.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

enum class sparsification : std::uint8_t {
  none,
  magnitude,           // TIES: keep the top `density` fraction of |d| (exactly floor(density n))
  random,              // DARE: keep each entry with probability `density`
  magnitude_outliers,  // breadcrumbs: drop the top `gamma` and the bottom, keep `density`
  magnitude_sampling,  // DELLA: keep with probability rising with |d|'s rank within its row
};

enum class sign_consensus : std::uint8_t { none, sum, count };

// How `rescale` scales what a sparsification keeps.
enum class rescale_rule : std::uint8_t {
  l1_norm,          // match the L1 norm of the whole task vector (mergekit's rescaled_masked_tensor)
  inverse_density,  // divide by the density (DARE's paper and mergekit before 2025; random masks only)
};

namespace detail {

// How one model's task vector enters the fused kernel for one tensor.
struct task_vector_term {
  enum class keep_rule : std::uint8_t { all, bits, random };
  float weight = 1.0f;
  float scale = 1.0f;  // rescaling of kept entries (1/density for DARE, a norm ratio otherwise)
  keep_rule rule = keep_rule::all;
  const std::uint64_t* bits = nullptr;
  std::uint64_t random_key = 0;
  float keep_probability = 1.0f;

  [[nodiscard]] ALLOY_HD bool keeps(std::size_t index) const noexcept {
    switch (rule) {
      case keep_rule::all: return true;
      case keep_rule::bits: return (bits[index >> 6] >> (index & 63)) & 1u;
      case keep_rule::random: return uniform01(random_key, index) < keep_probability;
    }
    return true;
  }
};

// The CPU's block form of term.keeps: keep[j] = 1 or 0 for elements [first, first + count).
inline void expand_keeps(const task_vector_term& term, std::size_t first, std::size_t count, std::uint32_t* keep) {
  switch (term.rule) {
    case task_vector_term::keep_rule::all:
      for (std::size_t j = 0; j < count; ++j) keep[j] = 1;
      break;
    case task_vector_term::keep_rule::bits:
      unpack_bits(term.bits, first, count, keep);
      break;
    case task_vector_term::keep_rule::random: {
      alignas(64) float draws[block_elements];
      uniform_draws(term.random_key, first, count, draws);
      for (std::size_t j = 0; j < count; ++j) keep[j] = draws[j] < term.keep_probability;
      break;
    }
  }
}

// The per-element math of steps 2-5; values[0] is the base, values[1 + i] model i. Steps 3-5 are
// written once (`combine`), without branches on the data, for both of its forms: per element
// (operator(), what a GPU thread runs) and per block of the CPU backend (evaluate_block, where the
// keep decisions are expanded first so that the arithmetic vectorises). Both give the same bits.
struct task_vector_kernel {
  const task_vector_term* terms = nullptr;  // one per model: values.size() - 1
  sign_consensus consensus = sign_consensus::none;
  bool normalize = false;
  float lambda = 1.0f;

  template <class Values>
  [[nodiscard]] ALLOY_HD float weighted_delta(const Values& values, std::size_t i, std::size_t index) const {
    const task_vector_term& term = terms[i];
    if (!term.keeps(index)) return 0.0f;
    return term.weight * ((values[1 + i] - values[0]) * term.scale);
  }

  // Steps 3-5 for one element from its weighted kept deltas e(i), i < count. A skipped term and an
  // added zero are the same here: the sums start at +0 and never become -0.
  template <sign_consensus Consensus, bool Normalize, class Deltas, class Weights>
  [[nodiscard]] ALLOY_HD ALLOY_ALWAYS_INLINE static float combine(const Deltas& e, const Weights& weight, std::size_t count,
                                                                  float base, float lambda) {
    float mixed = 0.0f;
    float divisor = 0.0f;
    if constexpr (Consensus == sign_consensus::none) {
      for (std::size_t i = 0; i < count; ++i) {
        mixed += e(i);
        divisor += weight(i);
      }
      const bool tiny = (divisor < 1e-8f) & (divisor > -1e-8f);
      divisor = detail::keep_or_zero(!tiny, divisor) + detail::keep_or_zero(tiny, 1.0f);
    } else {
      float election = 0.0f;
      for (std::size_t i = 0; i < count; ++i) {
        const float ei = e(i);
        if constexpr (Consensus == sign_consensus::sum) {
          election += ei;
        } else {
          election += static_cast<float>((ei > 0.0f) - (ei < 0.0f));
        }
      }
      const bool positive = election >= 0.0f;
      for (std::size_t i = 0; i < count; ++i) {
        const float ei = e(i);
        const bool agree = (positive & (ei > 0.0f)) | (!positive & (ei < 0.0f));
        mixed += detail::keep_or_zero(agree, ei);
        divisor += detail::keep_or_zero(agree, weight(i));
      }
      divisor += detail::keep_or_zero(divisor == 0.0f, 1.0f);
    }
    if constexpr (Normalize) mixed /= divisor;
    return base + lambda * mixed;
  }

  // e(i) at one element: computed once for the first `buffered` models (random masks hash per
  // call), recomputed beyond.
  template <class Values>
  struct element_deltas {
    static constexpr std::size_t buffered = 16;
    const task_vector_kernel* kernel;
    const Values* values;
    std::size_t index;
    float e[buffered];
    ALLOY_HD float operator()(std::size_t i) const { return i < buffered ? e[i] : kernel->weighted_delta(*values, i, index); }
  };

  struct term_weights {
    const task_vector_term* terms;
    ALLOY_HD float operator()(std::size_t i) const { return terms[i].weight; }
  };
  // The block form's e(i) and w_i (named types: combine is compiled for the device too).
  struct block_deltas {
    const float* deltas;  // deltas[i * block_elements + j]: model i's weighted kept delta at element j
    std::size_t j;
    ALLOY_HD float operator()(std::size_t i) const { return deltas[i * detail::block_elements + j]; }
  };
  struct array_weights {
    const float* weights;
    ALLOY_HD float operator()(std::size_t i) const { return weights[i]; }
  };

  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t index) const {
    const std::size_t count = values.size() - 1;
    element_deltas<Values> e{this, &values, index, {}};
    for (std::size_t i = 0; i < count && i < e.buffered; ++i) e.e[i] = weighted_delta(values, i, index);
    const term_weights w{terms};
    const float b = values[0];
    using mode = sign_consensus;
    switch (consensus) {  // no lambdas here: this runs in device code too
      case mode::none:
        return normalize ? combine<mode::none, true>(e, w, count, b, lambda) : combine<mode::none, false>(e, w, count, b, lambda);
      case mode::sum:
        return normalize ? combine<mode::sum, true>(e, w, count, b, lambda) : combine<mode::sum, false>(e, w, count, b, lambda);
      case mode::count:
        return normalize ? combine<mode::count, true>(e, w, count, b, lambda) : combine<mode::count, false>(e, w, count, b, lambda);
    }
    return b;
  }

  // The CPU backend's form (elementwise.hpp): columns[0] the base, columns[1 + i] model i. Up to
  // 8 models and 16 the count is fixed at compile time, so that the loops over models unroll.
  void evaluate_block(const float* const* columns, std::size_t inputs, std::size_t count, std::size_t first,
                      float* results) const {
    const auto fixed = [&]<std::size_t Models>(std::integral_constant<std::size_t, Models>) {
      evaluate_models<Models>(columns, count, first, results);
    };
    const std::size_t models = inputs - 1;
    if (detail::with_fixed_count<8>(models, fixed)) return;
    if (models == 16) return fixed(std::integral_constant<std::size_t, 16>{});
    for (std::size_t j = 0; j < count; ++j) results[j] = (*this)(detail::block_values{columns, j, inputs}, first + j);
  }

 private:
  template <std::size_t models>
  void evaluate_models(const float* const* columns, std::size_t count, std::size_t first,
                       float* ALLOY_RESTRICT results) const {
    constexpr std::size_t block = detail::block_elements;
    // Locals, so that the compiler knows the stores into `results` change none of them.
    alignas(64) float deltas[models][block];
    float weights[models];
    for (std::size_t i = 0; i < models; ++i) weights[i] = terms[i].weight;
    const float scaled_by = lambda;
    for (std::size_t i = 0; i < models; ++i) {
      alignas(64) std::uint32_t keep[block];
      const task_vector_term& term = terms[i];
      expand_keeps(term, first, count, keep);
      const float* base = columns[0];
      const float* model = columns[1 + i];
      const float weight = term.weight;
      const float scale = term.scale;
      float* delta = deltas[i];
      for (std::size_t j = 0; j < count; ++j) {
        const float d = weight * ((model[j] - base[j]) * scale);
        delta[j] = detail::keep_or_zero(keep[j] != 0, d);
      }
    }
    const float* base = columns[0];
    dispatch([&](auto combined) {
      for (std::size_t j = 0; j < count; ++j) {
        results[j] = combined(block_deltas{deltas[0], j}, array_weights{weights}, models, base[j], scaled_by);
      }
      return 0.0f;
    });
  }

  // Calls body(combine<C, N>) for this kernel's consensus and normalisation, so that the loop in
  // body is compiled without branches on either.
  template <class Body>
  float dispatch(const Body& body) const {
    const auto with = [&](auto consensus_mode, auto normalized) {
      return body([](const auto& e, const auto& weights, std::size_t count, float base, float scale) {
        return combine<decltype(consensus_mode)::value, decltype(normalized)::value>(e, weights, count, base, scale);
      });
    };
    using none = std::integral_constant<sign_consensus, sign_consensus::none>;
    using sum = std::integral_constant<sign_consensus, sign_consensus::sum>;
    using count = std::integral_constant<sign_consensus, sign_consensus::count>;
    switch (consensus) {
      case sign_consensus::none: return normalize ? with(none{}, std::true_type{}) : with(none{}, std::false_type{});
      case sign_consensus::sum: return normalize ? with(sum{}, std::true_type{}) : with(sum{}, std::false_type{});
      case sign_consensus::count: return normalize ? with(count{}, std::true_type{}) : with(count{}, std::false_type{});
    }
    return 0.0f;
  }
};

// |m_i - b|'s ranked quantity: values[0] is the base, values[1] the model.
struct task_vector_delta {
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const {
    return values[1] - values[0];
  }
};

// The L1 norms of the task vectors of models[r] (r < count), whole and as their terms keep them (a
// mask's bits, or DARE's random draws): sums[2 r] += |d|, sums[2 r + 1] += |d| where kept. One pass
// over the base and every model gives every model's norms; values[0] is the base, values[1 + i]
// model i.
struct kept_l1_norms {
  const task_vector_term* terms = nullptr;  // every model's
  const std::uint32_t* models = nullptr;
  std::size_t count = 0;

  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t index, Sums&& sums) const {
    for (std::size_t r = 0; r < count; ++r) {
      const std::uint32_t i = models[r];
      const float delta = values[1 + i] - values[0];
      const double magnitude = delta < 0 ? -static_cast<double>(delta) : static_cast<double>(delta);
      sums[2 * r] += magnitude;
      if (terms[i].keeps(index)) sums[2 * r + 1] += magnitude;
    }
  }
  // The CPU's block form: the keep decisions expanded first, the sums in lanes without branches.
  void accumulate_block(const float* const* columns, std::size_t block, std::size_t first, double* sums) const {
    alignas(64) std::uint32_t keep[block_elements];
    for (std::size_t r = 0; r < count; ++r) {
      const std::uint32_t i = models[r];
      expand_keeps(terms[i], first, block, keep);
      const float *base = columns[0], *model = columns[1 + i];
      const auto magnitude = [&](std::size_t j) {
        const float delta = model[j] - base[j];
        return delta < 0 ? -delta : delta;  // |d| in f32 is exact, and widens exactly
      };
      sums[2 * r] += sum_in_lanes(block, magnitude);
      sums[2 * r + 1] += sum_in_lanes(block, [&](std::size_t j) {
        return std::bit_cast<float>(std::bit_cast<std::uint32_t>(magnitude(j)) & (0u - keep[j]));
      });
    }
  }
};

}  // namespace detail

class task_vector_merge {
 public:
  std::string_view method = "task_arithmetic";  // the config name, used in messages
  sparsification sparsify = sparsification::none;
  sign_consensus consensus = sign_consensus::none;
  bool normalize = false;
  bool rescale = false;
  rescale_rule rescale_by = rescale_rule::l1_norm;
  double lambda = 1.0;
  std::uint64_t seed = 0;

  // mergekit's methods with mergekit's defaults.
  static task_vector_merge task_arithmetic() { return {"task_arithmetic", sparsification::none, sign_consensus::none, false, false}; }
  static task_vector_merge ties() { return {"ties", sparsification::magnitude, sign_consensus::sum, true, false}; }
  static task_vector_merge dare_linear() { return {"dare_linear", sparsification::random, sign_consensus::none, false, true}; }
  static task_vector_merge dare_ties() { return {"dare_ties", sparsification::random, sign_consensus::sum, false, true}; }
  static task_vector_merge breadcrumbs() { return {"breadcrumbs", sparsification::magnitude_outliers, sign_consensus::none, false, false}; }
  static task_vector_merge breadcrumbs_ties() { return {"breadcrumbs_ties", sparsification::magnitude_outliers, sign_consensus::sum, false, false}; }
  static task_vector_merge della() { return {"della", sparsification::magnitude_sampling, sign_consensus::sum, true, true}; }
  static task_vector_merge della_linear() { return {"della_linear", sparsification::magnitude_sampling, sign_consensus::none, false, true}; }

  [[nodiscard]] static constexpr bool needs_base() noexcept { return true; }

  // Runs on any backend: the CPU's, or alloy::cuda's with device tensors.
  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(method, in, output, true, 0);
    detail::check_finite(method, in.name, "lambda", lambda);
    const std::size_t k = in.models.size();

    const std::vector<const_tensor_view> inputs = detail::base_and_models(in);
    std::vector<detail::task_vector_term> terms(k);
    std::vector<mask_type_t<Backend>> masks(k);
    std::vector<std::uint32_t> rescaled;  // models whose kept entries match their task vector's L1 norm
    for (std::size_t i = 0; i < k; ++i) {
      bool by_l1_norm = false;
      terms[i] = prepare_term(backend, in, i, masks[i], by_l1_norm);
      if (by_l1_norm) rescaled.push_back(static_cast<std::uint32_t>(i));
    }
    if (!rescaled.empty()) rescale_to_l1_norms(backend, inputs, in.base->numel(), terms, rescaled);
    const bool dense = std::all_of(terms.begin(), terms.end(), [](const detail::task_vector_term& t) {
      return t.rule == detail::task_vector_term::keep_rule::all;
    });
    if (dense && consensus == sign_consensus::none) {
      // Without masks or election the merge is linear in its inputs:
      //   b + c sum_i w_i (m_i - b) = (1 - c sum_i w_i) b + sum_i c w_i m_i,  c = lambda / divisor,
      // which runs as a vectorised weighted sum.
      double weight_sum = 0.0;
      for (const auto& t : terms) weight_sum += static_cast<double>(t.weight);
      const double divisor = normalize && std::fabs(weight_sum) >= 1e-8 ? weight_sum : 1.0;
      const double c = lambda / divisor;
      std::vector<float> coefficients{static_cast<float>(1.0 - c * weight_sum)};
      for (const auto& t : terms) coefficients.push_back(static_cast<float>(c * static_cast<double>(t.weight)));
      const float* staged = stage_arguments(backend, std::span<const float>(coefficients));
      elementwise(backend, output, inputs, detail::weighted_sum_kernel{staged, 1.0f});
      return;
    }
    const detail::task_vector_term* staged = stage_arguments(backend, std::span<const detail::task_vector_term>(terms));
    elementwise(backend, output, inputs, detail::task_vector_kernel{staged, consensus, normalize, static_cast<float>(lambda)});
  }

 private:
  // The term of one model, its mask drawn where it has one; by_l1_norm says that its scale is
  // still to be set from the norms (rescale_to_l1_norms, one pass for every such model).
  template <class Backend, class Mask>
  detail::task_vector_term prepare_term(const Backend& backend, const merge_inputs& in, std::size_t model, Mask& mask,
                                        bool& by_l1_norm) const {
    const model_parameters& p = in.parameters[model];
    detail::task_vector_term term;
    term.weight = static_cast<float>(p.weight);
    const std::size_t n = in.base->numel();
    const const_tensor_view pair[] = {*in.base, in.models[model]};
    if (sparsify == sparsification::none) return term;

    detail::check_unit_interval(method, in.name, "density", p.density);
    if (p.density >= 1.0) return term;  // as mergekit: full density keeps the task vector as is

    switch (sparsify) {
      case sparsification::none: break;
      case sparsification::random:
        term.rule = detail::task_vector_term::keep_rule::random;
        term.random_key = random_stream_key(seed, in.name, model);
        term.keep_probability = static_cast<float>(p.density);
        if (rescale && rescale_by == rescale_rule::inverse_density) {
          // Each kept entry by 1/density: the task vector is unchanged in expectation.
          term.scale = p.density > 0 ? static_cast<float>(1.0 / p.density) : 0.0f;
        } else if (rescale) {
          // The norms and the merge both need the draws: each pass draws them again (a hash on
          // vector lanes costs less than a pass that writes them into a mask and one more read).
          by_l1_norm = true;
        }
        return term;
      case sparsification::magnitude: {
        const auto keep = static_cast<std::size_t>(p.density * static_cast<double>(n));
        mask = rank_band_mask(backend, pair, n, detail::task_vector_delta{}, 0, keep);
        break;
      }
      case sparsification::magnitude_outliers: {
        detail::check_unit_interval(method, in.name, "gamma", p.gamma);
        const auto target = static_cast<std::int64_t>(p.density * static_cast<double>(n));
        auto top = static_cast<std::int64_t>(p.gamma * static_cast<double>(n));
        const std::int64_t bottom = static_cast<std::int64_t>(n) - target - top;
        if (bottom < 0) top += bottom;  // fewer outliers dropped, to reach the density
        mask = rank_band_mask(backend, pair, n, detail::task_vector_delta{}, static_cast<std::size_t>(top),
                              static_cast<std::size_t>(top + target));
        break;
      }
      case sparsification::magnitude_sampling:
        mask = della_mask(backend, in, model, p);
        break;
    }
    term.rule = detail::task_vector_term::keep_rule::bits;
    term.bits = mask.words();
    by_l1_norm = rescale;
    return term;
  }

  // mergekit's rescaled_masked_tensor with the L1 norm, for each of `rescaled`: scale =
  // |d|_1 / |kept d|_1, or 1 when either is below 1e-7. Every model's norms in one pass over the
  // base and the models (each model's sums are what a pass over its pair alone would give).
  template <class Backend>
  static void rescale_to_l1_norms(const Backend& backend, std::span<const const_tensor_view> inputs, std::size_t n,
                                  std::vector<detail::task_vector_term>& terms, const std::vector<std::uint32_t>& rescaled) {
    const detail::task_vector_term* staged_terms = stage_arguments(backend, std::span<const detail::task_vector_term>(terms));
    const std::uint32_t* staged_models = stage_arguments(backend, std::span<const std::uint32_t>(rescaled));
    const auto norms = reduce_sums(backend, inputs, n, 2 * rescaled.size(),
                                   detail::kept_l1_norms{staged_terms, staged_models, rescaled.size()});
    for (std::size_t r = 0; r < rescaled.size(); ++r) {
      const double whole = norms[2 * r], kept = norms[2 * r + 1];
      terms[rescaled[r]].scale = whole >= 1e-7 && kept >= 1e-7 ? static_cast<float>(whole / kept) : 1.0f;
    }
  }

  // DELLA's MAGPRUNE: within each row (the first dimension; a 1-D tensor is one row), rank the
  // entries by |d| ascending (ties by position), and keep entry r of L with probability
  //   p_r = (density - epsilon) + 2 epsilon (r - 1) / (L - 1)   (p = density when L = 1).
  template <class Backend>
  mask_type_t<Backend> della_mask(const Backend& backend, const merge_inputs& in, std::size_t model,
                                  const model_parameters& p) const {
    detail::check_finite(method, in.name, "epsilon", p.epsilon);
    const std::size_t n = in.base->numel();
    if (p.density <= 0.0) return rank_band_mask(backend, std::span<const const_tensor_view>{}, n, detail::task_vector_delta{}, 0, 0);
    if (p.density + p.epsilon >= 1.0 || p.density - p.epsilon <= 0.0) {
      detail::fail(error_code::invalid_argument, method, ": density ", p.density, " and epsilon ", p.epsilon,
                   " for tensor ", detail::quoted{in.name}, " must keep density +/- epsilon inside (0, 1)");
    }
    const const_tensor_view pair[] = {*in.base, in.models[model]};
    const std::size_t rows = in.base->shape().rank() >= 2 ? static_cast<std::size_t>(in.base->shape()[0]) : 1;
    const std::size_t row_length = rows == 0 ? 0 : n / rows;
    return rank_sampling_mask(backend, pair, rows, row_length, detail::task_vector_delta{}, random_stream_key(seed, in.name, model),
                              p.density - p.epsilon, 2.0 * p.epsilon);
  }
};

}  // namespace alloy
