#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstring>

#include <catch2/catch.hpp>

#include "alloy/merge/execute_plan.hpp"
#include "alloy/merge/registry.hpp"
#include "alloy/torch/merge.hpp"
#include "alloy/torch/transfer.hpp"
#include "alloy/torch/tensor_store.hpp"
#include "store_conformance.hpp"
#include "tensor_builders.hpp"

using namespace alloy;
using alloy::torch_adapter::tensor_store;

namespace {

::torch::ScalarType torch_type(dtype type) {
  switch (type) {
    case dtype::f32: return ::torch::kFloat32;
    case dtype::f16: return ::torch::kFloat16;
    case dtype::bf16: return ::torch::kBFloat16;
    case dtype::i64: return ::torch::kInt64;
    case dtype::boolean: return ::torch::kBool;
    default: FAIL("no torch dtype for " << type); return ::torch::kFloat32;
  }
}

// The conformance content as torch tensors (copied in byte for byte).
tensor_store from_reference(const memory_store& reference) {
  std::vector<std::pair<std::string, ::torch::Tensor>> tensors;
  for (const auto& name : reference.names()) {
    const auto view = reference.view(name);
    std::vector<std::int64_t> sizes(view.shape().begin(), view.shape().end());
    ::torch::Tensor t = ::torch::empty(sizes, ::torch::TensorOptions().dtype(torch_type(view.dtype())));
    if (view.byte_size() != 0) std::memcpy(t.data_ptr(), view.data(), view.byte_size());
    tensors.emplace_back(name, t);
  }
  return tensor_store(std::move(tensors));
}

}  // namespace

TEST_CASE("torch tensor_store conforms to the store concepts", "[adapters][torch][conformance]") {
  const memory_store reference = testing::reference_content();
  tensor_store store = from_reference(reference);
  testing::check_store_conforms(store, reference);
  testing::check_mutable_store_conforms(store);
}

TEST_CASE("a module's parameters are viewed in place and merged in place", "[adapters][torch]") {
  ::torch::nn::Linear a(4, 3), b(4, 3);
  ::torch::NoGradGuard no_grad;
  tensor_store store_a = tensor_store::from_module(*a);
  const tensor_store store_b = tensor_store::from_module(*b);
  CHECK(store_a.names() == std::vector<std::string>{"weight", "bias"});
  CHECK(store_a.view("weight").data() == a->weight.data_ptr());  // zero-copy
  const ::torch::Tensor expected = (a->weight + b->weight) / 2;
  const const_tensor_view models[] = {store_a.view("weight"), store_b.view("weight")};
  const model_parameters halves[] = {{0.5}, {0.5}};
  linear_merge{}.merge(cpu_backend{}, merge_inputs{"weight", std::nullopt, models, halves}, store_a.mutable_view("weight"));
  CHECK(::torch::allclose(a->weight, expected));
}

TEST_CASE("non-contiguous, unmapped and missing tensors are refused by name", "[adapters][torch]") {
  tensor_store store({{"transposed", ::torch::ones({3, 2}).t()},
                      {"complex", ::torch::ones({2}, ::torch::kComplexFloat)}});
  CHECK_THROWS_WITH(store.view("transposed"), Catch::Contains("'transposed'") && Catch::Contains("contiguous"));
  CHECK_THROWS_WITH(store.view("complex"), Catch::Contains("'complex'") && Catch::Contains("does not map"));
  CHECK_THROWS_AS(store.view("absent"), error);
  CHECK_THROWS_WITH(store.add("transposed", ::torch::ones({1})), Catch::Contains("duplicate"));
}

TEST_CASE("snapshot copies a module to CPU memory and assign writes it back", "[adapters][torch]") {
  ::torch::manual_seed(3);
  ::torch::nn::Sequential model(::torch::nn::Linear(5, 4), ::torch::nn::BatchNorm1d(4), ::torch::nn::Linear(4, 2));
  const memory_store saved = torch_adapter::snapshot(*model, /*include_buffers=*/true);
  CHECK(saved.contains("0.weight"));
  CHECK(saved.contains("1.running_mean"));
  CHECK(saved.view("2.weight").data() != model->named_parameters()["2.weight"].data_ptr());  // owning copy
  {
    ::torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.fill_(7);
  }
  torch_adapter::assign(*model, saved);
  const memory_store again = torch_adapter::snapshot(*model, true);
  for (const auto& name : saved.names()) CHECK(testing::same_bytes(saved.view(name), again.view(name)));
}

