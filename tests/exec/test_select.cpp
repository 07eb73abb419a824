#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/exec/select.hpp"
#include "tensor_builders.hpp"

using namespace alloy;

namespace {

bit_mask band(const std::vector<float>& values, std::size_t first, std::size_t last, int threads = 0) {
  const const_tensor_view view(std::span<const float>(values), shape{static_cast<std::int64_t>(values.size())});
  const const_tensor_view inputs[] = {view};
  return rank_band_mask(cpu_backend{threads}, inputs, values.size(), [](const auto& v, std::size_t) { return v[0]; },
                        first, last);
}

}  // namespace

TEST_CASE("the k-th largest magnitude is exact", "[exec][select]") {
  std::vector<float> values{3, -7, 1, 7, -2, 0, 5};
  const const_tensor_view view(std::span<const float>(values), shape{7});
  CHECK(kth_largest_magnitude(cpu_backend{}, view, 1) == 7.0f);
  CHECK(kth_largest_magnitude(cpu_backend{}, view, 2) == 7.0f);
  CHECK(kth_largest_magnitude(cpu_backend{}, view, 3) == 5.0f);
  CHECK(kth_largest_magnitude(cpu_backend{}, view, 7) == 0.0f);
  CHECK_THROWS_AS(kth_largest_magnitude(cpu_backend{}, view, 8), error);
}

TEST_CASE("nth_largest is the order statistic of a derived value", "[exec][select]") {
  const std::size_t n = 200003;  // several chunks
  std::vector<float> a = alloy::testing::random_values(n, 8);
  std::vector<float> b = alloy::testing::random_values(n, 9);
  for (std::size_t i = 0; i < n; i += 3) b[i] = a[i] + 0.25f;  // many equal values
  const const_tensor_view inputs[] = {const_tensor_view(std::span<const float>(a), shape{static_cast<std::int64_t>(n)}),
                                      const_tensor_view(std::span<const float>(b), shape{static_cast<std::int64_t>(n)})};
  const auto distance = [](const auto& v, std::size_t) { return v[1] - v[0]; };
  std::vector<float> sorted(n);
  for (std::size_t i = 0; i < n; ++i) sorted[i] = detail::rank_magnitude(b[i] - a[i]);
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  for (const std::size_t position : {std::size_t{0}, std::size_t{1}, n / 4, n / 2, n - 2, n - 1}) {
    INFO(position);
    CHECK(nth_largest(cpu_backend{}, inputs, n, distance, position) == sorted[position]);
    CHECK(nth_largest(cpu_backend{1}, inputs, n, distance, position) == sorted[position]);
  }
  CHECK_THROWS_AS(nth_largest(cpu_backend{}, inputs, n, distance, n), error);

  // Several positions in the same passes: each the order statistic, whatever the thread count,
  // positions repeated or out of order, prefixes shared or not.
  const std::vector<std::size_t> positions{n / 2, 0, n - 1, n / 4, n / 2, 3 * n / 4, 1, n / 4 + 1};
  for (const int threads : {0, 1, 3}) {
    const std::vector<float> each = nth_largest_each(cpu_backend{threads}, inputs, n, distance, positions);
    REQUIRE(each.size() == positions.size());
    for (std::size_t t = 0; t < positions.size(); ++t) {
      INFO("threads " << threads << ", position " << positions[t]);
      CHECK(each[t] == sorted[positions[t]]);
    }
  }
  CHECK(nth_largest_each(cpu_backend{}, inputs, n, distance, std::span<const std::size_t>{}).empty());
  const std::size_t beyond[] = {0, n};
  CHECK_THROWS_AS(nth_largest_each(cpu_backend{}, inputs, n, distance, beyond), error);
}

TEST_CASE("a band mask keeps exactly its ranks, ties by position", "[exec][select]") {
  //                           0  1   2  3  4   5  6
  const std::vector<float> v{2, -5, 2, 1, 5, -2, 0};
  // rank order: 1 (|-5|, first), 4, 0, 2, 5 (the 2s by position), 3, 6
  const auto top3 = band(v, 0, 3);
  CHECK(top3.count() == 3);
  CHECK(top3.test(1));
  CHECK(top3.test(4));
  CHECK(top3.test(0));
  CHECK_FALSE(top3.test(2));
  const auto middle = band(v, 2, 5);  // positions 2..4: elements 0, 2, 5
  CHECK(middle.count() == 3);
  CHECK((middle.test(0) && middle.test(2) && middle.test(5)));
  CHECK(band(v, 0, 0).count() == 0);
  CHECK(band(v, 0, 7).count() == 7);
  CHECK(band(v, 3, 100).count() == 4);
}

