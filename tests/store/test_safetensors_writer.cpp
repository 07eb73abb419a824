#include <sys/stat.h>

#include <filesystem>
#include <string>

#include <catch2/catch.hpp>

#include "alloy/store/memory_store.hpp"
#include "alloy/store/safetensors_store.hpp"
#include "alloy/store/safetensors_writer.hpp"
#include "store_conformance.hpp"
#include "test_folder.hpp"

using namespace alloy;
using alloy::testing::test_folder;

TEST_CASE("save and open round-trip a store with its metadata", "[safetensors][writer]") {
  const memory_store reference = testing::reference_content();
  test_folder folder;
  save_safetensors(folder / "m.safetensors", reference, {{"format", "pt"}, {"note", "ünïcode"}});
  CHECK(folder.entry_count() == 1);  // no temporary file left behind
  const auto store = safetensors_store::open(folder / "m.safetensors");
  CHECK(store.metadata().at("note") == "ünïcode");
  testing::check_store_conforms(store, reference);
}

TEST_CASE("written tensors are aligned to their element size", "[safetensors][writer]") {
  memory_store odd;
  odd.insert("byte", dtype::u8, {3});
  odd.insert("half", dtype::f16, {1});
  odd.insert("wide", dtype::f64, {2});
  odd.insert("float", dtype::f32, {3});
  test_folder folder;
  save_safetensors(folder / "m.safetensors", odd);
  const auto store = safetensors_store::open(folder / "m.safetensors");
  for (const auto& name : store.names()) {
    const auto view = store.view(name);
    CHECK(reinterpret_cast<std::uintptr_t>(view.data()) % size_of(view.dtype()) == 0);
  }
  CHECK(store.names().front() == "wide");
}

TEST_CASE("the file writer enforces its plan", "[safetensors][writer]") {
  test_folder folder;
  const std::vector<tensor_spec> plan{{"a", dtype::f32, {2}}, {"b", dtype::f32, {1}}};
  float a[2] = {1, 2};
  const const_tensor_view a_view(std::span<const float>(a), shape{2});
  {
    safetensors_file_writer writer(folder / "x.safetensors", plan);
    CHECK_THROWS_WITH(writer.write("b", a_view), Catch::Contains("out of order") && Catch::Contains("'a'"));
    CHECK_THROWS_WITH(writer.write("a", const_tensor_view(std::span<const float>(a, 1), shape{1})),
                      Catch::Contains("planned as F32 [2]"));
    writer.write("a", a_view);
    CHECK_THROWS_WITH(writer.commit(), Catch::Contains("'b'"));
  }
  // An abandoned or failed writer leaves nothing behind.
  CHECK(folder.entry_count() == 0);
}

TEST_CASE("an existing file is not overwritten unless asked", "[safetensors][writer]") {
  const memory_store reference = testing::reference_content();
  test_folder folder;
  testing::write_text_file(folder / "m.safetensors", "keep me");
  CHECK_THROWS_WITH(save_safetensors(folder / "m.safetensors", reference), Catch::Contains("refusing to overwrite"));
  CHECK(testing::read_text_file(folder / "m.safetensors") == "keep me");
  CHECK(folder.entry_count() == 1);
  save_safetensors(folder / "m.safetensors", reference, {}, /*replace=*/true);
  testing::check_store_conforms(safetensors_store::open(folder / "m.safetensors"), reference);
}

TEST_CASE("models are sharded by size with an index", "[safetensors][writer]") {
  memory_store store;
  for (int i = 0; i < 5; ++i) store.insert("layer." + std::to_string(i), dtype::f32, {10});  // 40 bytes each
  store.insert("big", dtype::f32, {100});  // larger than a shard: gets its own
  test_folder folder;
  model_write_options options;
  options.max_shard_bytes = 100;
  save_model(folder / "out", store, options);
  const auto out = folder / "out";
  CHECK(std::filesystem::exists(out / "model.safetensors.index.json"));
  CHECK(std::filesystem::exists(out / "model-00001-of-00004.safetensors"));
  CHECK(std::filesystem::exists(out / "model-00004-of-00004.safetensors"));
  CHECK_FALSE(std::filesystem::exists(out / "model.safetensors"));
  const auto index = nlohmann::json::parse(testing::read_text_file(out / "model.safetensors.index.json"));
  CHECK(index["metadata"]["total_size"] == 600);
  CHECK(index["weight_map"]["layer.1"] == "model-00001-of-00004.safetensors");
  CHECK(index["weight_map"]["layer.4"] == "model-00003-of-00004.safetensors");
  CHECK(index["weight_map"]["big"] == "model-00004-of-00004.safetensors");
  CHECK(folder.entry_count() == 1);  // the staging folder is gone
  testing::check_store_conforms(safetensors_store::open(out), store);
}

