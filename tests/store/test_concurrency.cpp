// What docs/reliability.md promises about threads: stores are safe to read from many threads at
// once (views, lookups, releasing pages), and merges that share inputs may run concurrently, each
// into its own output, with the same result as one at a time. Run under ThreadSanitizer by
// `ctest --preset tsan` (scripts/test.sh), where a data race fails the test.

#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/alloy.hpp"
#include "tensor_builders.hpp"
#include "test_folder.hpp"

using namespace alloy;
using alloy::testing::test_folder;

namespace {

constexpr int reader_threads = 8;

// A model with tensors big enough that merges split them into several chunks (and threads).
memory_store model(unsigned seed) {
  memory_store store;
  for (unsigned i = 0; i < 6; ++i) {
    const std::size_t count = (i % 3 + 1) * 70'000;
    testing::insert_values(store, "layer." + std::to_string(i), testing::random_values(count, seed + i),
                           shape{static_cast<std::int64_t>(count)}, i % 2 != 0 ? dtype::bf16 : dtype::f32);
  }
  return store;
}

std::uint64_t checksum(const_tensor_view view) {
  std::uint64_t sum = 1469598103934665603ull;
  for (const std::byte b : view.bytes()) sum = (sum ^ std::to_integer<std::uint64_t>(b)) * 1099511628211ull;
  return sum;
}

template <class Store>
std::vector<std::uint64_t> checksums(const Store& store) {
  std::vector<std::uint64_t> sums;
  for (const auto& name : store.names()) sums.push_back(checksum(store.view(name)));
  return sums;
}

// Each of `reader_threads` threads walks the names in its own rotated order and checksums every
// tensor, then (if asked) lets its pages go while other threads may still be reading them.
template <class Store>
std::vector<std::vector<std::uint64_t>> checksums_from_threads(const Store& store, bool release) {
  std::vector<std::vector<std::uint64_t>> seen(reader_threads);
  std::vector<std::thread> readers;
  for (int t = 0; t < reader_threads; ++t) {
    readers.emplace_back([&store, &seen, release, t] {
      const auto& names = store.names();
      std::vector<std::uint64_t> sums(names.size());
      for (std::size_t k = 0; k < names.size(); ++k) {
        const std::size_t i = (k + static_cast<std::size_t>(t)) % names.size();
        sums[i] = checksum(store.view(names[i]));
        if (release) store.release(names[i]);
      }
      seen[static_cast<std::size_t>(t)] = std::move(sums);
    });
  }
  for (auto& reader : readers) reader.join();
  return seen;
}

}  // namespace

TEST_CASE("a safetensors store is read from many threads at once", "[store][threads]") {
  test_folder folder;
  save_safetensors(folder / "m.safetensors", model(1));
  const auto store = safetensors_store::open(folder / "m.safetensors");
  const std::vector<std::uint64_t> expected = checksums(store);

  for (const auto& sums : checksums_from_threads(store, true)) CHECK(sums == expected);
}

TEST_CASE("merges sharing their inputs run concurrently, each as it would alone", "[merge][threads]") {
  const memory_store base = model(10);
  const memory_store models[] = {model(20), model(30), model(40)};
  const auto recipe = [](std::string method, parameter_map parameters) {
    return merge_recipe{.method = std::move(method), .parameters = std::move(parameters),
                        .model_parameters = std::vector<parameter_map>(3)};
  };
  const std::vector<merge_recipe> recipes{
      recipe("ties", {{"density", parameter_setting(0.4)}, {"weight", parameter_setting(0.5)}}),
      recipe("dare_ties", {{"density", parameter_setting(0.6)}, {"weight", parameter_setting(0.5)}}),
      recipe("task_arithmetic", {{"weight", parameter_setting(0.7)}}),
      recipe("magmax", {}),
  };
  const cpu_backend backend{.threads = 2};
  std::vector<std::vector<std::uint64_t>> alone;
  for (const auto& each : recipes) {
    alone.push_back(checksums(merge_stores(each, backend, &base, std::span<const memory_store>(models))));
  }

  std::vector<std::vector<std::uint64_t>> together(recipes.size() * 2);
  std::vector<std::thread> workers;
  for (std::size_t w = 0; w < together.size(); ++w) {
    workers.emplace_back([&, w] {
      const merge_recipe& mine = recipes[w % recipes.size()];
      together[w] = checksums(merge_stores(mine, backend, &base, std::span<const memory_store>(models)));
    });
  }
  for (auto& worker : workers) worker.join();
  for (std::size_t w = 0; w < together.size(); ++w) CHECK(together[w] == alone[w % recipes.size()]);
}

TEST_CASE("a LoRA-applied store folds each tensor once for many reading threads", "[merge][lora][threads]") {
  test_folder folder;
  memory_store base;
  memory_store adapter;
  const int rank = 4;
  for (unsigned i = 0; i < 4; ++i) {
    const std::string layer = "layer." + std::to_string(i);
    testing::insert_values(base, layer + ".weight", testing::random_values(64 * 128, 50 + i), shape{64, 128});
    testing::insert_values(adapter, "base_model.model." + layer + ".lora_A.weight",
                           testing::random_values(rank * 128, 60 + i), shape{rank, 128});
    testing::insert_values(adapter, "base_model.model." + layer + ".lora_B.weight",
                           testing::random_values(64 * rank, 70 + i), shape{64, rank});
  }
  std::filesystem::create_directories(folder / "adapter");
  testing::write_text_file(folder / "adapter" / "adapter_config.json", R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8})");
  save_safetensors(folder / "adapter" / "adapter_model.safetensors", adapter);

  const lora_applied_store alone(base, peft_lora_adapter::open(folder / "adapter"));
  const std::vector<std::uint64_t> expected = checksums(alone);
  const lora_applied_store shared(base, peft_lora_adapter::open(folder / "adapter"), cpu_backend{.threads = 2});
  for (const auto& sums : checksums_from_threads(shared, false)) CHECK(sums == expected);
}
