// OPCM and DOP (alloy/continual/opcm.hpp, dop.hpp, with Eigen's SVD) against independent NumPy
// references of fusion_bench's algorithms (continual_reference.py), five tasks, several
// settings; and their contracts. The SVDs differ (Eigen's BDCSVD, LAPACK's gesdd) by rounding
// only, and what the mergers use of them (U P V^T, U diag(s^2) U^T) does not depend on the
// singular vectors' signs, so G agrees to 1e-5 of the tensor's scale.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/alloy.hpp"
#include "alloy/eigen/svd.hpp"

using namespace alloy;

namespace {

std::filesystem::path reference_dir() {
  const char* dir = std::getenv("ALLOY_REFERENCE_DIR");
  REQUIRE(dir != nullptr);
  return dir;
}

const std::vector<std::string> tensor_names = {"encoder.fc.weight", "encoder.proj.weight", "head.weight",
                                               "encoder.fc.bias", "norm.weight"};

memory_store part(const safetensors_store& file, const std::string& prefix) {
  memory_store store;
  for (const auto& name : tensor_names) store.insert(name, file.view(prefix + name));
  return store;
}

std::vector<float> floats(const_tensor_view view) {
  std::vector<float> values(view.numel());
  convert(view, tensor_view(std::span<float>(values), view.shape()));
  return values;
}

// The largest difference between G's tensor and the reference's after task t, against the scale.
void check_against(const memory_store& global, const safetensors_store& file, int t) {
  for (const auto& name : tensor_names) {
    CAPTURE(name);
    const auto got = floats(global.view(name));
    const auto want = floats(file.view("expected" + std::to_string(t) + "." + name));
    REQUIRE(got.size() == want.size());
    float scale = 0;
    for (const float w : want) scale = std::max(scale, std::abs(w));
    float worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
    CHECK(worst <= 1e-5f * scale);
    if (t == 1) CHECK(got == floats(file.view("task1." + name)));  // G = T_1 exactly
  }
}

}  // namespace

TEST_CASE("MagMax over every task seen matches the NumPy reference of fusion_bench's", "[reference][continual][magmax]") {
  const auto file = safetensors_store::open(reference_dir() / "magmax_sequence.safetensors");
  magmax_sequence_merger merger(part(file, "initial."), magmax_sequence_options{0.5});
  for (int t = 1; t <= 5; ++t) {
    CAPTURE(t);
    merger.end_task(part(file, "task" + std::to_string(t) + "."));
    for (const auto& name : tensor_names) {
      CAPTURE(name);
      const auto got = floats(merger.global().view(name));
      const auto want = floats(file.view("expected" + std::to_string(t) + "." + name));
      CHECK(got == want);  // one f64 computation rounded once, on both sides
    }
    if (t == 3) {  // a resumed merger continues as the uninterrupted one
      magmax_sequence_merger resumed = magmax_sequence_merger::resume(part(file, "initial."), merger.selection(), 3, {0.5});
      for (const auto& name : tensor_names) CHECK(floats(resumed.global().view(name)) == floats(merger.global().view(name)));
    }
  }
  memory_store missing;
  CHECK_THROWS_WITH(merger.end_task(missing), Catch::Contains("magmax_sequence: the task weights lack tensor"));
  CHECK(merger.tasks() == 5);
}

TEST_CASE("DOP matches the NumPy reference of fusion_bench's algorithm", "[reference][continual][dop]") {
  struct setting {
    const char* file;
    dop_options options;
  };
  const setting settings[] = {
      {"dop_default.safetensors", dop_options{}},
      {"dop_fixed_u.safetensors", dop_options{0.6, 50, 1e-3, 0.9, false, false, 0.999, dop_subspace::input}},
      {"dop_mgda_v.safetensors", dop_options{0.5, 80, 5e-4, 0.95, true, false, 0.999, dop_subspace::output}},
  };
  for (const auto& [name, options] : settings) {
    CAPTURE(name);
    const auto file = safetensors_store::open(reference_dir() / name);
    dop_merger merger(part(file, "initial."), options);
    for (int t = 1; t <= 5; ++t) {
      CAPTURE(t);
      merger.end_task(cpu_backend{2}, eigen::svd_solver{}, part(file, "task" + std::to_string(t) + "."));
      CHECK(merger.tasks() == static_cast<std::size_t>(t));
      check_against(merger.global(), file, t);
    }
  }
}

