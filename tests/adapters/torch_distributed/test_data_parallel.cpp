// Data parallel over c10d's Gloo: two ranks as two threads over one HashStore (the same process
// group and collectives as between processes, without ports). The collectives give every rank
// the same bits; a loop that shards each batch and sums the gradients trains what one process
// trains on the whole batch, up to the float order of the sums, with PAM identical on the ranks.

#include <torch/torch.h>

#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/torch.hpp"
#include "alloy/torch/distributed.hpp"

using alloy::torch_adapter::data_parallel;

namespace {

// Runs body(group) on `ranks` threads joined over one HashStore; rethrows the first failure.
void on_ranks(int ranks, const std::function<void(const data_parallel&)>& body) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::exception_ptr> failures(static_cast<std::size_t>(ranks));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < ranks; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        const data_parallel group(store, rank, ranks, std::chrono::seconds(20));
        body(group);
      } catch (...) {
        failures[static_cast<std::size_t>(rank)] = std::current_exception();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& failure : failures) {
    if (failure) std::rethrow_exception(failure);
  }
}

// Sets an environment variable for one scope.
class scoped_environment {
 public:
  scoped_environment(const char* name, const char* value) : name_(name) {
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~scoped_environment() { ::unsetenv(name_); }
  scoped_environment(const scoped_environment&) = delete;
  scoped_environment& operator=(const scoped_environment&) = delete;

 private:
  const char* name_;
};

}  // namespace

TEST_CASE("data_parallel: shards cover a batch once, in contiguous parts whose sizes differ by at most one") {
  on_ranks(3, [](const data_parallel& group) {
    for (std::int64_t count : {0, 1, 2, 3, 7, 64, 65}) {
      const auto [begin, end] = group.shard(count);
      const std::vector<std::int64_t> parts = group.sum({end - begin, group.rank() == 0 ? begin : 0});
      CHECK(parts[0] == count);
      CHECK(parts[1] == 0);  // rank 0 starts at the beginning
      CHECK(end - begin >= count / 3);
      CHECK(end - begin <= count / 3 + 1);
      const auto [next_begin, next_end] = data_parallel().shard(count);  // one process: everything
      CHECK(next_begin == 0);
      CHECK(next_end == count);
    }
  });
}

TEST_CASE("data_parallel: gradients are summed over the ranks into the same bits, a missing one counting as zero") {
  std::vector<std::vector<float>> results(2);
  on_ranks(2, [&](const data_parallel& group) {
    const float r = static_cast<float>(group.rank());
    ::torch::Tensor a = ::torch::zeros({3, 2}, ::torch::requires_grad());
    ::torch::Tensor b = ::torch::zeros({4}, ::torch::requires_grad());
    a.mutable_grad() = ::torch::full({3, 2}, 0.1f * (r + 1));  // 0.1 and 0.2
    if (group.rank() == 0) b.mutable_grad() = ::torch::arange(4, ::torch::kFloat32);  // rank 1 has none
    group.sum_gradients({a, b});
    REQUIRE(b.grad().defined());
    CHECK(::torch::allclose(a.grad(), ::torch::full({3, 2}, 0.3f)));
    CHECK(b.grad().equal(::torch::arange(4, ::torch::kFloat32)));
    const ::torch::Tensor both = ::torch::cat({a.grad().reshape({-1}), b.grad()});
    results[static_cast<std::size_t>(group.rank())] = std::vector<float>(both.data_ptr<float>(), both.data_ptr<float>() + both.numel());
  });
  CHECK(results[0] == results[1]);
}

TEST_CASE("data_parallel: a store, tensors and text broadcast from the root; a store of another layout is refused on every rank") {
  on_ranks(2, [](const data_parallel& group) {
    alloy::memory_store store;
    const float value = group.rank() == 1 ? 7.5f : -1.0f;
    auto w = store.insert("w", alloy::dtype::f32, alloy::shape{2, 3});
    for (std::size_t i = 0; i < 6; ++i) w.as<float>()[i] = value + static_cast<float>(i);
    auto h = store.insert("h", alloy::dtype::bf16, alloy::shape{5});
    for (std::size_t i = 0; i < 5; ++i) h.as<alloy::bfloat16>()[i] = alloy::bfloat16(value);
    group.broadcast(store, /*root=*/1);
    for (std::size_t i = 0; i < 6; ++i) CHECK(store.view("w").as<float>()[i] == 7.5f + static_cast<float>(i));
    for (std::size_t i = 0; i < 5; ++i) CHECK(static_cast<float>(store.view("h").as<alloy::bfloat16>()[i]) == 7.5f);

    ::torch::Tensor t = ::torch::full({4}, static_cast<float>(group.rank()));
    group.broadcast({t}, /*root=*/0);
    CHECK(t.equal(::torch::zeros({4})));

    std::string text = group.rank() == 1 ? std::string("{\"tasks\": [1, 2]}\n\0binary", 25) : std::string("stale");
    group.broadcast(text, /*root=*/1);
    CHECK(text == std::string("{\"tasks\": [1, 2]}\n\0binary", 25));
    std::string nothing = group.is_root() ? std::string() : std::string("left over");
    group.broadcast(nothing);
    CHECK(nothing.empty());

    alloy::memory_store other;
    other.insert("w", alloy::dtype::f32, group.rank() == 0 ? alloy::shape{2, 3} : alloy::shape{3, 2});
    CHECK_THROWS_WITH(group.broadcast(other), Catch::Contains("names, dtypes and shapes differ between the 2 ranks"));
    CHECK_THROWS_WITH(group.broadcast(store, 2), Catch::Contains("broadcast from rank 2 in a world of 2"));
  });
}