TEST_CASE("a small model is one file without an index", "[safetensors][writer]") {
  const memory_store reference = testing::reference_content();
  test_folder folder;
  save_model(folder / "out", reference);
  CHECK(std::filesystem::exists(folder / "out/model.safetensors"));
  CHECK_FALSE(std::filesystem::exists(folder / "out/model.safetensors.index.json"));
  const auto store = safetensors_store::open(folder / "out");
  CHECK(store.metadata().at("format") == "pt");
}

TEST_CASE("a model folder appears only when complete", "[safetensors][writer]") {
  const memory_store reference = testing::reference_content();
  test_folder folder;
  const auto out = folder / "out";
  std::vector<tensor_spec> plan;
  for (const auto& name : reference.names()) {
    plan.push_back({name, reference.view(name).dtype(), reference.view(name).shape()});
  }
  {
    model_writer writer(out, plan);
    writer.write(plan[0].name, reference.view(plan[0].name));
    writer.add_file("config.json", "{}");
    CHECK_FALSE(std::filesystem::exists(out));
    CHECK_THROWS_WITH(writer.commit(), Catch::Contains("commit before tensor"));
    CHECK_THROWS_WITH(writer.write("no.such", reference.view(plan[0].name)), Catch::Contains("not in the plan"));
  }
  CHECK_FALSE(std::filesystem::exists(out));
  CHECK(folder.entry_count() == 0);

  model_writer writer(out, plan);
  for (const auto& spec : plan) writer.write(spec.name, reference.view(spec.name));
  writer.add_file("config.json", "{\"model_type\":\"test\"}");
  writer.commit();
  CHECK(testing::read_text_file(out / "config.json") == "{\"model_type\":\"test\"}");
  testing::check_store_conforms(safetensors_store::open(out), reference);
}

TEST_CASE("a non-empty output folder is refused unless overwriting is allowed", "[safetensors][writer]") {
  const memory_store reference = testing::reference_content();
  test_folder folder;
  const auto out = folder / "out";
  std::filesystem::create_directories(out);
  testing::write_text_file(out / "precious.txt", "data");
  CHECK_THROWS_WITH(save_model(out, reference), Catch::Contains("exists and is not an empty folder"));
  CHECK(std::filesystem::exists(out / "precious.txt"));
  CHECK(folder.entry_count() == 1);

  model_write_options options;
  options.allow_overwrite = true;
  save_model(out, reference, options);
  CHECK_FALSE(std::filesystem::exists(out / "precious.txt"));
  CHECK(folder.entry_count() == 1);
  testing::check_store_conforms(safetensors_store::open(out), reference);

  // An empty folder is simply replaced.
  const auto empty = folder / "empty";
  std::filesystem::create_directories(empty);
  save_model(empty, reference);
  CHECK(std::filesystem::exists(empty / "model.safetensors"));
}

TEST_CASE("only a folder is ever replaced: a file or link in the output's place is refused whatever the options",
          "[safetensors][writer]") {
  const memory_store reference = testing::reference_content();
  test_folder folder;
  model_write_options overwrite;
  overwrite.allow_overwrite = true;
  const auto file = folder / "notes.txt";
  testing::write_text_file(file, "keep me");
  CHECK_THROWS_WITH(save_model(file, reference, overwrite), Catch::Contains("is a regular file"));
  CHECK(testing::read_text_file(file) == "keep me");
  const auto link = folder / "link";
  std::filesystem::create_symlink(file, link);
  CHECK_THROWS_WITH(save_model(link, reference, overwrite), Catch::Contains("is a symbolic link"));
  CHECK(std::filesystem::is_symlink(link));
  CHECK(testing::read_text_file(file) == "keep me");
  CHECK(folder.entry_count() == 2);
}

TEST_CASE("a FIFO given as a safetensors file is refused without waiting for a writer", "[safetensors][store]") {
  test_folder folder;
  const auto fifo = folder / "model.safetensors";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Before the fix this open blocked forever; a hang here is the failure.
  CHECK_THROWS_WITH(safetensors_store::open(fifo), Catch::Contains("FIFO"));
  CHECK_THROWS_WITH(safetensors_store::open(folder.path()), Catch::Contains("FIFO"));
}

TEST_CASE("an empty store writes a valid empty model", "[safetensors][writer]") {
  test_folder folder;
  save_model(folder / "out", memory_store{});
  CHECK(safetensors_store::open(folder / "out").size() == 0);
}