TEST_CASE("DOP refuses bad settings and tasks, and resumes where it stopped", "[continual][dop]") {
  memory_store g0;
  g0.insert("w", dtype::f32, {4, 3});
  g0.insert("b", dtype::f32, {4});
  CHECK_THROWS_WITH(dop_merger(g0, dop_options{1.5}), Catch::Contains("alpha = 1.5 must be in [0, 1]"));
  dop_options no_rate;
  no_rate.learning_rate = 0;
  CHECK_THROWS_WITH(dop_merger(g0, no_rate), Catch::Contains("learning_rate = 0 must be positive"));
  dop_options no_share;
  no_share.svd_epsilon = 0;
  CHECK_THROWS_WITH(dop_merger(g0, no_share), Catch::Contains("svd_epsilon = 0 must be in (0, 1]"));
  const auto task = [&](float value) {
    memory_store t;
    auto w = t.insert("w", dtype::f32, {4, 3}).as<float>();
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = value * static_cast<float>(i % 5) - 0.3f * static_cast<float>(i % 3);
    auto b = t.insert("b", dtype::f32, {4}).as<float>();
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = value * static_cast<float>(i);
    return t;
  };
  // MGDA's two-task weight: the ends where one gradient already dominates, else the min-norm point.
  CHECK(detail::min_norm_weight(1, 2, 5) == 0.999);
  CHECK(detail::min_norm_weight(5, 2, 1) == 0.001);
  CHECK(detail::min_norm_weight(1, 0, 1) == 0.5);
  CHECK(detail::min_norm_weight(4, 1, 2) == Approx(0.25));
  dop_merger merger(g0);
  merger.end_task(cpu_backend{2}, eigen::svd_solver{}, task(0.5f));
  memory_store missing;
  missing.insert("b", dtype::f32, {4});
  CHECK_THROWS_WITH(merger.end_task(cpu_backend{2}, eigen::svd_solver{}, missing), Catch::Contains("dop: the task weights lack tensor 'w'"));
  CHECK(merger.tasks() == 1);
  dop_merger resumed = dop_merger::resume(g0, merger.global(), merger.tasks());
  for (float value : {-0.7f, 0.9f}) {
    merger.end_task(cpu_backend{2}, eigen::svd_solver{}, task(value));
    resumed.end_task(cpu_backend{1}, eigen::svd_solver{}, task(value));
  }
  for (const char* name : {"w", "b"}) CHECK(floats(merger.global().view(name)) == floats(resumed.global().view(name)));
}

TEST_CASE("OPCM matches the NumPy reference of fusion_bench's algorithm", "[reference][continual][opcm]") {
  for (const double alpha : {0.5, 0.8}) {
    CAPTURE(alpha);
    const auto file = safetensors_store::open(reference_dir() / (alpha == 0.5 ? "opcm_alpha0.5.safetensors" : "opcm_alpha0.8.safetensors"));
    opcm_merger merger(part(file, "initial."), opcm_options{alpha});
    const cpu_backend backend{2};
    for (int t = 1; t <= 5; ++t) {
      CAPTURE(t);
      merger.end_task(backend, eigen::svd_solver{}, part(file, "task" + std::to_string(t) + "."));
      CHECK(merger.tasks() == static_cast<std::size_t>(t));
      check_against(merger.global(), file, t);
    }
    // The task vector's norm is held at the mean of the tasks' norms.
    double mean = 0;
    for (const double n : merger.task_norms()) mean += n;
    mean /= 5;
    double squared = 0;
    for (const auto& name : tensor_names) {
      const auto g = floats(merger.global().view(name));
      const auto g0 = floats(merger.initial().view(name));
      for (std::size_t i = 0; i < g.size(); ++i) {
        const double d = static_cast<double>(g[i]) - static_cast<double>(g0[i]);
        squared += d * d;
      }
    }
    CHECK(std::sqrt(squared) == Approx(mean).epsilon(1e-5));
    CHECK(merger.scale() > 1);  // projected task vectors add up to more than one task's norm
  }
}

