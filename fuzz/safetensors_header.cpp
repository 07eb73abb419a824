// Fuzz target: a whole safetensors file (header length, JSON header, data section).
//
// Every input is either refused with alloy::error (any other exception, crash or sanitizer report
// is a finding), or accepted with the format's invariants holding: tensors cover the data section
// exactly, in order, each as many bytes as its dtype and shape need; and the header serialises
// back to one that parses to the same tensors and metadata.

#include <span>
#include <string>
#include <vector>

#include "alloy/store/safetensors_format.hpp"
#include "fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  alloy::safetensors_header header;
  try {
    header = alloy::parse_safetensors_header(file, "fuzz.safetensors");
  } catch (const alloy::error& refused) {
    ALLOY_FUZZ_CHECK(std::string(refused.what()).starts_with("fuzz.safetensors"));
    return 0;
  }

  ALLOY_FUZZ_CHECK(header.data_offset >= 8 && header.data_offset <= size);
  std::size_t next = 0;
  std::vector<alloy::tensor_spec> specs;
  for (const auto& entry : header.tensors) {
    ALLOY_FUZZ_CHECK(entry.begin == next);
    ALLOY_FUZZ_CHECK(entry.end - entry.begin == entry.spec.byte_size());
    next = entry.end;
    specs.push_back(entry.spec);
  }
  ALLOY_FUZZ_CHECK(header.data_offset + next == size);

  std::string rewritten = alloy::serialize_safetensors_header(specs, header.metadata);
  rewritten.append(reinterpret_cast<const char*>(data) + header.data_offset, size - header.data_offset);
  const auto reparsed = alloy::parse_safetensors_header(
      std::span(reinterpret_cast<const std::byte*>(rewritten.data()), rewritten.size()), "rewritten");
  ALLOY_FUZZ_CHECK(reparsed.metadata == header.metadata);
  ALLOY_FUZZ_CHECK(reparsed.tensors.size() == header.tensors.size());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    ALLOY_FUZZ_CHECK(reparsed.tensors[i].spec == specs[i]);
    ALLOY_FUZZ_CHECK(reparsed.tensors[i].begin == header.tensors[i].begin);
  }
  return 0;
}
