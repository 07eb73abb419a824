// GPU cases of the torch adapter (CTest label gpu): run where LibTorch sees a CUDA device, and
// report that they did not run elsewhere.

#include <torch/torch.h>

#include <algorithm>
#include <array>

#include <catch2/catch.hpp>

#include "alloy/merge/execute_plan.hpp"
#include "alloy/torch/merge.hpp"
#include "alloy/torch/pam.hpp"
#include "alloy/torch/regularizers.hpp"
#include "alloy/torch/transfer.hpp"
#include "tensor_builders.hpp"

using namespace alloy;
using alloy::torch_adapter::snapshot;

namespace {

::torch::nn::Sequential small_model(std::uint64_t seed) {
  ::torch::manual_seed(seed);
  return ::torch::nn::Sequential(::torch::nn::Linear(40, 30), ::torch::nn::ReLU(), ::torch::nn::Linear(30, 5));
}

}  // namespace

TEST_CASE("the torch aligner aligns CUDA modules as it aligns CPU ones", "[adapters][torch][pam][gpu]") {
  if (!::torch::cuda::is_available()) {
    WARN("no CUDA device: the CUDA path of the torch aligner was not run");
    return;
  }
  auto cpu_model = small_model(8);
  auto gpu_model = small_model(8);
  gpu_model->to(::torch::kCUDA);
  const memory_store global = snapshot(*small_model(9));
  ::torch::optim::Adam adam(gpu_model->parameters(), ::torch::optim::AdamOptions(1e-2));
  torch_adapter::pam_aligner on_cpu({0.5, 1, pam_reset::to_global});
  on_cpu.set_global(global);
  torch_adapter::pam_aligner on_gpu({0.5, 1, pam_reset::to_global});
  on_gpu.set_global(global, ::torch::kCUDA);
  const pam_report want = on_cpu.align(*cpu_model);
  const pam_report got = on_gpu.align(*gpu_model, &adam);
  CHECK(got.reset_per_tensor == want.reset_per_tensor);
  const memory_store a = snapshot(*cpu_model);
  const memory_store b = snapshot(*gpu_model);
  for (const auto& name : a.names()) CHECK(alloy::testing::same_bytes(a.view(name), b.view(name)));
}

TEST_CASE("snapshot, assign, merge_into and the regularizers work on CUDA modules", "[adapters][torch][gpu]") {
  if (!::torch::cuda::is_available()) {
    WARN("no CUDA device: the CUDA paths of snapshot, assign, merge_into and the regularizers were not run");
    return;
  }
  auto cpu_model = small_model(10);
  auto gpu_model = small_model(10);
  gpu_model->to(::torch::kCUDA);
  const memory_store a = snapshot(*gpu_model);
  const memory_store b = snapshot(*cpu_model);
  for (const auto& name : a.names()) CHECK(alloy::testing::same_bytes(a.view(name), b.view(name)));
  const memory_store other = snapshot(*small_model(11));
  torch_adapter::assign(*gpu_model, other);
  CHECK(gpu_model->parameters().front().device().is_cuda());
  CHECK(::torch::equal(gpu_model->parameters().front().cpu(), small_model(11)->parameters().front()));

  const std::array models{a, other};
  const merge_recipe average{.method = "linear", .model_parameters = {{{"weight", 1.0}}, {{"weight", 1.0}}}};
  torch_adapter::merge_into(*gpu_model, average, cpu_backend{}, static_cast<const memory_store*>(nullptr),
                            std::span(models));
  torch_adapter::merge_into(*cpu_model, average, cpu_backend{}, static_cast<const memory_store*>(nullptr),
                            std::span(models));
  CHECK(::torch::equal(gpu_model->parameters().front().cpu(), cpu_model->parameters().front()));

  const torch_adapter::alignment_target on_gpu(other, 0.5, ::torch::kCUDA);
  const torch_adapter::alignment_target on_cpu(other, 0.5, ::torch::kCPU);
  const ::torch::Tensor gpu_value = torch_adapter::l2_pull(*gpu_model, on_gpu, 0.5, true) +
                                    torch_adapter::sign_agreement(*gpu_model, on_gpu, 0.5);
  const ::torch::Tensor cpu_value = torch_adapter::l2_pull(*cpu_model, on_cpu, 0.5, true) +
                                    torch_adapter::sign_agreement(*cpu_model, on_cpu, 0.5);
  CHECK(gpu_value.item<double>() == Approx(cpu_value.item<double>()).epsilon(1e-5));
  gpu_value.backward();
  cpu_value.backward();
  CHECK(::torch::allclose(gpu_model->parameters().front().grad().cpu(), cpu_model->parameters().front().grad(), 1e-5,
                          1e-6));
}