TEST_CASE("OPCM protects the merged task vector's leading directions", "[continual][opcm]") {
  // G - G0 = diag(3, 1, 0.5) (3 x 3): at alpha 0.5 the first direction (share 3/4.5 > 0.5) is
  // not protected (r = 0); at alpha 0.7, r = 1. A new task vector e1 e2^T + e2 e1^T + e3 e3^T:
  // the diagonal of P is always cleared (e3 e3^T goes), P[0][1] and P[1][0] stay at r = 0 and
  // r = 1 (off the r x r block); at alpha 0.9 (r = 2) both go too.
  const auto run = [](double alpha) {
    memory_store g0;
    g0.insert("w", dtype::f32, {3, 3});
    opcm_merger merger(g0, opcm_options{alpha});
    memory_store first;
    auto w = first.insert("w", dtype::f32, {3, 3});
    const auto a = w.as<float>();
    a[0] = 3;
    a[4] = 1;
    a[8] = 0.5f;
    merger.end_task(cpu_backend{1}, eigen::svd_solver{}, first);
    memory_store second;
    const auto b = second.insert("w", dtype::f32, {3, 3}).as<float>();
    b[1] = b[3] = 1;
    b[8] = 1;
    merger.end_task(cpu_backend{1}, eigen::svd_solver{}, second);
    return floats(merger.global().view("w"));
  };
  for (const double alpha : {0.5, 0.7}) {
    const auto g = run(alpha);
    // W = diag(3, 1, .5) + (e1 e2^T + e2 e1^T), rescaled to the mean norm of the two tasks.
    const double unscaled = std::sqrt(9 + 1 + 0.25 + 2);
    const double mean = (std::sqrt(9 + 1 + 0.25) + std::sqrt(3.0)) / 2;
    CHECK(g[0] == Approx(3 * mean / unscaled).epsilon(1e-6));
    CHECK(g[1] == Approx(mean / unscaled).epsilon(1e-6));
    CHECK(g[3] == Approx(mean / unscaled).epsilon(1e-6));
    CHECK(g[8] == Approx(0.5 * mean / unscaled).epsilon(1e-6));
    CHECK(std::abs(g[2]) < 1e-7f);
  }
  const auto g = run(0.9);
  CHECK(std::abs(g[1]) < 1e-7f);
  CHECK(std::abs(g[3]) < 1e-7f);
}

