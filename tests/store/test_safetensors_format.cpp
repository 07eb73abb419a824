// Validation of safetensors headers: every malformed file is refused with a message that names
// the file, the tensor and what is wrong.

#include <span>
#include <string>

#include <catch2/catch.hpp>

#include "alloy/store/safetensors_format.hpp"
#include "safetensors_test_files.hpp"

using namespace alloy;
using alloy::testing::raw_safetensors;

namespace {

safetensors_header parse(const std::string& file) {
  return parse_safetensors_header(std::as_bytes(std::span(file)), "test.safetensors");
}

// Parses and returns the error message, failing the test if parsing succeeds.
std::string refusal(const std::string& file, error_code expected_code = error_code::format) {
  try {
    parse(file);
  } catch (const error& e) {
    CHECK(e.code() == expected_code);
    CHECK_THAT(e.what(), Catch::Contains("test.safetensors"));
    return e.what();
  }
  FAIL("a malformed file was accepted");
  return {};
}

const std::string eight_bytes(8, 'x');

}  // namespace

TEST_CASE("a valid header parses into entries in data order", "[safetensors][format]") {
  const std::string header =
      R"({"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},)"
      R"("__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const auto parsed = parse(raw_safetensors(header, std::string(12, '\0')));
  REQUIRE(parsed.tensors.size() == 2);
  CHECK(parsed.tensors[0].spec.name == "a");
  CHECK(parsed.tensors[1].spec.name == "b");
  CHECK(parsed.tensors[1].spec.dtype == dtype::f16);
  CHECK(parsed.metadata.at("format") == "pt");
  CHECK(parsed.data_offset == 8 + header.size());
}

TEST_CASE("empty tensors, scalars and an empty model are valid", "[safetensors][format]") {
  const auto parsed = parse(raw_safetensors(
      R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]}})",
      std::string(4, '\0')));
  CHECK(parsed.tensors.size() == 2);
  CHECK(parse(raw_safetensors("{}", "")).tensors.empty());
  CHECK(parse(raw_safetensors("{}      ", "")).tensors.empty());  // space padding is allowed
}

TEST_CASE("truncated files and lying header lengths are refused", "[safetensors][format]") {
  CHECK_THAT(refusal(std::string(5, '\0')), Catch::Contains("too short"));
  CHECK_THAT(refusal(raw_safetensors("{}", "", 4000)), Catch::Contains("runs past the end"));
  CHECK_THAT(refusal(raw_safetensors("{}", "", 1ull << 40), error_code::limit),
             Catch::Contains("exceeds the limit"));
  // Data shorter than the header says: the last tensor's offsets run past the data section.
  CHECK_THAT(refusal(raw_safetensors(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                                     std::string(10, '\0'))),
             Catch::Contains("'w'") && Catch::Contains("beyond the data section"));
}

TEST_CASE("headers that are not JSON objects are refused", "[safetensors][format]") {
  CHECK_THAT(refusal(raw_safetensors("[1,2]", "")), Catch::Contains("does not start with '{'"));
  CHECK_THAT(refusal(raw_safetensors(R"({"a":)", "")), Catch::Contains("not valid JSON"));
  CHECK_THAT(refusal(raw_safetensors("{\"a\":\"\xff\"}", "")), Catch::Contains("not valid JSON"));
  CHECK_THAT(refusal(raw_safetensors(R"({"a":1}{})", "")), Catch::Contains("not valid JSON"));
}

TEST_CASE("tensor descriptions are checked field by field", "[safetensors][format]") {
  const auto with = [](const std::string& tensor_json) {
    return raw_safetensors(R"({"w":)" + tensor_json + "}", eight_bytes);
  };
  CHECK_THAT(refusal(with(R"({"dtype":"F99","shape":[2],"data_offsets":[0,8]})")),
             Catch::Contains("unknown dtype") && Catch::Contains("F99"));
  CHECK_THAT(refusal(with(R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})")),
             Catch::Contains("unknown dtype"));
  CHECK_THAT(refusal(with(R"({"shape":[2],"data_offsets":[0,8]})")), Catch::Contains("has no dtype"));
  CHECK_THAT(refusal(with(R"({"dtype":"F32","data_offsets":[0,8]})")), Catch::Contains("has no shape"));
  CHECK_THAT(refusal(with(R"({"dtype":"F32","shape":[2]})")), Catch::Contains("has no data_offsets"));
  CHECK_THAT(refusal(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})")),
             Catch::Contains("unknown field 'x'"));
  CHECK_THAT(refusal(with(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})")),
             Catch::Contains("non-negative integer"));
  CHECK_THAT(refusal(with(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})")),
             Catch::Contains("non-negative integer"));
  CHECK_THAT(refusal(with(R"({"dtype":"F32","shape":"2","data_offsets":[0,8]})")),
             Catch::Contains("expected an array"));
  CHECK_THAT(refusal(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})")),
             Catch::Contains("[begin, end]"));
  CHECK_THAT(refusal(with(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})")),
             Catch::Contains("end before they begin"));
  CHECK_THAT(refusal(with(R"("F32")")), Catch::Contains("described by an object"));
  CHECK_THAT(refusal(raw_safetensors(R"({"":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", eight_bytes)),
             Catch::Contains("empty name"));
}

