// The CPU backend's block forms (evaluate_block) against the per-element forms they stand in for
// (operator(), what a GPU thread runs): the same bits for every element, on data with the values
// that branch-free code gets wrong first (NaN, infinities, -0, exact ties, zero task vectors).

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/align/pam.hpp"
#include "alloy/align/regularizers.hpp"
#include "alloy/exec/draws.hpp"
#include "alloy/merge/arcee_fusion_merge.hpp"
#include "alloy/merge/combination.hpp"
#include "alloy/merge/linear_merge.hpp"
#include "alloy/merge/magmax_merge.hpp"
#include "alloy/merge/model_stock_merge.hpp"
#include "alloy/merge/nearswap_merge.hpp"
#include "alloy/merge/sce_merge.hpp"
#include "alloy/merge/task_vector_merge.hpp"

using namespace alloy;

namespace {

constexpr std::size_t block = detail::block_elements;

// inputs columns of one block: column 0 the base, the others models close to it, with specials.
std::vector<std::vector<float>> block_columns(std::size_t inputs, unsigned seed) {
  std::vector<std::vector<float>> columns(inputs, std::vector<float>(block));
  std::uint32_t state = 2463534242u + seed;
  const auto next = [&] {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
  };
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), -0.0f, 0.0f, 1e-40f};
  for (std::size_t j = 0; j < block; ++j) {
    columns[0][j] = next() * 0.04f;
    for (std::size_t i = 1; i < inputs; ++i) {
      const float roll = next();
      // a tenth equal to the base (zero task vector), some equal to another model (ties)
      columns[i][j] = roll < -0.4f ? columns[0][j] : roll < -0.35f && i > 1 ? columns[i - 1][j] : columns[0][j] + next() * 0.002f;
    }
    if (j % 37 == 5) columns[1 + j % (inputs - 1)][j] = specials[(j / 37) % 6];
    if (j % 101 == 7) columns[0][j] = specials[(j / 101) % 6];
  }
  return columns;
}

template <class Kernel>
std::size_t differing_elements(const Kernel& kernel, const std::vector<std::vector<float>>& columns, std::size_t first) {
  std::vector<const float*> pointers;
  for (const auto& column : columns) pointers.push_back(column.data());
  std::vector<float> by_block(block);
  kernel.evaluate_block(pointers.data(), pointers.size(), block, first, by_block.data());
  std::size_t differing = 0;
  for (std::size_t j = 0; j < block; ++j) {
    const float by_element = kernel(detail::block_values{pointers.data(), j, pointers.size()}, first + j);
    differing += std::bit_cast<std::uint32_t>(by_element) != std::bit_cast<std::uint32_t>(by_block[j]) ? 1u : 0u;
  }
  return differing;
}

}  // namespace

TEST_CASE("linear-type sums: the block form gives the per-element bits", "[merge][block]") {
  for (std::size_t inputs : {1u, 2u, 3u, 8u, 9u, 12u, 17u, 20u}) {
    const auto columns = block_columns(inputs + 1, static_cast<unsigned>(inputs));
    std::vector<float> weights(inputs);
    for (std::size_t i = 0; i < inputs; ++i) weights[i] = 0.1f + 0.37f * static_cast<float>(i % 5) - (i == 2 ? 1.0f : 0.0f);
    const std::vector<std::vector<float>> used(columns.begin() + 1, columns.end());
    INFO(inputs << " inputs");
    CHECK(differing_elements(detail::weighted_sum_kernel{weights.data(), 0.3f}, used, 0) == 0);
  }
}

TEST_CASE("MagMax: the block form gives the per-element bits", "[merge][block]") {
  for (std::size_t models : {1u, 2u, 7u, 8u, 9u, 16u, 19u}) {
    INFO(models << " models");
    CHECK(differing_elements(detail::magmax_kernel{0.7f}, block_columns(models + 1, static_cast<unsigned>(models)), 0) == 0);
  }
}

