// PAM in a torch optimizer loop: both engines agree with the core aligner, and the optimizer's
// state is reset exactly where the weights are.

#include <torch/torch.h>

#include <map>

#include <catch2/catch.hpp>

#include "alloy/torch/pam.hpp"
#include "tensor_builders.hpp"
#include "alloy/torch/transfer.hpp"

using namespace alloy;
using alloy::torch_adapter::alignment_target;
using alloy::torch_adapter::from_view;
using alloy::torch_adapter::snapshot;

namespace {

::torch::nn::Sequential small_model(std::uint64_t seed) {
  ::torch::manual_seed(seed);
  return ::torch::nn::Sequential(::torch::nn::Linear(40, 30), ::torch::nn::ReLU(), ::torch::nn::Linear(30, 5));
}

// A few optimizer steps on random data, so that the optimizer has state and T drifts from G.
void train(::torch::nn::Sequential& model, ::torch::optim::Optimizer& optimizer, int steps) {
  for (int i = 0; i < steps; ++i) {
    optimizer.zero_grad();
    const ::torch::Tensor x = ::torch::randn({16, 40});
    const ::torch::Tensor y = ::torch::randint(0, 5, {16});
    ::torch::nn::functional::cross_entropy(model->forward(x), y).backward();
    optimizer.step();
  }
}

::torch::Tensor adam_moment(::torch::optim::Adam& adam, const ::torch::Tensor& parameter, bool second) {
  auto* state = torch_adapter::detail::optimizer_state(adam, parameter);
  REQUIRE(state != nullptr);
  auto& s = dynamic_cast<::torch::optim::AdamParamState&>(*state);
  return second ? s.exp_avg_sq() : s.exp_avg();
}

}  // namespace

TEST_CASE("the torch aligner equals the core aligner, in place and staged", "[adapters][torch][pam]") {
  for (const auto reset : {pam_reset::to_zero, pam_reset::to_global}) {
    for (const auto type : {::torch::kFloat32, ::torch::kBFloat16}) {
      auto global_model = small_model(1);
      global_model->to(type);
      const memory_store global = snapshot(*global_model);
      // The task model starts elsewhere, so that many signs conflict.
      auto task_model = small_model(2);
      task_model->to(type);
      memory_store expected = snapshot(*task_model);
      auto second = small_model(2);
      second->to(type);

      alloy::pam_aligner core({0.4, 1, reset});
      core.set_global(cpu_backend{}, global);
      const pam_report want = core.align(cpu_backend{}, global, expected);
      REQUIRE(want.total_reset > 0);

      torch_adapter::pam_aligner on_cpu({0.4, 1, reset});
      on_cpu.set_global(global);
      const pam_report got_cpu = on_cpu.align(*task_model);
      // A non-contiguous parameter cannot be viewed in place: the pass is staged through host memory.
      {
        ::torch::NoGradGuard no_grad;
        auto weight = second->named_parameters()["0.weight"];
        weight.set_(weight.detach().t().contiguous().t());
        REQUIRE_FALSE(weight.is_contiguous());
      }
      torch_adapter::pam_aligner staged({0.4, 1, reset});
      staged.set_global(global);
      const pam_report got_ops = staged.align(*second);

      CHECK(got_cpu.reset_per_tensor == want.reset_per_tensor);
      CHECK(got_ops.reset_per_tensor == want.reset_per_tensor);
      CHECK(got_ops.total_considered == want.total_considered);
      const memory_store after_cpu = snapshot(*task_model);
      const memory_store after_ops = snapshot(*second);
      for (const auto& name : expected.names()) {
        INFO(name << " " << (reset == pam_reset::to_zero ? "to_zero" : "to_global"));
        CHECK(alloy::testing::same_bytes(expected.view(name), after_cpu.view(name)));
        CHECK(alloy::testing::same_bytes(expected.view(name), after_ops.view(name)));
      }
    }
  }
}