TEST_CASE("byte sizes must match dtype and shape", "[safetensors][format]") {
  CHECK_THAT(refusal(raw_safetensors(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight_bytes)),
             Catch::Contains("needs 12 bytes") && Catch::Contains("span 8"));
  // Dimensions whose product overflows are refused before any arithmetic can wrap.
  CHECK_THAT(refusal(raw_safetensors(
                 R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                 eight_bytes),
                     error_code::limit),
             Catch::Contains("'w'") && Catch::Contains("overflow"));
  CHECK_THAT(refusal(raw_safetensors(
                 R"({"w":{"dtype":"F64","shape":[1152921504606846976],"data_offsets":[0,8]}})",
                 eight_bytes),
                     error_code::limit),
             Catch::Contains("overflows"));
  CHECK_THAT(refusal(raw_safetensors(R"({"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", "x"),
                     error_code::limit),
             Catch::Contains("rank 9"));
}

TEST_CASE("overlapping tensors, holes and trailing bytes are refused", "[safetensors][format]") {
  CHECK_THAT(refusal(raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                     eight_bytes)),
             Catch::Contains("overlaps"));
  CHECK_THAT(refusal(raw_safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight_bytes)),
             Catch::Contains("holes"));
  CHECK_THAT(refusal(raw_safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight_bytes)),
             Catch::Contains("4 bytes after the last tensor"));
}

TEST_CASE("duplicate names and malformed metadata are refused", "[safetensors][format]") {
  CHECK_THAT(refusal(raw_safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                     eight_bytes)),
             Catch::Contains("duplicate tensor name 'a'"));
  CHECK_THAT(refusal(raw_safetensors(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight_bytes)),
             Catch::Contains("duplicate key 'dtype'"));
  CHECK_THAT(refusal(raw_safetensors(R"({"__metadata__":{"n":1}})", "")), Catch::Contains("expected a string"));
  CHECK_THAT(refusal(raw_safetensors(R"({"__metadata__":[]})", "")), Catch::Contains("__metadata__"));
}

TEST_CASE("serialized headers are padded to 8 bytes and parse back", "[safetensors][format]") {
  const std::vector<tensor_spec> plan{{"weight", dtype::bf16, {3, 3}}, {"bias", dtype::f32, {3}},
                                      {"none", dtype::f16, {0}}};
  const std::string header = serialize_safetensors_header(plan, {{"format", "pt"}});
  CHECK(header.size() % 8 == 0);
  const std::string file = header + std::string(18 + 12, '\0');
  const auto parsed = parse(file);
  REQUIRE(parsed.tensors.size() == 3);
  CHECK(parsed.tensors[0].spec == plan[0]);
  CHECK(parsed.tensors[1].begin == 18);
  CHECK(parsed.metadata.at("format") == "pt");
  CHECK_THROWS_AS(serialize_safetensors_header(std::vector<tensor_spec>{{"x", dtype::f32, {1}}, {"x", dtype::f32, {1}}}, {}),
                  error);
  CHECK_THROWS_AS(serialize_safetensors_header(std::vector<tensor_spec>{{"__metadata__", dtype::f32, {1}}}, {}),
                  error);
}

TEST_CASE("hostile values are shown in bounded messages", "[safetensors][format][hostile]") {
  // A million nested arrays where a dtype belongs: refused without recursing through them, and
  // the message shows a few levels only.
  const std::size_t depth = 1'000'000;
  const std::string nested = std::string(depth, '[') + std::string(depth, ']');
  const std::string deep = refusal(raw_safetensors(R"({"w":{"dtype":)" + nested + R"(,"shape":[2],"data_offsets":[0,8]}})",
                                                   eight_bytes));
  CHECK_THAT(deep, Catch::Contains("has dtype [[[[...]]]]"));
  CHECK(deep.size() < 300);

  // A 10 MB string value and a 10 MB tensor name are cut, with their length said.
  const std::string long_text(10'000'000, 'x');
  const std::string long_value = refusal(raw_safetensors(R"({"w":{"dtype":")" + long_text + R"(","shape":[2],"data_offsets":[0,8]}})",
                                                         eight_bytes));
  CHECK_THAT(long_value, Catch::Contains("unknown dtype \"xxxx") && Catch::Contains("xxx\"..."));
  CHECK(long_value.size() < 500);
  const std::string long_name = refusal(raw_safetensors(R"({")" + long_text + R"(":{"dtype":"F99","shape":[2],"data_offsets":[0,8]}})",
                                                        eight_bytes));
  CHECK_THAT(long_name, Catch::Contains("...' (10000000 bytes)"));
  CHECK(long_name.size() < 500);

  // Control characters in names are escaped, so a message cannot drive the terminal.
  CHECK_THAT(refusal(raw_safetensors("{\"\\u001b[2Jw\":{\"dtype\":\"F99\",\"shape\":[2],\"data_offsets\":[0,8]}}", eight_bytes)),
             Catch::Contains("'\\x1b[2Jw'"));
}

TEST_CASE("more tensors than the cap are refused", "[safetensors][format][hostile]") {
  std::string header = "{";
  for (std::size_t i = 0; i <= safetensors_limits::max_tensors; ++i) {
    header += (i ? ",\"" : "\"") + std::to_string(i) + "\":0";
  }
  header += "}";
  CHECK_THAT(refusal(raw_safetensors(header, ""), error_code::limit),
             Catch::Contains("lists 1000001 tensors") && Catch::Contains("limit of 1000000"));
  // The metadata entry is not a tensor: a million tensors and metadata are within the cap (and
  // fail later, for what they are).
  header.erase(header.rfind(','));
  header += R"(,"__metadata__":{}})";
  CHECK_THAT(refusal(raw_safetensors(header, "")), Catch::Contains("must be described by an object"));
}