TEST_CASE("OPCM refuses bad settings and tasks, and resumes where it stopped", "[continual][opcm]") {
  memory_store g0;
  g0.insert("w", dtype::f32, {4, 3});
  g0.insert("b", dtype::bf16, {4});
  CHECK_THROWS_WITH(opcm_merger(g0, opcm_options{1.0}), Catch::Contains("alpha = 1 must be in [0, 1)"));
  CHECK_THROWS_WITH(opcm_merger(g0, opcm_options{-0.1}), Catch::Contains("must be in [0, 1)"));

  const auto task = [&](float value) {
    memory_store t;
    auto w = t.insert("w", dtype::f32, {4, 3});
    for (std::size_t i = 0; i < 12; ++i) w.as<float>()[i] = value * static_cast<float>(i % 5) - 0.3f * static_cast<float>(i % 3);
    auto b = t.insert("b", dtype::f32, {4});
    for (std::size_t i = 0; i < 4; ++i) b.as<float>()[i] = value * static_cast<float>(i);
    return t;
  };
  opcm_merger merger(g0);
  const cpu_backend backend{2};
  merger.end_task(backend, eigen::svd_solver{}, task(0.5f));
  memory_store missing;
  missing.insert("w", dtype::f32, {4, 3});
  CHECK_THROWS_WITH(merger.end_task(backend, eigen::svd_solver{}, missing), Catch::Contains("lack tensor 'b'"));
  memory_store wrong = task(1.0f);
  memory_store reshaped;
  reshaped.insert("w", dtype::f32, {3, 4});
  reshaped.insert("b", wrong.view("b"));
  CHECK_THROWS_WITH(merger.end_task(backend, eigen::svd_solver{}, reshaped), Catch::Contains("has shape"));
  CHECK(merger.tasks() == 1);  // the refused tasks changed nothing

  opcm_merger resumed = opcm_merger::resume(g0, merger.global(), merger.task_norms(), merger.scale());
  for (float value : {-0.7f, 0.9f}) {
    merger.end_task(backend, eigen::svd_solver{}, task(value));
    resumed.end_task(cpu_backend{1}, eigen::svd_solver{}, task(value));
  }
  for (const char* name : {"w", "b"}) CHECK(floats(merger.global().view(name)) == floats(resumed.global().view(name)));
  CHECK(merger.global().view("b").dtype() == dtype::bf16);  // G keeps G0's dtypes
  CHECK_THROWS_WITH(opcm_merger::resume(g0, merger.global(), merger.task_norms(), 0.0), Catch::Contains("must be positive"));
}

namespace {

// The tensors of `file` whose names start with `prefix`, the prefix removed.
memory_store with_prefix(const safetensors_store& file, const std::string& prefix) {
  memory_store store;
  for (const auto& name : file.names()) {
    if (name.starts_with(prefix)) store.insert(std::string(name.substr(prefix.size())), file.view(name));
  }
  return store;
}

// The largest difference between two stores' tensors of the same names, against the second's largest value.
double relative_difference(const memory_store& got, const memory_store& want) {
  double worst = 0;
  REQUIRE(got.names().size() == want.names().size());
  for (const auto& name : want.names()) {
    CAPTURE(name);
    REQUIRE(got.find(name));
    const auto g = floats(got.view(name)), w = floats(want.view(name));
    REQUIRE(g.size() == w.size());
    float scale = 0;
    for (const float x : w) scale = std::max(scale, std::abs(x));
    for (std::size_t i = 0; i < g.size(); ++i) worst = std::max(worst, static_cast<double>(std::abs(g[i] - w[i]) / scale));
  }
  return worst;
}

}  // namespace

