#include <filesystem>
#include <fstream>
#include <string>

#include <catch2/catch.hpp>

#include "alloy/store/safetensors_store.hpp"
#include "alloy/store/safetensors_writer.hpp"
#include "safetensors_test_files.hpp"
#include "store_conformance.hpp"
#include "test_folder.hpp"

using namespace alloy;
using alloy::testing::test_folder;
using alloy::testing::write_raw_safetensors;
using alloy::testing::write_text_file;

namespace {

std::string error_of(const std::filesystem::path& path) {
  try {
    (void)safetensors_store::open(path);
  } catch (const error& e) {
    return e.what();
  }
  FAIL("open succeeded on a broken model: " << path);
  return {};
}

// Two shards and an index, written by hand so that the test controls every byte.
void write_two_shards(const test_folder& folder) {
  write_raw_safetensors(folder / "model-00001-of-00002.safetensors",
                        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\1'));
  write_raw_safetensors(folder / "model-00002-of-00002.safetensors",
                        R"({"b":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", "xyz");
}

}  // namespace

TEST_CASE("safetensors stores conform, single file and sharded", "[store][safetensors][conformance]") {
  const memory_store reference = testing::reference_content();
  test_folder folder;
  save_safetensors(folder / "single.safetensors", reference);
  testing::check_store_conforms(safetensors_store::open(folder / "single.safetensors"), reference);

  model_write_options options;
  options.max_shard_bytes = 40;  // forces several shards
  save_model(folder / "sharded", reference, options);
  const auto sharded = safetensors_store::open(folder / "sharded");
  CHECK(sharded.shards().size() > 2);
  testing::check_store_conforms(sharded, reference);
}

TEST_CASE("open finds the model in a folder", "[store][safetensors]") {
  test_folder folder;
  std::filesystem::create_directories(folder / "single");
  write_raw_safetensors(folder / "single/model.safetensors",
                        R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x");
  CHECK(safetensors_store::open(folder / "single").names() == std::vector<std::string>{"w"});

  std::filesystem::create_directories(folder / "adapter");
  write_raw_safetensors(folder / "adapter/adapter_model.safetensors",
                        R"({"lora":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x");
  CHECK(safetensors_store::open(folder / "adapter").contains("lora"));

  std::filesystem::create_directories(folder / "nothing");
  CHECK_THAT(error_of(folder / "nothing"), Catch::Contains("has no model.safetensors"));
  CHECK_THAT(error_of(folder / "missing.safetensors"), Catch::Contains("no such file"));
}

TEST_CASE("a sharded model reads through its index", "[store][safetensors]") {
  test_folder folder;
  write_two_shards(folder);
  write_text_file(folder / "model.safetensors.index.json",
                  R"({"metadata":{"total_size":11},"weight_map":{"b":"model-00002-of-00002.safetensors","a":"model-00001-of-00002.safetensors"}})");
  const auto store = safetensors_store::open(folder.path());
  CHECK(store.names() == std::vector<std::string>{"a", "b"});
  CHECK(store.view("b").bytes().size() == 3);
  CHECK(store.file_of("b").filename() == "model-00002-of-00002.safetensors");
  CHECK(static_cast<char>(store.view("b").bytes()[2]) == 'z');
}

TEST_CASE("broken indexes are refused with the shard and tensor named", "[store][safetensors]") {
  test_folder folder;
  write_two_shards(folder);
  const auto index = folder / "model.safetensors.index.json";
  const auto expect = [&](const std::string& json, const std::string& message) {
    write_text_file(index, json);
    CHECK_THAT(error_of(index), Catch::Contains(message));
  };
  expect("{", "not valid JSON");
  expect(R"({"metadata":{}})", "weight_map");
  expect(R"({"weight_map":{}})", "weight_map is empty");
  expect(R"({"weight_map":{"a":1}})", "expected a shard file name");
  expect(R"({"weight_map":{"a":"model-00009-of-00009.safetensors"}})", "model-00009-of-00009");
  expect(R"({"weight_map":{"a":"../outside.safetensors"}})", "outside the index's folder");
  expect(R"({"weight_map":{"a":"/etc/passwd"}})", "outside the index's folder");
  expect(R"({"weight_map":{"a":"model-00001-of-00002.safetensors","a":"model-00002-of-00002.safetensors"}})",
         "duplicate key 'a'");
  expect(R"({"weight_map":{"a":"."}})", "not a regular file");
  // The index names a tensor that its shard does not hold.
  expect(R"({"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})",
         "'c'");
  // The index puts a tensor in the wrong shard.
  expect(R"({"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors"}})",
         "names tensor 'b' in shard 'model-00001-of-00002.safetensors'");
  // Names that climb out of the folder however they are spelled, and other malformed entries.
  expect(R"({"weight_map":{"a":"sub/../../outside.safetensors"}})", "outside the index's folder");
  expect(R"({"weight_map":{"a":""}})", "outside the index's folder");
  expect("{\"weight_map\":{\"a\":\"x\\u0000.safetensors\"}}", "NUL byte");
  expect(R"({"weight_map":{"":"model-00001-of-00002.safetensors"}})", "empty name");
  expect(R"({"weight_map":{"a":"model-00001-of-00002.safetensors"},"metadata":[1]})", "metadata is array");
  expect(std::string(100000, '[') + std::string(100000, ']'), "expected an object");
}