TEST_CASE("nearswap: the branch-free kernel gives the branching formula's bits", "[merge][block]") {
  // mergekit's formula as first written (ternaries, a branch each); the kernel selects on the
  // bits so that its loop vectorises, and must choose the same value everywhere, NaN included.
  const auto branching = [](float a, float b, float t) {
    const float distance = a > b ? a - b : b - a;
    const float floor = distance < 1e-6f ? 1e-6f : distance;
    const float ratio = t / floor;
    const float weight = ratio < 0.0f ? 0.0f : ratio > 1.0f ? 1.0f : ratio;
    return weight * b + (1.0f - weight) * a;
  };
  for (const float t : {0.0f, 0.0005f, 0.002f, -0.5f, 2.0f, std::numeric_limits<float>::infinity()}) {
    const auto columns = block_columns(2, 11);
    const float* pointers[] = {columns[0].data(), columns[1].data()};
    std::size_t differing = 0;
    for (std::size_t j = 0; j < block; ++j) {
      const float got = detail::nearswap_kernel{t}(detail::block_values{pointers, j, 2}, j);
      differing += std::bit_cast<std::uint32_t>(got) != std::bit_cast<std::uint32_t>(branching(columns[0][j], columns[1][j], t)) ? 1u : 0u;
    }
    INFO("t = " << t);
    CHECK(differing == 0);
  }
}

TEST_CASE("task-vector kernel: the block form gives the per-element bits", "[merge][block]") {
  const std::size_t first = 3 * block;  // the keep bits and random draws depend on the position
  std::vector<std::uint64_t> bits((first + block) / 64);
  std::uint64_t z = 0x9e3779b97f4a7c15ull;
  for (auto& word : bits) word = z = mix64(z);
  for (std::size_t models : {1u, 2u, 3u, 8u, 11u, 16u, 18u}) {
    const auto columns = block_columns(models + 1, static_cast<unsigned>(models * 7));
    for (auto rule : {detail::task_vector_term::keep_rule::all, detail::task_vector_term::keep_rule::bits, detail::task_vector_term::keep_rule::random}) {
      std::vector<detail::task_vector_term> terms(models);
      for (std::size_t i = 0; i < models; ++i) {
        terms[i].weight = i == 1 ? 0.0f : 0.3f + 0.2f * static_cast<float>(i % 3);
        terms[i].scale = i % 2 == 0 ? 1.0f : 1.7f;
        terms[i].rule = rule;
        terms[i].bits = bits.data();
        terms[i].random_key = random_stream_key(5, "w", i);
        terms[i].keep_probability = 0.4f;
      }
      for (auto consensus : {sign_consensus::none, sign_consensus::sum, sign_consensus::count}) {
        for (bool normalize : {false, true}) {
          INFO(models << " models, keep rule " << static_cast<int>(rule) << ", consensus "
                      << static_cast<int>(consensus) << ", normalize " << normalize);
          CHECK(differing_elements(detail::task_vector_kernel{terms.data(), consensus, normalize, 0.9f}, columns, first) == 0);
        }
      }
    }
  }
}

TEST_CASE("uniform draws in blocks give the per-element draws at every dispatch level", "[exec][block][random]") {
  for (int level = 0; level <= static_cast<int>(detected_simd_level()); ++level) {
    const simd_level previous = set_simd_level(static_cast<simd_level>(level));
    for (const std::uint64_t key : {std::uint64_t{0}, random_stream_key(3, "layers.0.w", 2), ~std::uint64_t{0}}) {
      for (const std::uint64_t first : {std::uint64_t{0}, std::uint64_t{64 * 1001}, ~std::uint64_t{0} - 600}) {
        for (const std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{8}, std::size_t{13}, block}) {
          std::vector<float> draws(count);
          detail::at_active_simd_level([&] { detail::uniform_draws(key, first, count, draws.data()); });
          std::size_t differing = 0;
          for (std::size_t j = 0; j < count; ++j) {
            differing += std::bit_cast<std::uint32_t>(draws[j]) != std::bit_cast<std::uint32_t>(uniform01(key, first + j)) ? 1u : 0u;
          }
          INFO(to_string(static_cast<simd_level>(level)) << ", " << count << " draws from " << first);
          CHECK(differing == 0);
        }
      }
    }
    set_simd_level(previous);
  }
}

