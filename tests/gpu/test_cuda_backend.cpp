// The CUDA backend against the CPU backend (CTest label gpu): every registry method in f32, f16
// and bf16, sizes with and without a vector-aligned tail, 1 to 12 models (the register and the
// generic kernel paths), masks with heavy ties, NaN and -0. Results must be within 1 ulp of the
// CPU's in the output dtype (alloy::cuda is built without fused multiply-adds, so they are
// usually equal: the cases print how many differ), masks bit-identical. Where no CUDA device is
// present the cases say so and pass.

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/cuda.hpp"
#include "alloy/merge/registry.hpp"
#include "tensor_builders.hpp"

using namespace alloy;

namespace {

bool gpu_present() {
  if (cuda::device_available()) return true;
  WARN("no CUDA device: the CUDA backend's cases were not run");
  return false;
}

// A copy of a host tensor in device memory.
class device_tensor {
 public:
  device_tensor(const cuda::backend& gpu, const_tensor_view host)
      : bytes_(host.byte_size(), gpu.stream()), view_(bytes_.data(), host.dtype(), host.shape()) {
    if (host.byte_size() != 0) {
      cuda::check(cudaMemcpyAsync(bytes_.data(), host.data(), host.byte_size(), cudaMemcpyHostToDevice, gpu.stream()),
                  "test upload");
    }
    gpu.synchronize();
  }
  device_tensor(const cuda::backend& gpu, dtype type, shape dims)
      : bytes_(dims.numel() * size_of(type), gpu.stream()), view_(bytes_.data(), type, dims) {}

  [[nodiscard]] tensor_view view() const { return view_; }
  [[nodiscard]] std::vector<std::byte> download(const cuda::backend& gpu) const {
    std::vector<std::byte> host(view_.byte_size());
    if (!host.empty()) {
      cuda::check(cudaMemcpyAsync(host.data(), bytes_.data(), host.size(), cudaMemcpyDeviceToHost, gpu.stream()),
                  "test download");
    }
    gpu.synchronize();
    return host;
  }

 private:
  cuda::device_buffer<std::byte> bytes_;
  tensor_view view_;
};

// Distance in units in the last place between two values of the same dtype (0 for two NaNs).
std::uint64_t ulp_distance(const std::byte* a, const std::byte* b, dtype type) {
  const auto ordered = [type](const std::byte* p) -> std::int64_t {
    if (type == dtype::f32) {
      std::int32_t bits;
      std::memcpy(&bits, p, 4);
      return bits < 0 ? std::int64_t{INT32_MIN} - bits : bits;
    }
    std::int16_t bits;
    std::memcpy(&bits, p, 2);
    return bits < 0 ? std::int64_t{INT16_MIN} - bits : bits;
  };
  const float x = load_as_float(const_tensor_view(a, type, shape{1}), 0);
  const float y = load_as_float(const_tensor_view(b, type, shape{1}), 0);
  if (std::isnan(x) && std::isnan(y)) return 0;
  const std::int64_t d = ordered(a) - ordered(b);
  return static_cast<std::uint64_t>(d < 0 ? -d : d);
}

struct comparison {
  std::uint64_t max_ulp = 0;
  std::size_t different = 0;
};

comparison compare(const std::vector<std::byte>& got, const_tensor_view want) {
  comparison c;
  const std::size_t width = size_of(want.dtype());
  for (std::size_t i = 0; i < want.numel(); ++i) {
    const std::uint64_t d = ulp_distance(got.data() + i * width, want.data() + i * width, want.dtype());
    c.max_ulp = std::max(c.max_ulp, d);
    c.different += d != 0;
  }
  return c;
}

double method_parameter(std::string_view name) {
  if (name == "t") return 0.3;
  if (name == "lambda") return 0.9;
  if (name == "seed") return 7;
  if (name == "normalize" || name == "rescale" || name == "normalize_weights") return 1.0;
  if (name == "filter_wise") return 1.0;  // model_stock per row: the row reductions
  if (name == "select_topk") return 0.5;
  if (name == "max_iter") return 10;
  if (name == "tol" || name == "epsilon") return 1e-5;
  if (name == "eps") return 1e-8;
  if (name == "r") return 0.1;
  if (name == "alpha") return 0.2;
  return 0.0;  // int8_mask, nuslerp_flatten (per row), nuslerp_row_wise
}

model_parameters model_parameter_set(std::size_t model) {
  model_parameters p;
  p.weight = 0.5 + 0.25 * static_cast<double>(model % 4);
  p.density = 0.3 + 0.05 * static_cast<double>(model % 5);
  p.gamma = 0.05;
  p.epsilon = 0.1;
  return p;
}

// Inputs whose values repeat (few distinct bf16 magnitudes), so ranks have many ties.
std::vector<float> tied_values(std::size_t count, unsigned seed) {
  std::vector<float> v = alloy::testing::random_values(count, seed);
  for (auto& x : v) x = std::round(x * 8.0f) / 8.0f;
  return v;
}

}  // namespace