TEST_CASE("LoRA factors merged by their products match NumPy's products and truncated SVD", "[reference][continual][lora]") {
  const auto file = safetensors_store::open(reference_dir() / "lora_product.safetensors");
  const double scale = std::stod(file.metadata().at("scale"));
  const cpu_backend backend{2};
  const eigen::svd_solver solver{};
  for (int t = 1; t <= 3; ++t) {
    CAPTURE(t);
    const memory_store factors = with_prefix(file, "factors" + std::to_string(t) + ".");
    const auto pairs = lora_factor_pairs(factors);
    REQUIRE(pairs.size() == 2);
    const memory_store products = lora_products(backend, factors, scale);
    CHECK(relative_difference(products, with_prefix(file, "product" + std::to_string(t) + ".")) <= 1e-6);
    // One LoRA's product has its rank: its factors give it back whole.
    const lora_factorization again = lora_factors_of(solver, products, factors, scale);
    CHECK(again.kept == Approx(1.0).epsilon(1e-12));
    CHECK(relative_difference(lora_products(backend, again.factors, scale), products) <= 1e-5);
  }
  // The mean of three products has a higher rank: its rank-r factors give NumPy's truncated SVD.
  const memory_store like = with_prefix(file, "factors1.");
  const lora_factorization merged = lora_factors_of(solver, with_prefix(file, "merged."), like, scale);
  CHECK(merged.kept == Approx(std::stod(file.metadata().at("kept"))).epsilon(1e-9));
  CHECK(merged.kept < 0.9);  // (q_proj: three rank-2 updates of a 6 x 8 weight)
  CHECK(relative_difference(lora_products(backend, merged.factors, scale), with_prefix(file, "truncated.")) <= 1e-5);
  for (const auto& pair : lora_factor_pairs(merged.factors)) {
    CAPTURE(pair.module);
    CHECK(merged.factors.view(pair.a).shape() == like.view(pair.a).shape());
    CHECK(merged.factors.view(pair.b).dtype() == like.view(pair.b).dtype());
    const auto a = floats(merged.factors.view(pair.a)), b = floats(merged.factors.view(pair.b));
    for (std::size_t k = 0; k < pair.rank; ++k) {  // the update split evenly: |B e_k| = |e_k^T A| = sqrt(s_k / scale)
      double a_norm = 0, b_norm = 0;
      for (std::size_t j = 0; j < pair.cols; ++j) a_norm += std::pow(static_cast<double>(a[k * pair.cols + j]), 2);
      for (std::size_t i = 0; i < pair.rows; ++i) b_norm += std::pow(static_cast<double>(b[i * pair.rank + k]), 2);
      CHECK(std::sqrt(a_norm) == Approx(std::sqrt(b_norm)).epsilon(1e-5).margin(1e-7));
      if (k >= std::min(pair.rows, pair.cols)) CHECK(a_norm == 0);  // fc1: rank 4 > min(out 7, in 3)
    }
  }
}

TEST_CASE("LoRA products refuse what is not a factor pair", "[continual][lora]") {
  const cpu_backend backend{};
  memory_store factors;
  const std::vector<float> a(2 * 3, 1.0f), b(4 * 2, 1.0f), odd(5, 1.0f);
  factors.insert("m.lora_A.weight", const_tensor_view(std::span<const float>(a), shape{2, 3}));
  factors.insert("m.lora_B.weight", const_tensor_view(std::span<const float>(b), shape{4, 2}));
  CHECK(lora_products(backend, factors, 2.0).view("m.weight").shape() == shape{4, 3});

  memory_store lonely = factors;
  lonely.insert("n.lora_A.weight", const_tensor_view(std::span<const float>(a), shape{2, 3}));
  CHECK_THROWS_WITH(lora_products(backend, lonely, 2.0), Catch::Contains("'n.lora_A.weight' has no partner 'n.lora_B.weight'"));
  memory_store stranger = factors;
  stranger.insert("m.bias", const_tensor_view(std::span<const float>(odd), shape{5}));
  CHECK_THROWS_WITH(lora_products(backend, stranger, 2.0), Catch::Contains("tensor 'm.bias' is not a LoRA factor"));
  memory_store mismatched;
  mismatched.insert("m.lora_A.weight", const_tensor_view(std::span<const float>(a), shape{3, 2}));
  mismatched.insert("m.lora_B.weight", const_tensor_view(std::span<const float>(b), shape{4, 2}));
  CHECK_THROWS_WITH(lora_products(backend, mismatched, 2.0), Catch::Contains("A must be rank x in and B out x rank"));

  const eigen::svd_solver solver{};
  memory_store products = lora_products(backend, factors, 2.0);
  CHECK_THROWS_WITH(lora_factors_of(solver, products, factors, 0.0), Catch::Contains("scale = 0 must be positive"));
  CHECK_THROWS_WITH(lora_factors_of(solver, memory_store{}, factors, 2.0), Catch::Contains("the merged products lack 'm.weight'"));
  memory_store wrong;
  wrong.insert("m.weight", const_tensor_view(std::span<const float>(b), shape{2, 4}));
  CHECK_THROWS_WITH(lora_factors_of(solver, wrong, factors, 2.0), Catch::Contains("has shape [2, 4] but the factors of 'm' make [4, 3]"));
}