TEST_CASE("SCE: the block form gives the per-element bits, with and without a selection", "[merge][block]") {
  const std::size_t first = 5 * block;
  std::vector<std::uint64_t> bits((first + block) / 64);
  std::uint64_t z = 0x2545f4914f6cdd1dull;
  for (auto& word : bits) word = z = mix64(z);
  for (std::size_t models : {1u, 2u, 3u, 8u, 9u, 12u}) {
    const auto columns = block_columns(models + 1, static_cast<unsigned>(models * 3));
    std::vector<float> weights(models);
    for (std::size_t i = 0; i < models; ++i) weights[i] = i == 1 ? 0.0f : 0.05f + 0.3f * static_cast<float>(i % 4);
    for (const std::uint64_t* kept : {static_cast<const std::uint64_t*>(nullptr), static_cast<const std::uint64_t*>(bits.data())}) {
      INFO(models << " models, " << (kept == nullptr ? "no selection" : "a selection"));
      CHECK(differing_elements(detail::sce_kernel{weights.data(), kept}, columns, first) == 0);
    }
  }
}

TEST_CASE("SCE's variance: the block form gives the per-element bits", "[merge][block]") {
  for (std::size_t models : {1u, 2u, 3u, 5u, 8u, 9u, 12u}) {
    INFO(models << " models");
    CHECK(differing_elements(detail::task_vector_variance{}, block_columns(models + 1, static_cast<unsigned>(models * 5)), 0) == 0);
  }
}

TEST_CASE("per-row kernels: the block form finds each element's row as the per-element form does", "[merge][block]") {
  // Rows shorter than a block, longer than one, and strided, with the block starting mid-row.
  const std::size_t first = 7 * block;
  const std::size_t elements = first + 3 * block;
  const tensor_rows layouts[] = {tensor_rows::last_axis(shape{static_cast<std::int64_t>(elements / 96), 96}),
                                 tensor_rows::last_axis(shape{static_cast<std::int64_t>(elements / 1536), 1536}),
                                 tensor_rows::first_axis(shape{static_cast<std::int64_t>(elements / 24), 24}),
                                 tensor_rows::whole(elements)};
  for (const tensor_rows& rows : layouts) {
    std::vector<float> per_row(rows.count * 12);  // up to 12 coefficients per row
    for (std::size_t r = 0; r < per_row.size(); ++r) per_row[r] = 0.25f + 0.01f * static_cast<float>(r % 97);
    INFO(rows.count << " rows of " << rows.length << (rows.strided ? ", strided" : ""));
    const auto two = block_columns(2, 41);
    const detail::fusion_importance importance{per_row.data(), rows};
    CHECK(differing_elements(importance, two, first) == 0);
    CHECK(differing_elements(detail::fusion_kernel{importance, 0.0004f}, two, first) == 0);
    for (std::size_t inputs : {2u, 4u, 11u}) {
      const auto columns = block_columns(inputs, static_cast<unsigned>(inputs + 50));
      CHECK(differing_elements(detail::row_weighted_sum_kernel{per_row.data(), inputs, rows}, columns, first) == 0);
      CHECK(differing_elements(detail::interpolate_mean_kernel{per_row.data(), 1.0f / static_cast<float>(inputs - 1), rows},
                               columns, first) == 0);
    }
  }
}

