// The torch regularizers: values equal alloy's closed forms, and autograd's gradients equal the
// closed-form gradients alloy adds on CPU (the torch functions are autograd glue around them).

#include <torch/torch.h>

#include <catch2/catch.hpp>

#include "alloy/align/regularizers.hpp"
#include "alloy/torch/regularizers.hpp"
#include "alloy/torch/transfer.hpp"

using namespace alloy;
using alloy::torch_adapter::alignment_target;
using alloy::torch_adapter::from_view;
using alloy::torch_adapter::snapshot;

namespace {

::torch::nn::Sequential model_with_seed(std::uint64_t seed) {
  ::torch::manual_seed(seed);
  return ::torch::nn::Sequential(::torch::nn::Linear(17, 9), ::torch::nn::Linear(9, 3));
}

// The closed-form gradient alloy adds, as a store of zeros plus the gradient.
memory_store zeros_like(const memory_store& store) {
  memory_store zeros;
  for (const auto& name : store.names()) zeros.insert(name, dtype::f32, store.view(name).shape());
  return zeros;
}

void check_gradients(::torch::nn::Sequential& model, const memory_store& closed_form, double scale = 1.0) {
  for (const auto& item : model->named_parameters()) {
    INFO(item.key());
    REQUIRE(item.value().grad().defined());
    const ::torch::Tensor want = scale * from_view(closed_form.view(item.key()));
    CHECK(::torch::allclose(item.value().grad(), want, 1e-4, 1e-6));
  }
}

}  // namespace

TEST_CASE("torch l2_pull and sign_agreement: autograd equals the closed form", "[adapters][torch][regularizers]") {
  auto task = model_with_seed(1);
  const memory_store global = snapshot(*model_with_seed(2));
  const alignment_target target(global, 0.3, ::torch::kCPU);
  const memory_store task_weights = snapshot(*task);

  for (const bool top_only : {false, true}) {
    INFO("top_only " << top_only);
    task->zero_grad();
    const ::torch::Tensor value = torch_adapter::l2_pull(*task, target, 0.7, top_only);
    (3 * value).backward();  // the chain rule through the penalty: gradients scale with the loss
    memory_store gradient = zeros_like(task_weights);
    const double want = alloy::l2_pull(cpu_backend{}, global, task_weights, gradient, 0.7,
                                       top_only ? &target.masks() : nullptr);
    CHECK(value.item<double>() == Approx(want).epsilon(1e-5));
    check_gradients(task, gradient, 3.0);
  }

  {
    task->zero_grad();
    const ::torch::Tensor value = torch_adapter::sign_agreement(*task, target, 1.3);
    value.backward();
    memory_store gradient = zeros_like(task_weights);
    const double want = alloy::sign_agreement(cpu_backend{}, global, task_weights, gradient, 1.3, target.masks());
    REQUIRE(want > 0);
    CHECK(value.item<double>() == Approx(want).epsilon(1e-5));
    check_gradients(task, gradient);
  }
}

TEST_CASE("torch cosine_alignment: autograd equals the closed form, zero updates contribute nothing",
          "[adapters][torch][regularizers]") {
  auto task = model_with_seed(3);
  const memory_store initial = snapshot(*model_with_seed(4));
  const memory_store global = snapshot(*model_with_seed(5));
  alignment_target target(global, 0.0, ::torch::kCPU);
  target.set_initial(initial);
  const memory_store task_weights = snapshot(*task);

  {
    task->zero_grad();
    const ::torch::Tensor value = torch_adapter::cosine_alignment(*task, target, 2.0);
    value.backward();
    memory_store gradient = zeros_like(task_weights);
    const double want = alloy::cosine_alignment(cpu_backend{}, global, task_weights, initial, gradient, 2.0);
    CHECK(value.item<double>() == Approx(want).epsilon(1e-5));
    check_gradients(task, gradient);

    // G == G0 (the first task): the angle is undefined everywhere; value and gradient are zero, not NaN.
    alignment_target first(initial, 0.0, ::torch::kCPU);
    first.set_initial(initial);
    task->zero_grad();
    const ::torch::Tensor none = torch_adapter::cosine_alignment(*task, first, 2.0);
    none.backward();
    CHECK(none.item<double>() == 0.0);
    for (const auto& p : task->parameters()) CHECK(p.grad().abs().sum().item<float>() == 0.0f);
  }
}

TEST_CASE("the closed form differentiates bf16 parameters, viewed in place, into bf16 gradients",
          "[adapters][torch][regularizers]") {
  auto task = model_with_seed(8);
  task->to(::torch::kBFloat16);
  const memory_store global = snapshot(*model_with_seed(9));
  const alignment_target target(global, 0.5, ::torch::kCPU);
  const memory_store task_weights = snapshot(*task);
  torch_adapter::l2_pull(*task, target, 1.0, true).backward();
  memory_store gradient = zeros_like(task_weights);
  alloy::l2_pull(cpu_backend{}, global, task_weights, gradient, 1.0, &target.masks());
  for (const auto& item : task->named_parameters()) {
    INFO(item.key());
    REQUIRE(item.value().grad().scalar_type() == ::torch::kBFloat16);
    const ::torch::Tensor want = from_view(gradient.view(item.key())).to(::torch::kBFloat16);
    CHECK(::torch::equal(item.value().grad(), want));
  }
}

TEST_CASE("torch regularizers refuse a missing G0 or a module without the target's tensors",
          "[adapters][torch][regularizers]") {
  auto task = model_with_seed(6);
  memory_store global = snapshot(*model_with_seed(7));
  const alignment_target target(global, 0.5, ::torch::kCPU);
  CHECK_THROWS_WITH(torch_adapter::cosine_alignment(*task, target, 1.0), Catch::Contains("G0"));
  global.insert("head.weight", dtype::f32, {2, 2});
  const alignment_target bigger(global, 0.5, ::torch::kCPU);
  CHECK_THROWS_WITH(torch_adapter::l2_pull(*task, bigger, 1.0), Catch::Contains("'head.weight'"));
}