TEST_CASE("every merge method on the GPU equals the CPU backend within 1 ulp", "[gpu][cuda]") {
  if (!gpu_present()) return;
  const cuda::backend gpu = cuda::backend::with_own_stream();
  const cpu_backend cpu{};
  std::printf("CUDA device: %s\n", cuda::device_name().c_str());
  const std::size_t sizes[] = {1, 1003, 70001, (std::size_t{1} << 20) + 3};
  const dtype types[] = {dtype::f32, dtype::bf16, dtype::f16};
  std::size_t cases = 0;
  std::size_t cases_with_differences = 0;
  for (const method_definition& def : merge_methods()) {
    for (const std::size_t models : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{12}}) {
      if (models < def.min_models || models > def.max_models) continue;
      const parameter_definition* choice = def.find("consensus");
      const std::vector<std::string_view> consensus_choices =
          choice == nullptr ? std::vector<std::string_view>{""} : choice->choices;
      for (const auto consensus : consensus_choices) {
        const merge_policy policy = def.make(parameter_lookup([](std::string_view p) { return method_parameter(p); },
                                                              [&](std::string_view) { return std::string(consensus); }));
        for (const std::size_t n : sizes) {
          for (const dtype type : types) {
            const shape dims = n > 1000 ? shape{static_cast<std::int64_t>(n / 1000), 1000} : shape{static_cast<std::int64_t>(n)};
            const std::size_t count = dims.numel();
            memory_store host;
            const auto base = alloy::testing::insert_values(host, "base", tied_values(count, 1), dims, type);
            std::vector<const_tensor_view> host_models;
            std::vector<model_parameters> parameters;
            for (std::size_t i = 0; i < models; ++i) {
              std::vector<float> m = tied_values(count, static_cast<unsigned>(10 + i));
              for (std::size_t j = 0; j < count; ++j) m[j] = 0.5f * m[j] + (i % 2 == 0 ? 0.25f : -0.125f) * std::sin(static_cast<float>(j));
              std::string name = "model";
              name += std::to_string(i);
              host_models.push_back(alloy::testing::insert_values(host, name, m, dims, type));
              parameters.push_back(model_parameter_set(i));
            }
            const tensor_view want = host.insert("want", type, dims);
            const merge_inputs cpu_inputs{"layers.3.mlp.weight",
                                          def.needs_base ? std::optional<const_tensor_view>(base) : std::nullopt,
                                          host_models, parameters};
            merge_with(policy, cpu, cpu_inputs, want);

            const device_tensor d_base(gpu, base);
            std::vector<device_tensor> d_models;
            std::vector<const_tensor_view> d_views;
            for (const auto& m : host_models) d_models.emplace_back(gpu, m);
            for (const auto& m : d_models) d_views.push_back(m.view());
            const device_tensor d_out(gpu, type, dims);
            const merge_inputs gpu_inputs{"layers.3.mlp.weight",
                                          def.needs_base ? std::optional<const_tensor_view>(d_base.view()) : std::nullopt,
                                          d_views, parameters};
            cuda::merge_with(policy, gpu, gpu_inputs, d_out.view());
            const comparison c = compare(d_out.download(gpu), want);
            INFO(def.name << " consensus=" << consensus << " models=" << models << " n=" << n << " dtype=" << type
                          << " differing=" << c.different << " max ulp=" << c.max_ulp);
            CHECK(c.max_ulp <= 1);
            ++cases;
            if (c.different != 0) {
              ++cases_with_differences;
              std::printf("  %s consensus=%s models=%zu n=%zu %s: %zu of %zu elements differ (max %llu ulp)\n",
                          std::string(def.name).c_str(), std::string(consensus).c_str(), models, n,
                          std::string(name(type)).c_str(), c.different, count,
                          static_cast<unsigned long long>(c.max_ulp));
            }
          }
        }
      }
    }
  }
  std::printf("GPU against CPU: %zu cases, %zu with any element differing (all within 1 ulp when passing)\n", cases,
              cases_with_differences);
}