TEST_CASE("an index over the size cap is refused before it is read", "[store][safetensors][hostile]") {
  test_folder folder;
  const auto index = folder / "model.safetensors.index.json";
  write_text_file(index, "{");
  std::filesystem::resize_file(index, safetensors_limits::max_index_bytes + 1);  // sparse: no data written
  CHECK_THAT(error_of(index), Catch::Contains("exceeds the limit of 100000000 bytes"));
}

TEST_CASE("a shard in a subfolder is read; a subfolder that is a symlink out is refused",
          "[store][safetensors][hostile]") {
  test_folder outside;
  write_raw_safetensors(outside / "a.safetensors", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x");
  test_folder folder;
  std::filesystem::create_directories(folder / "shards");
  write_raw_safetensors(folder / "shards/a.safetensors", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x");
  write_text_file(folder / "model.safetensors.index.json", R"({"weight_map":{"a":"shards/a.safetensors"}})");
  CHECK(safetensors_store::open(folder.path()).contains("a"));

  std::filesystem::remove_all(folder / "shards");
  std::filesystem::create_directory_symlink(outside.path(), folder / "shards");
  CHECK_THAT(error_of(folder.path()), Catch::Contains("'shards/a.safetensors' resolves to") &&
                                          Catch::Contains("outside the index's folder"));
}

TEST_CASE("a shard reached through a symlink outside the folder is refused", "[store][safetensors]") {
  test_folder outside;
  write_raw_safetensors(outside / "secret.safetensors",
                        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'));
  test_folder folder;
  std::filesystem::create_symlink(outside / "secret.safetensors", folder / "model-00001-of-00001.safetensors");
  write_text_file(folder / "model.safetensors.index.json",
                  R"({"weight_map":{"a":"model-00001-of-00001.safetensors"}})");
  CHECK_THAT(error_of(folder.path()), Catch::Contains("outside the index's folder"));
}

TEST_CASE("tensors duplicated across shards are refused", "[store][safetensors]") {
  test_folder folder;
  write_raw_safetensors(folder / "s1.safetensors", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x");
  write_raw_safetensors(folder / "s2.safetensors",
                        R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                        "yz");
  write_text_file(folder / "model.safetensors.index.json",
                  R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  CHECK_THAT(error_of(folder.path()), Catch::Contains("s2.safetensors") && Catch::Contains("'a'"));
}

TEST_CASE("release keeps data readable", "[store][safetensors]") {
  const memory_store reference = testing::reference_content();
  test_folder folder;
  save_safetensors(folder / "m.safetensors", reference);
  const auto store = safetensors_store::open(folder / "m.safetensors");
  for (const auto& name : store.names()) store.release(name);
  testing::check_store_conforms(store, reference);
}
