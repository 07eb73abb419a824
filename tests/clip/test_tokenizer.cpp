// CLIP's BPE tokenizer (examples/clip_continual/clip/tokenizer.hpp): hand-checked cleaning,
// pattern and merges, a learned vocabulary, files and their errors, and (with
// tests/reference/clip_tokenizer_reference.py) ids equal to an independent Python tokenizer.

#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../../examples/clip_continual/clip/pretrain.hpp"
#include "../../examples/clip_continual/clip/tokenizer.hpp"
#include "test_folder.hpp"

using namespace alloy_clip;
using strings = std::vector<std::string>;

namespace {

void write_text(const std::filesystem::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary);
  out << text;
}

// A vocabulary small enough to follow by hand: bytes, bytes with </w>, then l+o, lo+w</w>, o+w</w>.
clip_tokenizer hand_tokenizer() {
  bpe_vocabulary v;
  for (const unsigned char b : vocabulary_byte_order()) v.symbols.push_back(byte_symbols()[b]);
  for (const unsigned char b : vocabulary_byte_order()) v.symbols.push_back(byte_symbols()[b] + "</w>");
  v.merges = {{"l", "o"}, {"lo", "w</w>"}, {"o", "w</w>"}};
  for (const auto& [a, b] : v.merges) v.symbols.push_back(a + b);
  v.symbols.emplace_back("<|startoftext|>");
  v.symbols.emplace_back("<|endoftext|>");
  return v.tokenizer();
}

// Texts that exercise every step: the prompts, punctuation, numbers, suffixes, accents, other
// scripts, control characters, special tokens in the text, and one longer than the context.
strings tricky_texts() {
  return {"a photo of a t-shirt, a type of clothing.",
          "It's a T-SHIRT!!  Isn't it?",
          "  multiple   spaces\tand\nnew lines  ",
          "numbers 12345 and 3.14, 8x8",
          "don't you'll we've I'm he'd they're 'S",
          "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c4\u00d6\u00dc stra\u00dfe",
          "\u0130stanbul and \u03a3\u03bf\u03c6\u03af\u03b1",
          "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 mixed",
          "emoji \U0001F642 ok",
          "bell\x07 and zero-width\u200b joiner",
          "<|endoftext|> in the middle <|startoftext|>",
          "xylophone quartz: unseen words fall back to bytes",
          "a very long caption that goes on and on, far longer than the small context of the model allows, "
          "so that it must be cut",
          "",
          "!!!"};
}

}  // namespace

TEST_CASE("the byte alphabet is GPT-2's", "[clip][tokenizer]") {
  const auto& symbols = byte_symbols();
  REQUIRE(symbols.size() == 256);
  CHECK(std::set<std::string>(symbols.begin(), symbols.end()).size() == 256);
  CHECK(symbols['!'] == "!");
  CHECK(symbols['a'] == "a");
  CHECK(symbols[' '] == "\u0120");  // Ġ
  CHECK(symbols[0] == "\u0100");
  CHECK(symbols[0xAD] == "\u0143");  // the soft hyphen is not printable: 0xAD is the 68th remapped byte
}

TEST_CASE("cleaning follows CLIPTokenizer without ftfy", "[clip][tokenizer]") {
  CHECK(clip_tokenizer::clean("  Hello\tWORLD \n") == "hello world");
  CHECK(clip_tokenizer::clean("bell\x07rings") == "bellrings");                      // control characters dropped
  CHECK(clip_tokenizer::clean("a\u00a0b") == "a b");                                  // no-break space is a space
  CHECK(clip_tokenizer::clean("\u65e5\u672c") == "\u65e5 \u672c");                    // CJK ideographs spaced
  CHECK(clip_tokenizer::clean("\u0130") == "i\u0307");                                // Python's str.lower()
  CHECK(clip_tokenizer::clean("\u00c4\u03a3") == "\u00e4\u03c3");
  CHECK_THROWS_WITH(clip_tokenizer::clean("bad \xff byte"), Catch::Contains("not valid UTF-8 (byte 4)"));
}

TEST_CASE("the pattern splits as CLIP's regex does", "[clip][tokenizer]") {
  CHECK(clip_tokenizer::pre_tokenize("it's a t-shirt, 42!") == strings{"it", "'s", "a", "t", "-", "shirt", ",", "4", "2", "!"});
  CHECK(clip_tokenizer::pre_tokenize("<|endoftext|>x") == strings{"<|endoftext|>", "x"});
  CHECK(clip_tokenizer::pre_tokenize("a'b ...?") == strings{"a", "'", "b", "...?"});
  CHECK(clip_tokenizer::pre_tokenize("they're") == strings{"they", "'re"});
  CHECK(clip_tokenizer::pre_tokenize("\u00e9t\u00e9 \u2167") == strings{"\u00e9t\u00e9", "\u2167"});  // Ⅷ is a number
}

TEST_CASE("merges apply in rank order", "[clip][tokenizer]") {
  const clip_tokenizer tokenizer = hand_tokenizer();
  CHECK(tokenizer.bpe("low") == strings{"low</w>"});     // l+o first (rank 0), then lo+w</w>
  CHECK(tokenizer.bpe("ow") == strings{"ow</w>"});
  CHECK(tokenizer.bpe("lol") == strings{"lo", "l</w>"});  // only whole pairs merge
  CHECK(tokenizer.bpe("x") == strings{"x</w>"});
  const auto ids = tokenizer.encode("Low low");
  REQUIRE(ids.size() == 4);
  CHECK(ids.front() == tokenizer.bos_id());
  CHECK(ids[1] == 513);  // the second merge's symbol
  CHECK(ids[2] == 513);
  CHECK(ids.back() == tokenizer.eos_id());
  CHECK(tokenizer.decode(ids) == "low low");
}

