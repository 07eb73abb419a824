// Writes safetensors files with alloy, and cpp_manifest.json describing their contents, for the
// independent NumPy reader (interop.py check) to verify. Usage: write_interop_files OUTPUT_DIR

#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "alloy/store/memory_store.hpp"
#include "alloy/store/safetensors_writer.hpp"

using namespace alloy;

namespace {

// Values on a 1/8 grid within +-16: exact in every float dtype, so the manifest compares exactly.
double grid_value(std::size_t tensor, std::size_t i) {
  return static_cast<double>(static_cast<int>((i * 37 + tensor * 11) % 251) - 125) / 8.0;
}

nlohmann::json build(memory_store& store) {
  nlohmann::json described = nlohmann::json::object();
  const auto add_float = [&](const std::string& name, dtype type, const shape& dims) {
    const std::size_t index = store.size();
    const tensor_view view = store.insert(name, type, dims);
    auto& values = described[name]["values"] = nlohmann::json::array();
    for (std::size_t i = 0; i < view.numel(); ++i) {
      const double value = grid_value(index, i);
      const float as_float = static_cast<float>(value);
      switch (type) {
        case dtype::f32: view.as<float>()[i] = as_float; break;
        case dtype::f16: view.as<float16>()[i] = float16(as_float); break;
        case dtype::bf16: view.as<bfloat16>()[i] = bfloat16(as_float); break;
        case dtype::f64: view.as<double>()[i] = value; break;
        default: break;
      }
      values.push_back(value);
    }
    described[name]["dtype"] = std::string(alloy::name(type));
    described[name]["shape"] = std::vector<std::int64_t>(dims.begin(), dims.end());
  };
  add_float("model.layers.0.self_attn.q_proj.weight", dtype::bf16, {6, 4});
  add_float("model.layers.0.mlp.up_proj.weight", dtype::f16, {3, 5});
  add_float("model.norm.weight", dtype::f32, {9});
  add_float("lm_head.weight", dtype::f64, {2, 3});
  add_float("logit_scale", dtype::f32, {});
  add_float("empty", dtype::bf16, {0});

  const tensor_view ids = store.insert("position_ids", dtype::i64, {5});
  auto& id_values = described["position_ids"]["values"] = nlohmann::json::array();
  for (std::size_t i = 0; i < 5; ++i) {
    ids.as<std::int64_t>()[i] = static_cast<std::int64_t>(i * i) - (std::int64_t{1} << 40);
    id_values.push_back(ids.as<std::int64_t>()[i]);
  }
  described["position_ids"]["dtype"] = "I64";
  described["position_ids"]["shape"] = {5};

  const tensor_view mask = store.insert("mask", dtype::boolean, {4});
  described["mask"] = {{"dtype", "BOOL"}, {"shape", {4}}, {"values", {true, false, false, true}}};
  mask.as<bool>()[0] = true;
  mask.as<bool>()[3] = true;
  return described;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: write_interop_files OUTPUT_DIR\n";
    return 2;
  }
  try {
    const std::filesystem::path out = argv[1];
    std::filesystem::create_directories(out);
    for (const char* name : {"cpp_single.safetensors", "cpp_sharded", "cpp_one_shard"}) {
      std::filesystem::remove_all(out / name);
    }
    memory_store store;
    const nlohmann::json tensors = build(store);
    nlohmann::json manifest;

    const metadata_map metadata{{"format", "pt"}, {"written_by", "alloy"}};
    save_safetensors(out / "cpp_single.safetensors", store, metadata);
    manifest["cpp_single.safetensors"] = {{"metadata", metadata}, {"tensors", tensors}};

    model_write_options sharded;
    sharded.max_shard_bytes = 64;
    save_model(out / "cpp_sharded", store, sharded);
    manifest["cpp_sharded"] = {{"metadata", sharded.metadata}, {"tensors", tensors}};

    save_model(out / "cpp_one_shard", store);
    manifest["cpp_one_shard"] = {{"metadata", model_write_options{}.metadata}, {"tensors", tensors}};

    std::ofstream(out / "cpp_manifest.json") << manifest.dump(1) << "\n";
    std::cout << "alloy wrote " << store.size() << " tensors in 3 layouts to " << out.string() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "write_interop_files: " << e.what() << "\n";
    return 1;
  }
}