TEST_CASE("band masks agree with a full sort on large tensors with many ties", "[exec][select]") {
  // bf16-like data: few distinct magnitudes, spanning several chunks of the backend.
  const std::size_t n = cpu_backend::chunk_elements * 3 + 1234;
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<float>(static_cast<int>((i * 2654435761u) % 61) - 30) / 8.0f;
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return std::fabs(v[a]) > std::fabs(v[b]); });
  for (auto [first, last] : {std::pair<std::size_t, std::size_t>{0, n / 3}, {n / 10, n / 2}, {17, n - 5}}) {
    std::vector<bool> want(n);
    for (std::size_t r = first; r < last; ++r) want[order[r]] = true;
    for (int threads : {1, 2}) {
      const auto mask = band(v, first, last, threads);
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < n; ++i) wrong += mask.test(i) != want[i] ? 1u : 0u;
      CHECK(wrong == 0);
      CHECK(mask.count() == last - first);
    }
  }
}

TEST_CASE("NaN ranks as the largest magnitude", "[exec][select]") {
  const std::vector<float> v{1, std::numeric_limits<float>::quiet_NaN(), -3};
  const auto top1 = band(v, 0, 1);
  CHECK(top1.test(1));
  CHECK(top1.count() == 1);
}

namespace {

// The mask of rank positions [first, last) by a stable sort on magnitude (NaN largest).
std::vector<bool> sorted_band(const std::vector<float>& v, std::size_t first, std::size_t last) {
  const auto magnitude = [](float x) { return std::isnan(x) ? std::numeric_limits<float>::infinity() : std::fabs(x); };
  std::vector<std::size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return magnitude(v[a]) > magnitude(v[b]); });
  std::vector<bool> want(v.size());
  for (std::size_t r = first; r < last; ++r) want[order[r]] = true;
  return want;
}

std::size_t differences(const bit_mask& mask, const std::vector<bool>& want) {
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < want.size(); ++i) wrong += mask.test(i) != want[i] ? 1u : 0u;
  return wrong;
}

}  // namespace

// Tensors of a million elements and more take the one-pass path, where a sample brackets the
// boundary; it must give the sort's answer whatever the data does to the sample.
TEST_CASE("band masks of large tensors agree with a full sort", "[exec][select]") {
  const std::size_t n = (std::size_t{1} << 20) + 4099;
  std::vector<std::pair<const char*, std::vector<float>>> cases;
  {
    std::vector<float> v(n);  // smooth, distinct magnitudes, with NaN, -0 and infinities among them
    for (std::size_t i = 0; i < n; ++i) v[i] = std::sin(static_cast<float>(i) * 0.7071f) * static_cast<float>(1 + i % 97);
    v[5] = std::numeric_limits<float>::quiet_NaN();
    v[77777] = -0.0f;
    v[n - 1] = -std::numeric_limits<float>::infinity();
    cases.emplace_back("smooth", std::move(v));
  }
  {
    std::vector<float> v(n);  // bf16-like: 41 distinct magnitudes, heavy ties at every boundary
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<float>(static_cast<int>((i * 2654435761u) % 81) - 40) / 16.0f;
    cases.emplace_back("ties", std::move(v));
  }
  {
    std::vector<float> v(n, 0.0f);  // mostly zero task vector: the boundary inside the zeros
    for (std::size_t i = 0; i < n; i += 7) v[i] = static_cast<float>(i % 1000) + 1.0f;
    cases.emplace_back("sparse", std::move(v));
  }
  {
    // Adversarial for the sample: the 16 elements at the start of every sampled run are tiny,
    // everything else large, so the sample's bracket misses the boundary.
    std::vector<float> v(n);
    const std::size_t stride = n / 4096;
    for (std::size_t i = 0; i < n; ++i) v[i] = i % stride < 16 ? 1e-6f * static_cast<float>(i % 16) : 1.0f + static_cast<float>(i % 13);
    cases.emplace_back("misleading sample", std::move(v));
  }
  // Both paths are exercised: the bracket holds on smooth data and is refused on the misleading
  // one; a band's two boundaries are bracketed in one pass unless the band is too narrow for
  // their brackets not to overlap.
  const auto bracketed = [](const std::vector<float>& v, std::size_t first, std::size_t last) {
    const const_tensor_view view(std::span<const float>(v), shape{static_cast<std::int64_t>(v.size())});
    const const_tensor_view inputs[] = {view};
    return detail::bracketed_rank_band(cpu_backend{}, inputs, v.size(), [](const auto& x, std::size_t) { return x[0]; },
                                       first, last)
        .has_value();
  };
  CHECK(bracketed(cases[0].second, 0, n / 2));
  CHECK(bracketed(cases[0].second, n / 100, n / 2));
  CHECK_FALSE(bracketed(cases[0].second, n / 3, n / 3 + 5));
  CHECK_FALSE(bracketed(cases[3].second, 0, n / 2));
  CHECK_FALSE(bracketed(cases[3].second, n / 100, n / 2));
  for (const auto& [name, v] : cases) {
    for (auto [first, last] : {std::pair<std::size_t, std::size_t>{0, n / 2}, {0, n / 10}, {0, n - 3}, {0, 1},
                               {n / 100, n / 3}, {n / 100, n - n / 10}, {1, n - 1}, {n / 3, n / 3 + 5},
                               {n / 2, n - 3}}) {
      INFO(name << ": ranks [" << first << ", " << last << ")");
      const auto want = sorted_band(v, first, last);
      for (int threads : {1, 2}) {
        const auto mask = band(v, first, last, threads);
        CHECK(differences(mask, want) == 0);
        CHECK(mask.count() == last - first);
      }
    }
  }
}