TEST_CASE("merge_into merges a CUDA module in place on the GPU, bit for bit as on the CPU", "[adapters][torch][gpu]") {
  if (!::torch::cuda::is_available()) {
    WARN("no CUDA device: merge_into's CUDA path was not run");
    return;
  }
  auto cpu_model = small_model(20);
  auto gpu_model = small_model(20);
  gpu_model->to(::torch::kCUDA);
  const memory_store base = snapshot(*small_model(20));
  // Models on the GPU, read in place through device views; the base from host memory.
  auto first = small_model(21);
  auto second = small_model(22);
  first->to(::torch::kCUDA);
  second->to(::torch::kCUDA);
  const std::array gpu_models{torch_adapter::tensor_store::from_module(*first, true).with_device_views(),
                              torch_adapter::tensor_store::from_module(*second, true).with_device_views()};
  const std::array cpu_models{snapshot(*first), snapshot(*second)};
  const merge_recipe ties{.method = "ties",
                          .parameters = {{"density", 0.4}},
                          .model_parameters = {{{"weight", 1.0}}, {{"weight", 0.5}}}};
  const auto gpu_route = torch_adapter::merge_into(*gpu_model, ties, cpu_backend{}, &base, std::span(gpu_models));
  const auto cpu_route = torch_adapter::merge_into(*cpu_model, ties, cpu_backend{}, &base, std::span(cpu_models));
  CHECK(cpu_route == torch_adapter::merge_route::cpu_in_place);
#if defined(ALLOY_TORCH_CUDA)
  CHECK(gpu_route == torch_adapter::merge_route::cuda_in_place);
#else
  CHECK(gpu_route == torch_adapter::merge_route::staged);
#endif
  const memory_store got = snapshot(*gpu_model);
  const memory_store want = snapshot(*cpu_model);
  for (const auto& name : want.names()) {
    INFO(name);
    CHECK(alloy::testing::same_bytes(got.view(name), want.view(name)));
  }
  CHECK(gpu_model->parameters().front().device().is_cuda());
}

#if defined(ALLOY_TORCH_CUDA)
#include <c10/cuda/CUDAStream.h>

#include "alloy/cuda.hpp"

TEST_CASE("PAM and the regularizers run on alloy's CUDA backend with the CPU's bits", "[align][gpu]") {
  if (!::torch::cuda::is_available()) {
    WARN("no CUDA device: PAM and the regularizers on the CUDA backend were not run");
    return;
  }
  const alloy::cuda::backend gpu(c10::cuda::getCurrentCUDAStream().stream());
  const memory_store global = snapshot(*small_model(30));
  const memory_store initial = snapshot(*small_model(31));
  memory_store task = snapshot(*small_model(32));
  const auto on_device = [](const memory_store& store) {
    std::vector<std::pair<std::string, ::torch::Tensor>> tensors;
    for (const auto& name : store.names()) tensors.emplace_back(name, torch_adapter::from_view(store.view(name)).to(::torch::kCUDA));
    return torch_adapter::tensor_store(std::move(tensors)).with_device_views();
  };
  const torch_adapter::tensor_store device_global = on_device(global);
  const torch_adapter::tensor_store device_initial = on_device(initial);
  torch_adapter::tensor_store device_task = on_device(task);
  const tensor_masks masks = top_magnitude_masks(cpu_backend{}, global, 0.5);
  masks_by_name<alloy::cuda::device_mask> device_masks;
  for (const auto& [name, mask] : masks) device_masks.emplace(name, alloy::cuda::device_mask::from_host(mask, gpu.stream()));

  // Regularizers: the same gradients bit for bit (the same functors), values up to the f64 sum order.
  memory_store gradient;
  for (const auto& name : task.names()) gradient.insert(name, dtype::f32, task.view(name).shape());
  torch_adapter::tensor_store device_gradient = on_device(gradient);
  const double want = l2_pull(cpu_backend{}, global, task, gradient, 0.7, &masks) +
                      sign_agreement(cpu_backend{}, global, task, gradient, 1.3, masks) +
                      cosine_alignment(cpu_backend{}, global, task, initial, gradient, 2.0);
  const double got = l2_pull(gpu, device_global, device_task, device_gradient, 0.7, &device_masks) +
                     sign_agreement(gpu, device_global, device_task, device_gradient, 1.3, device_masks) +
                     cosine_alignment(gpu, device_global, device_task, device_initial, device_gradient, 2.0);
  CHECK(got == Approx(want).epsilon(1e-9));
  for (const auto& name : gradient.names()) {
    INFO(name);
    CHECK(::torch::equal(device_gradient.tensor(name).cpu(), torch_adapter::from_view(gradient.view(name))));
  }

  // PAM: the same resets and the same weights.
  for (const auto mode : {pam_reset::to_zero, pam_reset::to_global}) {
    memory_store cpu_task = task;
    torch_adapter::tensor_store gpu_task = on_device(task);
    const pam_report cpu_report = align_signs(cpu_backend{}, global, cpu_task, masks, mode);
    std::size_t callbacks = 0;
    const pam_report gpu_report = align_signs(gpu, device_global, gpu_task, device_masks, mode,
                                              [&](std::string_view name, const alloy::cuda::device_mask& reset) {
                                                CHECK(reset.size() == global.view(name).numel());
                                                ++callbacks;
                                              });
    REQUIRE(cpu_report.total_reset > 0);
    CHECK(gpu_report.reset_per_tensor == cpu_report.reset_per_tensor);
    CHECK(gpu_report.total_considered == cpu_report.total_considered);
    CHECK(callbacks > 0);
    for (const auto& name : task.names()) {
      INFO(name);
      CHECK(::torch::equal(gpu_task.tensor(name).cpu(), torch_adapter::from_view(cpu_task.view(name))));
    }
  }
}
#endif