TEST_CASE("PAM's and the regularizers' block forms give the per-element bits", "[merge][block][align]") {
  // Columns: G, T, and a gradient; the masks half set, from a seeded pattern; NaN and infinities in.
  const auto columns = block_columns(3, 41);
  std::vector<std::uint64_t> mask(block / 64 * 3);
  std::uint64_t state = 88172645463325252ull;
  for (auto& word : mask) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    word = state;
  }
  for (const std::size_t first : {std::size_t{0}, block, 2 * block}) {
    INFO("first " << first);
    const std::vector<std::vector<float>> pair(columns.begin(), columns.begin() + 2);
    for (const bool to_global : {false, true}) {
      CHECK(differing_elements(detail::pam_reset_kernel{mask.data(), to_global}, pair, first) == 0);
    }
    CHECK(differing_elements(detail::l2_pull_gradient{mask.data(), 0.7f}, columns, first) == 0);
    CHECK(differing_elements(detail::l2_pull_gradient{nullptr, 0.7f}, columns, first) == 0);
    CHECK(differing_elements(detail::sign_agreement_gradient{mask.data(), 1.3f}, columns, first) == 0);
    // The conflict mask: the block form's words against the per-element predicate.
    std::vector<const float*> pointers{pair[0].data(), pair[1].data()};
    std::uint64_t words[block / 64];
    const detail::pam_conflict conflict{mask.data()};
    conflict.select_block(pointers.data(), block, first, words);
    std::size_t differing = 0;
    for (std::size_t j = 0; j < block; ++j) {
      const bool by_element = conflict(detail::block_values{pointers.data(), j, 2}, first + j);
      differing += by_element != (((words[j >> 6] >> (j & 63)) & 1u) != 0) ? 1u : 0u;
    }
    CHECK(differing == 0);
  }
}

namespace {

// A reduction's block form (accumulate_block) against its per-element form, over `count` elements
// from `first`: sums agree to rounding (the block form adds in lanes, in another order), and are
// NaN, or the same infinity, together.
template <class Kernel>
void check_block_sums(const Kernel& kernel, const std::vector<std::vector<float>>& columns, std::size_t terms,
                      std::size_t first, std::size_t count) {
  std::vector<const float*> pointers;
  for (const auto& column : columns) pointers.push_back(column.data());
  std::vector<double> by_block(terms, 0.0), by_element(terms, 0.0);
  kernel.accumulate_block(pointers.data(), count, first, by_block.data());
  for (std::size_t j = 0; j < count; ++j) kernel(detail::block_values{pointers.data(), j, pointers.size()}, first + j, by_element.data());
  for (std::size_t t = 0; t < terms; ++t) {
    INFO("term " << t << ": per element " << by_element[t] << ", by block " << by_block[t]);
    if (std::isnan(by_element[t])) {
      CHECK(std::isnan(by_block[t]));
    } else {
      CHECK(by_block[t] == Approx(by_element[t]).epsilon(1e-12));
    }
  }
}

std::vector<std::vector<float>> finite_only(std::vector<std::vector<float>> columns) {
  for (auto& column : columns) {
    for (auto& x : column) x = std::isfinite(x) ? x : 0.01f;
  }
  return columns;
}

}  // namespace

