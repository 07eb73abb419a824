#include <torch/torch.h>

#include <cstring>

#include <catch2/catch.hpp>

#include "alloy/merge/registry.hpp"
#include "alloy/torch/tensor_store.hpp"
#include "store_conformance.hpp"

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