TEST_CASE("data_parallel: check_same passes where the ranks agree and fails on every rank where they do not") {
  on_ranks(2, [](const data_parallel& group) {
    group.check_same(0xfedcba9876543210ull, "the fingerprints");
    const std::uint64_t differing = group.rank() == 0 ? 1u : 1ull << 40;
    CHECK_THROWS_WITH(group.check_same(differing, "the parameters"), Catch::Contains("the parameters differ between the 2 ranks"));
    group.barrier();
  });
}

TEST_CASE("data_parallel: two ranks on halves of each batch train what one process trains on the whole, PAM included") {
  // A small classifier, AdamW, PAM every 3 steps against a G; 12 steps of batches of 16.
  const auto make_model = [] {
    ::torch::manual_seed(5);
    return ::torch::nn::Sequential(::torch::nn::Linear(12, 8), ::torch::nn::Tanh(), ::torch::nn::Linear(8, 4));
  };
  ::torch::manual_seed(11);
  const ::torch::Tensor x = ::torch::randn({192, 12});
  const ::torch::Tensor y = ::torch::randint(0, 4, {192});
  // The initial weights drawn once: ranks are threads here, and two of them seeding and drawing
  // from torch's one global generator at the same time would interleave their draws.
  const alloy::memory_store initial = alloy::torch_adapter::snapshot(*make_model());
  const auto train = [&](const data_parallel& group) {
    auto model = make_model();
    alloy::torch_adapter::assign(*model, initial);
    alloy::memory_store global = alloy::torch_adapter::snapshot(*model);
    for (const auto& name : global.names()) {  // G: the start with every third sign turned, so that PAM resets
      auto values = global.mutable_view(name).as<float>();
      for (std::size_t i = 0; i < values.size(); i += 3) values[i] = -values[i];
    }
    alloy::torch_adapter::pam_aligner aligner({.p = 0.5, .every = 3});
    aligner.set_global(global);
    ::torch::optim::AdamW optimizer(model->parameters(), ::torch::optim::AdamWOptions(0.01).weight_decay(0.0));
    std::size_t reset = 0;
    for (std::int64_t from = 0; from < 192; from += 16) {
      const auto [begin, end] = group.shard(16);
      const ::torch::Tensor xs = x.narrow(0, from + begin, end - begin), ys = y.narrow(0, from + begin, end - begin);
      optimizer.zero_grad();
      // This shard's mean loss times its share of the batch: the sum over ranks is the batch's mean.
      const ::torch::Tensor loss = ::torch::nn::functional::cross_entropy(model->forward(xs), ys) *
                                   (static_cast<double>(end - begin) / 16.0);
      loss.backward();
      group.sum_gradients(model->parameters());
      optimizer.step();
      reset += aligner.step(*model, optimizer).total_reset;
    }
    group.check_same(alloy::torch_adapter::fingerprint(model->parameters()), "the trained parameters");
    return std::make_pair(alloy::torch_adapter::snapshot(*model), reset);
  };
  const auto [alone, alone_reset] = train(data_parallel());
  CHECK(alone_reset > 0);
  std::vector<std::pair<alloy::memory_store, std::size_t>> ranks(2);
  on_ranks(2, [&](const data_parallel& group) { ranks[static_cast<std::size_t>(group.rank())] = train(group); });
  for (const auto& [trained, reset] : ranks) {
    CHECK(reset == alone_reset);
    for (const auto& name : alone.names()) {
      const auto a = alone.view(name), b = trained.view(name);
      for (std::size_t i = 0; i < a.numel(); ++i) CHECK(b.as<float>()[i] == Approx(a.as<float>()[i]).margin(1e-4));
    }
  }
}

TEST_CASE("data_parallel: the standard environment, and errors that name the variable") {
  {
    const scoped_environment size("WORLD_SIZE", nullptr);
    const auto world = alloy::torch_adapter::read_world_environment();
    CHECK(world.size == 1);
    CHECK(world.rank == 0);
    CHECK(data_parallel::from_environment().size() == 1);
  }
  {
    const scoped_environment size("WORLD_SIZE", "2"), rank("RANK", nullptr);
    CHECK_THROWS_WITH(alloy::torch_adapter::read_world_environment(), Catch::Contains("WORLD_SIZE=2 but RANK is not set"));
  }
  {
    const scoped_environment size("WORLD_SIZE", "2"), rank("RANK", "2");
    CHECK_THROWS_WITH(alloy::torch_adapter::read_world_environment(), Catch::Contains("RANK='2' is not an integer in [0, 1]"));
  }
  {
    const scoped_environment size("WORLD_SIZE", "two");
    CHECK_THROWS_WITH(alloy::torch_adapter::read_world_environment(), Catch::Contains("WORLD_SIZE='two'"));
  }
  {
    const scoped_environment size("WORLD_SIZE", "2"), rank("RANK", "1"), port("MASTER_PORT", nullptr);
    CHECK_THROWS_WITH(alloy::torch_adapter::read_world_environment(), Catch::Contains("MASTER_PORT is not set"));
  }
  {
    const scoped_environment size("WORLD_SIZE", "2"), rank("RANK", "1"), port("MASTER_PORT", "29511"),
        address("MASTER_ADDR", "localhost"), agent("TORCHELASTIC_USE_AGENT_STORE", "True");
    const auto world = alloy::torch_adapter::read_world_environment();
    CHECK(world.rank == 1);
    CHECK(world.size == 2);
    CHECK(world.local_rank == 1);
    CHECK(world.master_port == 29511);
    CHECK(world.master_addr == "localhost");
    CHECK(world.agent_store);
  }
}