TEST_CASE("the regularizers' block sums agree with the per-element sums", "[merge][block][align]") {
  std::vector<std::uint64_t> mask(block / 64 * 3);
  std::uint64_t state = 1181783497276652981ull;
  for (auto& word : mask) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    word = state;
  }
  for (const bool with_specials : {false, true}) {
    const auto columns = with_specials ? block_columns(3, 43) : finite_only(block_columns(3, 43));
    for (const std::size_t first : {std::size_t{0}, block, 2 * block}) {
      for (const std::size_t count : {block, std::size_t{301}, std::size_t{7}}) {
        INFO("specials " << with_specials << ", first " << first << ", count " << count);
        check_block_sums(detail::l2_pull_value{mask.data()}, columns, 1, first, count);
        check_block_sums(detail::l2_pull_value{nullptr}, columns, 1, first, count);
        check_block_sums(detail::sign_agreement_value{mask.data()}, columns, 1, first, count);
        check_block_sums(detail::cosine_sums{}, columns, 3, first, count);
      }
    }
  }
  // Without specials, the sums are finite and not trivially zero: the checks above compare numbers.
  std::vector<double> sums(1, 0.0);
  const auto columns = finite_only(block_columns(3, 43));
  const float* pointers[] = {columns[0].data(), columns[1].data(), columns[2].data()};
  detail::sign_agreement_value{mask.data()}.accumulate_block(pointers, block, 0, sums.data());
  CHECK(sums[0] > 0.0);
}

TEST_CASE("Gram sums: the block form is each pair's sum in lanes, with and without cached differences",
          "[merge][block]") {
  // Up to 8 vectors the block form computes each vector's differences once; more recompute them
  // per pair. Either way each sum is sum_in_lanes of the pair's f64 products (the bits it has always
  // had), and it agrees with the per-element sums.
  for (const bool from_origin : {true, false}) {
    for (const std::size_t vectors : {1u, 2u, 4u, 8u, 9u}) {
      const std::size_t inputs = vectors + (from_origin ? 1 : 0);
      const auto columns = finite_only(block_columns(std::max<std::size_t>(inputs, 2), static_cast<unsigned>(vectors)));
      std::vector<const float*> pointers;
      for (const auto& column : columns) pointers.push_back(column.data());
      const detail::gram_sums gram{vectors, from_origin};
      for (const std::size_t count : {block, std::size_t{301}, std::size_t{7}}) {
        INFO("vectors " << vectors << ", from origin " << from_origin << ", count " << count);
        std::vector<double> by_block(detail::gram_sums::terms(vectors), 0.0);
        gram.accumulate_block(pointers.data(), count, 0, by_block.data());
        const std::size_t first = from_origin ? 1 : 0;
        std::size_t at = 0;
        for (std::size_t i = 0; i < vectors; ++i) {
          for (std::size_t j = i; j < vectors; ++j, ++at) {
            const double expected = detail::sum_in_lanes(count, [&](std::size_t e) {
              const double o = from_origin ? static_cast<double>(columns[0][e]) : 0.0;
              return (static_cast<double>(columns[first + i][e]) - o) * (static_cast<double>(columns[first + j][e]) - o);
            });
            CHECK(std::bit_cast<std::uint64_t>(by_block[at]) == std::bit_cast<std::uint64_t>(expected));
          }
        }
        CHECK(by_block[0] > 0.0);
        check_block_sums(gram, columns, detail::gram_sums::terms(vectors), 0, count);
      }
    }
  }
}

TEST_CASE("summing in lanes: a fixed order, exact on small integers", "[exec][reduce]") {
  std::vector<double> terms(1001);
  for (std::size_t j = 0; j < terms.size(); ++j) terms[j] = static_cast<double>(j);
  const auto term = [&](std::size_t j) { return terms[j]; };
  CHECK(detail::sum_in_lanes(terms.size(), term) == 1000.0 * 1001.0 / 2.0);
  for (std::size_t count : {0u, 1u, 7u, 8u, 9u}) {
    double expected = 0.0;
    for (std::size_t j = 0; j < count; ++j) expected += terms[j];
    CHECK(detail::sum_in_lanes(count, term) == expected);
  }
  CHECK(detail::sum_in_lanes(64, [](std::size_t) { return 0.5f; }) == 32.0);
  // The lanes' order: 1e16 + 1 + 1 - 1e16 is 0 in one chain but 2 when the ones share no lane with 1e16.
  const double spread[] = {1e16, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1e16};
  CHECK(detail::sum_in_lanes(9, [&](std::size_t j) { return spread[j]; }) == 2.0);
}