TEST_CASE("GPU magnitude masks are bit-identical to the CPU's, ties, NaN and -0 included", "[gpu][cuda]") {
  if (!gpu_present()) return;
  const cuda::backend gpu = cuda::backend::with_own_stream();
  const cpu_backend cpu{};
  for (const std::size_t n : {std::size_t{64}, std::size_t{8191}, std::size_t{8193}, std::size_t{300007}}) {
    std::vector<float> values = tied_values(n, 3);
    values[n / 2] = std::nanf("");
    values[n / 3] = -0.0f;
    values[n / 4] = -std::numeric_limits<float>::infinity();
    memory_store host;
    const auto x = alloy::testing::insert_values(host, "x", values, shape{static_cast<std::int64_t>(n)}, dtype::bf16);
    const device_tensor d_x(gpu, x);
    const const_tensor_view host_inputs[] = {x};
    const const_tensor_view device_inputs[] = {d_x.view()};
    const std::pair<std::size_t, std::size_t> bands[] = {{0, n / 10}, {0, n / 2}, {n / 7, n / 3}, {1, n},
                                                         {0, n},      {5, 5},     {n - 1, n}};
    for (const auto& [first, last] : bands) {
      const bit_mask want = rank_band_mask(cpu, host_inputs, n, [](const auto& v, std::size_t) { return v[0]; }, first, last);
      const bit_mask got = cuda::magnitude_band_mask(gpu, device_inputs, first, last).to_host(gpu.stream());
      INFO("n=" << n << " band [" << first << ", " << last << ")");
      std::size_t mismatches = 0;
      for (std::size_t i = 0; i < n; ++i) mismatches += got.test(i) != want.test(i);
      CHECK(mismatches == 0);
      CHECK(got.count() == last - first);
    }
  }
}

TEST_CASE("the CUDA backend refuses what the CPU backend refuses, with the same message", "[gpu][cuda]") {
  if (!gpu_present()) return;
  const cuda::backend gpu = cuda::backend::with_own_stream();
  memory_store host;
  const auto a = alloy::testing::insert_values(host, "a", {1, 2, 3, 4}, shape{4});
  const auto b = alloy::testing::insert_values(host, "b", {1, 2, 3}, shape{3});
  const device_tensor d_a(gpu, a);
  const device_tensor d_b(gpu, b);
  const device_tensor d_out(gpu, dtype::f32, shape{4});
  const model_parameters p[2];
  const const_tensor_view models[] = {d_a.view(), d_b.view()};
  try {
    cuda::merge_with(merge_policy(linear_merge{}), gpu, merge_inputs{"w", std::nullopt, models, p}, d_out.view());
    FAIL("a shape mismatch was accepted");
  } catch (const alloy::error& e) {
    CHECK(e.code() == error_code::shape_mismatch);
    CHECK_THAT(e.what(), Catch::Contains("model 1 of tensor 'w' has shape [3]"));
  }
}

TEST_CASE("a merge may write into one of its inputs on the GPU", "[gpu][cuda]") {
  if (!gpu_present()) return;
  const cuda::backend gpu = cuda::backend::with_own_stream();
  memory_store host;
  const auto a = alloy::testing::insert_values(host, "a", alloy::testing::random_values(5000, 1), shape{5000});
  const auto b = alloy::testing::insert_values(host, "b", alloy::testing::random_values(5000, 2), shape{5000});
  const tensor_view want = host.insert("want", dtype::f32, shape{5000});
  const model_parameters p[2];
  const const_tensor_view host_models[] = {a, b};
  merge_with(merge_policy(linear_merge{}), cpu_backend{}, merge_inputs{"w", std::nullopt, host_models, p}, want);
  const device_tensor d_a(gpu, a);
  const device_tensor d_b(gpu, b);
  const const_tensor_view models[] = {d_a.view(), d_b.view()};
  cuda::merge_with(merge_policy(linear_merge{}), gpu, merge_inputs{"w", std::nullopt, models, p}, d_a.view());
  CHECK(compare(d_a.download(gpu), want).max_ulp == 0);
}
