#include <alloy/alloy.hpp>

#include <cstdio>
#include <filesystem>

int main() {
  alloy::memory_store store;
  auto weight = store.insert("weight", alloy::dtype::bf16, {2, 2});
  weight.as<alloy::bfloat16>()[3] = alloy::bfloat16(1.5f);
  const auto path = std::filesystem::temp_directory_path() / "alloy-consumer-check.safetensors";
  std::filesystem::remove(path);
  alloy::save_safetensors(path, store);
  const auto loaded = alloy::safetensors_store::open(path);
  const float value = static_cast<float>(loaded.view("weight").as<alloy::bfloat16>()[3]);
  std::filesystem::remove(path);
  std::printf("consumer read %g\n", static_cast<double>(value));
  return value == 1.5f ? 0 : 1;
}