TEST_CASE("magnitude sampling decides each element as the sorted row's rank would", "[exec][select]") {
  // keep_below_rank_probability ranks only the elements its buckets leave undecided; every
  // decision must equal draw < probability[rank] with the rank from a stable sort of the row.
  std::vector<std::vector<float>> rows;
  std::uint64_t state = 12345;
  const auto next = [&] {  // SplitMix64: any fixed sequence will do
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  const auto unit = [&] { return static_cast<double>(next() >> 11) * 0x1p-53; };
  const auto normal = [&] {  // Box-Muller
    return std::sqrt(-2.0 * std::log(1.0 - unit())) * std::cos(6.283185307179586 * unit());
  };
  const auto bf16 = [](float x) { return static_cast<float>(bfloat16(x)); };
  for (const std::size_t length : {4096u, 1000u, 37u}) {
    std::vector<float> gaussian(length), rounded(length), half_zero(length), clustered(length), wide(length);
    for (std::size_t i = 0; i < length; ++i) {
      const auto base = static_cast<float>(0.02 * normal());
      const auto tuned = base + static_cast<float>(0.002 * normal());
      gaussian[i] = std::fabs(tuned - base);
      rounded[i] = std::fabs(bf16(tuned) - bf16(base));  // bf16 models: many equal magnitudes
      half_zero[i] = i % 2 == 0 ? 0.0f : rounded[i];
      clustered[i] = i == length / 2 ? 1e30f : 1.0f + static_cast<float>(unit()) * 0x1p-10f;  // one bucket takes nearly all
      wide[i] = std::bit_cast<float>(static_cast<std::uint32_t>(next() & 0x7f7fffffu));
    }
    for (auto* row : {&gaussian, &rounded, &half_zero, &clustered, &wide}) rows.push_back(*row);
  }
  rows.push_back(std::vector<float>(300, 0.5f));
  rows.push_back({0.0f, std::numeric_limits<float>::infinity(), 0.0f, 1.0f});
  rows.push_back({2.0f});
  struct table { double lowest, spread; };
  const table tables[] = {{0.4, 0.2}, {0.0, 1.0}, {0.9, -0.8}, {0.5, 0.0}};
  detail::row_rank_scratch scratch;
  std::vector<std::uint64_t> order, sort_scratch;
  for (const auto& row : rows) {
    const std::size_t n = row.size();
    std::vector<std::uint32_t> sorted(n);
    std::iota(sorted.begin(), sorted.end(), 0u);
    std::stable_sort(sorted.begin(), sorted.end(), [&](std::uint32_t a, std::uint32_t b) { return row[a] < row[b]; });
    std::vector<float> draw(n);
    for (auto& d : draw) d = static_cast<float>(unit());
    for (const table& t : tables) {
      std::vector<float> probability(n);
      for (std::size_t r = 0; r < n; ++r) probability[r] = detail::rank_keep_probability(r, n, t.lowest, t.spread);
      std::vector<std::uint8_t> expected(n), got(n, 7);
      for (std::size_t r = 0; r < n; ++r) expected[sorted[r]] = draw[sorted[r]] < probability[r] ? 1 : 0;
      detail::keep_below_rank_probability(row, draw.data(), probability, got.data(), scratch);
      INFO("row of " << n << ", first value " << row[0] << ", probabilities from " << t.lowest << " by " << t.spread);
      CHECK(got == expected);
    }
  }
}

TEST_CASE("the row ranks of magnitude sampling are std::stable_sort's order", "[exec][select]") {
  // Rows with many equal magnitudes (zeros, repeated values, infinity), rows whose values share
  // bytes (the radix passes that are skipped), one element, and none.
  std::vector<std::vector<float>> rows;
  std::vector<float> mixed(5000);
  for (std::size_t i = 0; i < mixed.size(); ++i) {
    const double x = std::sin(0.7 * static_cast<double>(i));
    mixed[i] = i % 7 == 0 ? 0.0f : i % 11 == 0 ? 0.25f : i % 503 == 0 ? std::numeric_limits<float>::infinity()
                                                                       : static_cast<float>(std::fabs(x) * 1e-3);
  }
  rows.push_back(mixed);
  std::vector<float> close(300);
  for (std::size_t i = 0; i < close.size(); ++i) close[i] = 1.0f + static_cast<float>(i % 13) * 0x1p-23f;
  rows.push_back(close);
  rows.push_back(std::vector<float>(64, 3.0f));
  rows.push_back({2.0f});
  rows.push_back({});
  std::vector<std::uint64_t> order, scratch;
  for (const auto& row : rows) {
    std::vector<std::uint32_t> expected(row.size());
    std::iota(expected.begin(), expected.end(), 0u);
    std::stable_sort(expected.begin(), expected.end(), [&](std::uint32_t a, std::uint32_t b) { return row[a] < row[b]; });
    detail::ascending_positions(row, order, scratch);
    REQUIRE(order.size() == row.size());
    std::vector<std::uint32_t> got(row.size());
    for (std::size_t r = 0; r < row.size(); ++r) got[r] = static_cast<std::uint32_t>(order[r] & 0xffffffffu);
    INFO("row of " << row.size());
    CHECK(got == expected);
  }
}

TEST_CASE("magnitude sampling's mask: each row's draws against its sorted ranks, across groups of rows", "[exec][select]") {
  // Groups of rows (about one chunk each) are decided in parallel and packed into the mask's words;
  // rows whose length is not a multiple of 64 put a group's ends inside words shared with its
  // neighbours. Every bit must still be draw < probability[rank of its row's stable sort].
  const std::uint64_t stream_key = 0x5eedf00dull;
  const double lowest = 0.25, spread = 0.5;
  struct case_shape {
    std::size_t rows, length;
  };
  for (const case_shape c : {case_shape{1500, 100}, case_shape{3, 70001}, case_shape{5, 3}, case_shape{1, 1}}) {
    const std::size_t n = c.rows * c.length;
    std::vector<float> values(n);
    for (std::size_t i = 0; i < n; ++i) {
      const double x = std::sin(0.37 * static_cast<double>(i)) * std::cos(0.011 * static_cast<double>(i));
      values[i] = i % 9 == 0 ? 0.0f : static_cast<float>(x * 1e-2);  // equal magnitudes: ties by position
    }
    const const_tensor_view view(std::span<const float>(values), shape{static_cast<std::int64_t>(n)});
    const const_tensor_view inputs[] = {view};
    for (const int threads : {1, 2}) {
      INFO(c.rows << " rows of " << c.length << ", " << threads << " threads");
      const bit_mask mask = rank_sampling_mask(cpu_backend{threads}, inputs, c.rows, c.length,
                                               [](const auto& v, std::size_t) { return v[0]; }, stream_key, lowest, spread);
      REQUIRE(mask.size() == n);
      std::size_t differing = 0, kept = 0;
      for (std::size_t row = 0; row < c.rows; ++row) {
        const float* r = values.data() + row * c.length;
        std::vector<std::uint32_t> order(c.length);
        std::iota(order.begin(), order.end(), 0u);
        std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) { return std::fabs(r[a]) < std::fabs(r[b]); });
        for (std::size_t rank = 0; rank < c.length; ++rank) {
          const std::size_t index = row * c.length + order[rank];
          const bool expected = uniform01(stream_key, index) < detail::rank_keep_probability(rank, c.length, lowest, spread);
          differing += mask.test(index) != expected ? 1u : 0u;
          kept += expected ? 1u : 0u;
        }
      }
      CHECK(differing == 0);
      CHECK(mask.count() == kept);
      if (n > 1000) CHECK(kept > n / 4);  // about half kept: the mask is not trivially empty or full
    }
  }
}