TEST_CASE("step aligns every K-th optimizer step and resets Adam's moments there", "[adapters][torch][pam]") {
  {
    auto model = small_model(3);
    const memory_store global = snapshot(*small_model(4));
    ::torch::optim::Adam adam(model->parameters(), ::torch::optim::AdamOptions(1e-2));
    torch_adapter::pam_aligner aligner({0.5, 3, pam_reset::to_zero});
    aligner.set_global(global);
    train(model, adam, 2);
    CHECK(aligner.step(*model, adam).total_reset == 0);  // steps 1 and 2: not due
    CHECK(aligner.step(*model, adam).total_reset == 0);
    train(model, adam, 1);

    // Copies of the state before the due step, to compare entry by entry.
    const auto parameters = model->named_parameters();
    std::map<std::string, std::pair<::torch::Tensor, ::torch::Tensor>> before;
    std::map<std::string, ::torch::Tensor> weights_before;
    for (const auto& item : parameters) {
      before[item.key()] = {adam_moment(adam, item.value(), false).clone(), adam_moment(adam, item.value(), true).clone()};
      weights_before[item.key()] = item.value().detach().clone();
    }
    const pam_report report = aligner.step(*model, adam);  // step 3: due
    REQUIRE(report.total_reset > 0);
    CHECK(aligner.steps() == 3);
    std::size_t checked = 0;
    for (const auto& item : parameters) {
      const ::torch::Tensor reset = weights_before[item.key()].ne(item.value().detach());
      CHECK(static_cast<std::size_t>(reset.sum().item<std::int64_t>()) <= report.reset_per_tensor.at(item.key()));
      const ::torch::Tensor was_reset = item.value().detach().eq(0).logical_and(weights_before[item.key()].ne(0));
      CHECK(static_cast<std::size_t>(was_reset.sum().item<std::int64_t>()) == report.reset_per_tensor.at(item.key()));
      const ::torch::Tensor m = adam_moment(adam, item.value(), false);
      const ::torch::Tensor v = adam_moment(adam, item.value(), true);
      CHECK(m.masked_select(was_reset).abs().sum().item<float>() == 0.0f);
      CHECK(v.masked_select(was_reset).abs().sum().item<float>() == 0.0f);
      // Untouched elsewhere.
      const ::torch::Tensor kept = was_reset.logical_not();
      CHECK(::torch::equal(m.masked_select(kept), before[item.key()].first.masked_select(kept)));
      CHECK(::torch::equal(v.masked_select(kept), before[item.key()].second.masked_select(kept)));
      checked += static_cast<std::size_t>(was_reset.sum().item<std::int64_t>());
    }
    CHECK(checked == report.total_reset);
  }
}

TEST_CASE("SGD momentum is reset, and unknown optimizer state is refused by name", "[adapters][torch][pam]") {
  auto model = small_model(5);
  const memory_store global = snapshot(*small_model(6));
  ::torch::optim::SGD sgd(model->parameters(), ::torch::optim::SGDOptions(0.1).momentum(0.9));
  train(model, sgd, 2);
  torch_adapter::pam_aligner aligner({0.5, 1, pam_reset::to_zero});
  aligner.set_global(global);
  const auto parameters = model->named_parameters();
  const ::torch::Tensor w_before = parameters["0.weight"].detach().clone();
  const pam_report report = aligner.step(*model, sgd);
  REQUIRE(report.reset_per_tensor.at("0.weight") > 0);
  const ::torch::Tensor reset = parameters["0.weight"].detach().eq(0).logical_and(w_before.ne(0));
  auto& state = dynamic_cast<::torch::optim::SGDParamState&>(*torch_adapter::detail::optimizer_state(sgd, parameters["0.weight"]));
  CHECK(state.momentum_buffer().masked_select(reset).abs().sum().item<float>() == 0.0f);
  CHECK(state.momentum_buffer().abs().sum().item<float>() > 0.0f);

  // LBFGS keeps a whole-model history under its first parameter: alloy cannot reset it entry by
  // entry, and says so instead of leaving it half-reset.
  auto other = small_model(5);
  ::torch::optim::LBFGS lbfgs(other->parameters(), ::torch::optim::LBFGSOptions(0.1).max_iter(2));
  const ::torch::Tensor x = ::torch::randn({8, 40});
  const ::torch::Tensor y = ::torch::randint(0, 5, {8});
  lbfgs.step([&] {
    lbfgs.zero_grad();
    ::torch::Tensor loss = ::torch::nn::functional::cross_entropy(other->forward(x), y);
    loss.backward();
    return loss;
  });
  // Refused before anything is reset: the weights are as they were.
  const memory_store before_refusal = snapshot(*other);
  CHECK_THROWS_WITH(aligner.align(*other, &lbfgs), Catch::Contains("'0.weight'") && Catch::Contains("optimizer state"));
  const memory_store after_refusal = snapshot(*other);
  for (const auto& name : before_refusal.names()) {
    CHECK(alloy::testing::same_bytes(before_refusal.view(name), after_refusal.view(name)));
  }
}

TEST_CASE("the torch aligner names what is wrong", "[adapters][torch][pam]") {
  auto model = small_model(7);
  torch_adapter::pam_aligner aligner;
  CHECK_THROWS_WITH(aligner.align(*model), Catch::Contains("set_global"));
  memory_store global = snapshot(*model);
  global.insert("extra.weight", dtype::f32, {2});
  aligner.set_global(global);
  CHECK_THROWS_WITH(aligner.align(*model), Catch::Contains("'extra.weight'"));
  CHECK_THROWS_AS(torch_adapter::pam_aligner({1.5}), alloy::error);
}
