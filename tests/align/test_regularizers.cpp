// Alignment regularizers: values by hand, gradients against central finite differences.

#include <cmath>
#include <functional>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/align/regularizers.hpp"
#include "tensor_builders.hpp"

using namespace alloy;
using alloy::testing::insert_values;
using alloy::testing::random_values;
using alloy::testing::values_of;

namespace {

struct stores {
  memory_store global, task, initial, gradient;
};

stores make(std::size_t n, unsigned seed) {
  stores s;
  auto g0 = random_values(n, seed, 0.5f);
  auto g = random_values(n, seed + 1);
  auto t = random_values(n, seed + 2);
  insert_values(s.initial, "w", g0, shape{static_cast<std::int64_t>(n)});
  insert_values(s.global, "w", g, shape{static_cast<std::int64_t>(n)});
  insert_values(s.task, "w", t, shape{static_cast<std::int64_t>(n)});
  s.gradient.insert("w", dtype::f32, shape{static_cast<std::int64_t>(n)});
  return s;
}

// Checks d value / d T_i against the gradient at entries where the function is smooth.
void check_gradient(stores& s, const std::function<double(stores&)>& value, double h, double tolerance,
                    const std::function<bool(std::size_t)>& smooth_at = [](std::size_t) { return true; }) {
  memory_store zero = s.gradient;
  value(s);
  const auto gradient = values_of(s.gradient.view("w"));
  std::size_t checked = 0;
  for (std::size_t i = 0; i < gradient.size(); i += 7) {
    if (!smooth_at(i)) continue;
    auto t = s.task.mutable_view("w").as<float>();
    const float original = t[i];
    t[i] = original + static_cast<float>(h);
    s.gradient = zero;
    const double up = value(s);
    t[i] = original - static_cast<float>(h);
    s.gradient = zero;
    const double down = value(s);
    t[i] = original;
    const double numeric = (up - down) / (2 * h);
    INFO("entry " << i);
    CHECK(static_cast<double>(gradient[i]) == Approx(numeric).margin(tolerance).epsilon(tolerance));
    ++checked;
  }
  s.gradient = zero;
  CHECK(checked > 10);
}

}  // namespace

TEST_CASE("l2 pull: value and gradient", "[align][regularizers]") {
  memory_store g, t, grad;
  insert_values(g, "w", {1, -2, 3}, shape{3});
  insert_values(t, "w", {2, -2, 1}, shape{3});
  grad.insert("w", dtype::f32, shape{3});
  CHECK(l2_pull(cpu_backend{}, g, t, grad, 2.0) == Approx(0.5 * 2 * (1 + 0 + 4)));
  CHECK(values_of(grad.view("w")) == std::vector<float>{2, 0, -4});

  stores s = make(300, 1);
  check_gradient(s, [](stores& x) { return l2_pull(cpu_backend{}, x.global, x.task, x.gradient, 0.7); }, 1e-2, 1e-3);
  const auto masks = top_magnitude_masks(cpu_backend{}, s.global, 0.3);
  check_gradient(s, [&](stores& x) { return l2_pull(cpu_backend{}, x.global, x.task, x.gradient, 0.7, &masks); }, 1e-2,
                 1e-3);
}

TEST_CASE("sign agreement: zero when signs agree, hinge gradient otherwise", "[align][regularizers]") {
  memory_store g, t, grad;
  insert_values(g, "w", {4, -3, 0.1f, 5}, shape{4});
  insert_values(t, "w", {-1, -2, -7, 2}, shape{4});
  grad.insert("w", dtype::f32, shape{4});
  const auto masks = top_magnitude_masks(cpu_backend{}, g, 0.75);  // entries 0, 1, 3
  // Only entry 0 opposes G inside the mask (entry 2 opposes but is outside it).
  CHECK(sign_agreement(cpu_backend{}, g, t, grad, 3.0, masks) == Approx(3.0 * 1));
  CHECK(values_of(grad.view("w")) == std::vector<float>{-3, 0, 0, 0});

  stores s = make(300, 5);
  const auto top = top_magnitude_masks(cpu_backend{}, s.global, 0.5);
  const auto t_values = values_of(s.task.view("w"));
  check_gradient(s, [&](stores& x) { return sign_agreement(cpu_backend{}, x.global, x.task, x.gradient, 1.3, top); },
                 1e-3, 1e-3, [&](std::size_t i) { return std::fabs(t_values[i]) > 1e-2f; });
}

TEST_CASE("cosine alignment: value and gradient", "[align][regularizers]") {
  stores s = make(200, 9);
  memory_store copy = s.gradient;
  const double value = cosine_alignment(cpu_backend{}, s.global, s.task, s.initial, copy, 1.0);
  CHECK(value > 0.0);
  CHECK(value < 2.0);
  check_gradient(s, [](stores& x) { return cosine_alignment(cpu_backend{}, x.global, x.task, x.initial, x.gradient, 2.0); },
                 1e-3, 2e-3);
  // Aligned updates cost nothing.
  memory_store same_task = s.global;
  memory_store grad = s.gradient;
  CHECK(cosine_alignment(cpu_backend{}, s.global, same_task, s.initial, grad, 1.0) == Approx(0.0).margin(1e-6));
}

TEST_CASE("regularizers name a tensor missing from the task or gradient", "[align][regularizers]") {
  memory_store g, t, grad;
  insert_values(g, "w", {1}, shape{1});
  insert_values(t, "v", {1}, shape{1});
  grad.insert("w", dtype::f32, shape{1});
  CHECK_THROWS_WITH(l2_pull(cpu_backend{}, g, t, grad, 1.0), Catch::Contains("'w'") && Catch::Contains("task weights"));
  CHECK_THROWS_AS(top_magnitude_masks(cpu_backend{}, g, 1.5), error);
}