TEST_CASE("assign converts dtypes and refuses unknown names and shapes before writing", "[adapters][torch]") {
  ::torch::nn::Linear layer(3, 2);
  layer->to(::torch::kBFloat16);
  memory_store source;
  auto w = source.insert("weight", dtype::f32, {2, 3}).as<float>();
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i) - 2.5f;
  torch_adapter::assign(*layer, source);
  CHECK(::torch::equal(layer->weight.to(::torch::kFloat32),
                       ::torch::tensor({-2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f}).view({2, 3})));

  const ::torch::Tensor before = layer->weight.clone();
  memory_store wrong = source;
  wrong.insert("extra", dtype::f32, {1});
  CHECK_THROWS_WITH(torch_adapter::assign(*layer, wrong), Catch::Contains("'extra'"));
  memory_store misshapen;
  misshapen.insert("weight", dtype::f32, {3, 2});
  CHECK_THROWS_WITH(torch_adapter::assign(*layer, misshapen), Catch::Contains("'weight'") && Catch::Contains("[3, 2]"));
  CHECK(::torch::equal(layer->weight, before));
}

TEST_CASE("merge_stores_into merges checkpoints into a module in place", "[adapters][torch]") {
  ::torch::manual_seed(5);
  ::torch::nn::Linear base(6, 4), a(6, 4), b(6, 4), out(6, 4);
  const std::array models{torch_adapter::snapshot(*a), torch_adapter::snapshot(*b)};
  const memory_store base_weights = torch_adapter::snapshot(*base);
  tensor_store target = tensor_store::from_module(*out);
  const merge_recipe recipe{.method = "task_arithmetic", .parameters = {{"lambda", 0.8}},
                            .model_parameters = {{{"weight", 0.5}}, {{"weight", 1.5}}}};
  merge_stores_into(recipe, cpu_backend{}, &base_weights, std::span(models), target);
  ::torch::NoGradGuard no_grad;
  const ::torch::Tensor expected =
      base->weight + 0.8 * (0.5 * (a->weight - base->weight) + 1.5 * (b->weight - base->weight));
  CHECK(::torch::allclose(out->weight, expected, 1e-5, 1e-6));
  CHECK(::torch::allclose(out->bias, base->bias + 0.8 * (0.5 * (a->bias - base->bias) + 1.5 * (b->bias - base->bias)),
                          1e-5, 1e-6));
}

namespace {
// A module whose weight is a non-contiguous view: alloy cannot view it in place, as with CUDA.
struct strided_module : ::torch::nn::Module {
  strided_module() { weight = register_parameter("weight", ::torch::zeros({4, 6}).t()); }
  ::torch::Tensor weight;
};
}  // namespace

TEST_CASE("merge_into merges in place, or through host memory where tensors cannot be viewed", "[adapters][torch]") {
  ::torch::manual_seed(9);
  memory_store a, b;
  const auto fill = [](memory_store& s, float scale) {
    auto w = s.insert("weight", dtype::f32, {6, 4}).as<float>();
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = scale * (static_cast<float>(i) - 10.0f);
  };
  fill(a, 1.0f);
  fill(b, -0.5f);
  const std::array models{a, b};
  const merge_recipe magmax{.method = "magmax", .model_parameters = {{}, {}}};
  memory_store base;
  base.insert("weight", dtype::f32, {6, 4});

  strided_module staged;
  REQUIRE_FALSE(torch_adapter::viewable_in_place(staged));
  torch_adapter::merge_into(staged, magmax, cpu_backend{}, &base, std::span(models));
  memory_store expected = copy_store(a);
  merge_stores_into(magmax, cpu_backend{}, &base, std::span(models), expected);
  // MagMax keeps, per entry, the task vector of largest magnitude: here always model a's.
  CHECK(::torch::equal(staged.weight.detach().contiguous(), torch_adapter::from_view(expected.view("weight"))));
  CHECK(::torch::equal(staged.weight.detach().contiguous(), torch_adapter::from_view(a.view("weight"))));

  ::torch::nn::Linear direct(4, 6);
  REQUIRE(torch_adapter::viewable_in_place(*direct));
  const void* memory = direct->weight.data_ptr();
  torch_adapter::merge_into(*direct, magmax, cpu_backend{}, &base, std::span(models));
  CHECK(direct->weight.data_ptr() == memory);  // in place
  CHECK(::torch::equal(direct->weight.detach(), torch_adapter::from_view(expected.view("weight"))));
}