TEST_CASE("truncation keeps the end token and padding uses the pad token", "[clip][tokenizer]") {
  const clip_tokenizer tokenizer = hand_tokenizer();
  const auto full = tokenizer.encode("a b c d e f");
  REQUIRE(full.size() == 8);
  const auto cut = tokenizer.encode("a b c d e f", 5);
  CHECK(cut == std::vector<std::int64_t>{full[0], full[1], full[2], full[3], tokenizer.eos_id()});
  const auto padded = tokenizer.encode("a", 6);
  CHECK(padded == std::vector<std::int64_t>{full[0], full[1], tokenizer.eos_id(), tokenizer.pad_id(), tokenizer.pad_id(),
                                            tokenizer.pad_id()});
  CHECK_THROWS_WITH(tokenizer.encode("a", 1), Catch::Contains("cannot hold the start and end tokens"));
}

TEST_CASE("a learned vocabulary covers its corpus in few tokens and round-trips through files", "[clip][tokenizer]") {
  const strings corpus = prompt_corpus();
  const bpe_vocabulary vocabulary = bpe_vocabulary::train(corpus);
  CHECK(vocabulary.symbols.size() == 512 + vocabulary.merges.size() + 2);
  CHECK(vocabulary.symbols.back() == "<|endoftext|>");
  CHECK(vocabulary.symbols[0] == "!");  // OpenAI's order
  CHECK(vocabulary.symbols[256] == "!</w>");
  const clip_tokenizer tokenizer = vocabulary.tokenizer();
  // Every word of the corpus occurs at least twice, so each becomes one symbol.
  for (const auto& text : corpus) {
    const auto ids = tokenizer.encode(text);
    CHECK(ids.size() == clip_tokenizer::pre_tokenize(clip_tokenizer::clean(text)).size() + 2);
    std::string spaced;  // CLIP's decode ends every piece with a space
    for (const auto& piece : clip_tokenizer::pre_tokenize(clip_tokenizer::clean(text))) spaced += (spaced.empty() ? "" : " ") + piece;
    CHECK(tokenizer.decode(ids) == spaced);
  }
  alloy::testing::test_folder folder;
  vocabulary.save(folder.path());
  const clip_tokenizer loaded = clip_tokenizer::load(folder.path());
  for (const auto& text : tricky_texts()) CHECK(loaded.encode(text, 32) == tokenizer.encode(text, 32));
  CHECK(loaded.vocab_size() == vocabulary.symbols.size());
  CHECK(folder.entry_count() == 2);  // no partial files left
}

TEST_CASE("tokenizer files are checked", "[clip][tokenizer]") {
  alloy::testing::test_folder folder;
  CHECK_THROWS_WITH(clip_tokenizer::load(folder.path()), Catch::Contains("no vocab.json"));
  bpe_vocabulary::train({"a photo of a cat."}).save(folder.path());
  SECTION("merges.txt without its header") {
    write_text(folder / "merges.txt", "a b\n");
    CHECK_THROWS_WITH(clip_tokenizer::load(folder.path()), Catch::Contains("#version"));
  }
  SECTION("a malformed merge line") {
    write_text(folder / "merges.txt", "#version: 0.2\na b\nabc\n");
    CHECK_THROWS_WITH(clip_tokenizer::load(folder.path()), Catch::Contains("merges.txt:3") && Catch::Contains("abc"));
  }
  SECTION("vocab.json that is not JSON") {
    write_text(folder / "vocab.json", "{\"a\": 1,");
    CHECK_THROWS_WITH(clip_tokenizer::load(folder.path()), Catch::Contains("vocab.json"));
  }
  SECTION("a vocabulary without the special tokens") {
    write_text(folder / "vocab.json", "{\"a\": 0, \"b\": 1}");
    CHECK_THROWS_WITH(clip_tokenizer::load(folder.path()), Catch::Contains("<|startoftext|>"));
  }
  SECTION("a pad token named in special_tokens_map.json") {
    write_text(folder / "special_tokens_map.json", R"({"pad_token": {"content": "!"}})");
    CHECK(clip_tokenizer::load(folder.path()).pad_id() == 0);  // "!" is byte symbol 0
  }
}

TEST_CASE("write the CLIP tokenizer case", "[clip][reference-writer]") {
  const char* dir = std::getenv("ALLOY_CLIP_TOKENIZER_DIR");
  if (dir == nullptr) {
    WARN("ALLOY_CLIP_TOKENIZER_DIR is not set: nothing written");
    return;
  }
  const std::filesystem::path folder(dir);
  std::filesystem::create_directories(folder);
  const bpe_vocabulary vocabulary = bpe_vocabulary::train(prompt_corpus());
  vocabulary.save(folder);
  const clip_tokenizer tokenizer = clip_tokenizer::load(folder);
  strings texts = tricky_texts();
  for (const auto& text : prompt_corpus()) texts.push_back(text);
  nlohmann::json ids = nlohmann::json::array();
  for (const auto& text : texts) ids.push_back(tokenizer.encode(text, 32));
  std::ofstream out(folder / "case.json", std::ios::binary);
  out << nlohmann::json{{"context", 32}, {"texts", texts}, {"ids", ids}}.dump() << "\n";
}
