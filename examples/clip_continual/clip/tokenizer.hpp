#pragma once
// CLIP's byte-level BPE tokenizer (Radford et al., 2021; Hugging Face's CLIPTokenizer), reading the
// `vocab.json` and `merges.txt` of a checkpoint folder, and a trainer that makes such a vocabulary
// from a corpus (the example's small CLIP covers its prompts and class names with one).
//
// encode(text):
//   1. clean as CLIPTokenizer does without ftfy (BERT's BasicTokenizer): drop NUL, U+FFFD and
//      control characters, turn whitespace into spaces, put spaces around CJK ideographs, split on
//      whitespace, lower-case (Python's str.lower()) and join with single spaces;
//   2. pre-tokenize with CLIP's pattern
//        <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//   3. map each piece's UTF-8 bytes to GPT-2's printable byte alphabet, mark its last symbol with
//      "</w>", and apply the merges in rank order;
//   4. add <|startoftext|> and <|endoftext|> around the ids.
// Not done: ftfy's repair of mis-decoded text, and NFC normalisation (texts are taken as given;
// nearly all text is already NFC).

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/store/file_io.hpp"
#include "unicode_tables.hpp"

namespace alloy_clip {

namespace unicode {

template <std::size_t N>
constexpr bool in_ranges(const code_range (&table)[N], std::uint32_t cp) {
  const auto* it = std::upper_bound(std::begin(table), std::end(table), cp,
                                    [](std::uint32_t value, const code_range& r) { return value < r.first; });
  return it != std::begin(table) && cp <= (it - 1)->last;
}

inline bool is_letter(std::uint32_t cp) { return in_ranges(letters, cp); }
inline bool is_number(std::uint32_t cp) { return in_ranges(numbers, cp); }
inline bool is_space(std::uint32_t cp) { return in_ranges(spaces, cp); }

// The CJK ideograph blocks BasicTokenizer spaces out (its _is_chinese_char).
inline bool is_cjk(std::uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

inline void append_lower(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  const auto* it = std::lower_bound(std::begin(lower_case), std::end(lower_case), cp,
                                    [](const lower_mapping& m, std::uint32_t value) { return m.from < value; });
  if (it == std::end(lower_case) || it->from != cp) {
    append_utf8(out, cp);
    return;
  }
  append_utf8(out, it->to);
  if (it->then != 0) append_utf8(out, it->then);
}

// Decodes UTF-8 into code points; malformed input is an error naming the byte offset.
inline std::vector<std::uint32_t> decode_utf8(std::string_view text) {
  std::vector<std::uint32_t> out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    std::size_t length = 0;
    std::uint32_t cp = 0;
    if (lead < 0x80) {
      length = 1;
      cp = lead;
    } else if ((lead & 0xE0) == 0xC0 && lead >= 0xC2) {
      length = 2;
      cp = lead & 0x1Fu;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3;
      cp = lead & 0x0Fu;
    } else if ((lead & 0xF8) == 0xF0 && lead <= 0xF4) {
      length = 4;
      cp = lead & 0x07u;
    } else {
      alloy::fail(alloy::error_code::invalid_argument, "text is not valid UTF-8 (byte ", i, ")");
    }
    if (i + length > text.size()) {
      alloy::fail(alloy::error_code::invalid_argument, "text is not valid UTF-8 (truncated at byte ", i, ")");
    }
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) {
        alloy::fail(alloy::error_code::invalid_argument, "text is not valid UTF-8 (byte ", i + k, ")");
      }
      cp = (cp << 6) | (next & 0x3Fu);
    }
    const bool overlong = (length == 3 && cp < 0x800) || (length == 4 && cp < 0x10000);
    if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      alloy::fail(alloy::error_code::invalid_argument, "text is not valid UTF-8 (byte ", i, ")");
    }
    out.push_back(cp);
    i += length;
  }
  return out;
}

}  // namespace unicode

// GPT-2's reversible map from bytes to printable characters (UTF-8 encoded): printable Latin-1
// bytes stand for themselves, the others for U+0100 onwards.
inline const std::vector<std::string>& byte_symbols() {
  static const std::vector<std::string> table = [] {
    std::vector<std::uint32_t> cp(256, 0);
    std::vector<bool> direct(256, false);
    for (int b = '!'; b <= '~'; ++b) direct[static_cast<std::size_t>(b)] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[static_cast<std::size_t>(b)] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[static_cast<std::size_t>(b)] = true;
    std::uint32_t next = 256;
    for (std::size_t b = 0; b < 256; ++b) cp[b] = direct[b] ? static_cast<std::uint32_t>(b) : next++;
    std::vector<std::string> out(256);
    for (std::size_t b = 0; b < 256; ++b) unicode::append_utf8(out[b], cp[b]);
    return out;
  }();
  return table;
}

// The bytes in the order of OpenAI's vocabulary: the printable ones ('!'..'~', 0xA1..0xAC,
// 0xAE..0xFF) first, then the rest in byte order (as bytes_to_unicode's dictionary lists them).
inline std::vector<unsigned char> vocabulary_byte_order() {
  std::vector<unsigned char> out;
  const auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  for (int b = 0; b < 256; ++b) {
    if (printable(b)) out.push_back(static_cast<unsigned char>(b));
  }
  for (int b = 0; b < 256; ++b) {
    if (!printable(b)) out.push_back(static_cast<unsigned char>(b));
  }
  return out;
}

inline constexpr std::string_view start_of_text = "<|startoftext|>";
inline constexpr std::string_view end_of_text = "<|endoftext|>";
inline constexpr std::string_view end_of_word = "</w>";

class clip_tokenizer {
 public:
  // `vocab` maps symbols to ids; `merges` are the symbol pairs in rank order.
  clip_tokenizer(std::unordered_map<std::string, std::int64_t> vocab, std::vector<std::pair<std::string, std::string>> merges,
                 std::string pad_token = std::string(end_of_text))
      : vocab_(std::move(vocab)) {
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      ranks_.emplace(merges[rank].first + ' ' + merges[rank].second, rank);
    }
    for (const auto& [symbol, id] : vocab_) {
      if (id < 0) alloy::fail(alloy::error_code::invalid_argument, "vocabulary id of ", symbol, " is negative");
      if (static_cast<std::size_t>(id) >= symbols_.size()) symbols_.resize(static_cast<std::size_t>(id) + 1);
      symbols_[static_cast<std::size_t>(id)] = symbol;
    }
    bos_ = special(start_of_text);
    eos_ = special(end_of_text);
    pad_ = special(pad_token);
  }

  // Reads `folder`/vocab.json and `folder`/merges.txt, and the pad token from
  // special_tokens_map.json or tokenizer_config.json when the folder has one (CLIPTokenizer pads
  // with <|endoftext|> otherwise).
  static clip_tokenizer load(const std::filesystem::path& folder) {
    const auto vocab_file = folder / "vocab.json";
    const auto merges_file = folder / "merges.txt";
    for (const auto& file : {vocab_file, merges_file}) {
      if (!std::filesystem::is_regular_file(file)) {
        alloy::fail(alloy::error_code::not_found, "no ", file.filename().string(), " in ", folder.string(),
                            " (a CLIP tokenizer needs vocab.json and merges.txt)");
      }
    }
    nlohmann::json json = read_json(vocab_file);
    if (!json.is_object()) alloy::fail(alloy::error_code::format, vocab_file.string(), ": not a JSON object");
    std::unordered_map<std::string, std::int64_t> vocab;
    for (const auto& [symbol, id] : json.items()) {
      if (!id.is_number_integer()) {
        alloy::fail(alloy::error_code::format, vocab_file.string(), ": the id of ", alloy::quoted{symbol},
                            " is not an integer");
      }
      vocab.emplace(symbol, id.get<std::int64_t>());
    }
    std::string pad(end_of_text);
    for (const char* name : {"special_tokens_map.json", "tokenizer_config.json"}) {
      if (!std::filesystem::is_regular_file(folder / name)) continue;
      const nlohmann::json tokens = read_json(folder / name);
      if (!tokens.is_object() || !tokens.contains("pad_token")) continue;
      const auto& value = tokens["pad_token"];
      if (value.is_string()) pad = value.get<std::string>();
      if (value.is_object() && value.contains("content") && value["content"].is_string()) pad = value["content"].get<std::string>();
      break;
    }
    return clip_tokenizer(std::move(vocab), read_merges(merges_file), pad);
  }

  // The ids of `text` between <|startoftext|> and <|endoftext|>.
  [[nodiscard]] std::vector<std::int64_t> encode(std::string_view text) const {
    std::vector<std::int64_t> ids{bos_};
    for (const std::string& piece : pre_tokenize(clean(text))) {
      if (piece == start_of_text || piece == end_of_text) {
        ids.push_back(piece == start_of_text ? bos_ : eos_);
        continue;
      }
      for (const std::string& symbol : bpe(piece)) {
        const auto it = vocab_.find(symbol);
        ids.push_back(it == vocab_.end() ? eos_ : it->second);  // CLIPTokenizer's unknown token is <|endoftext|>
      }
    }
    ids.push_back(eos_);
    return ids;
  }

  // encode(text) truncated to `length` (keeping <|endoftext|> last) and padded with the pad token.
  [[nodiscard]] std::vector<std::int64_t> encode(std::string_view text, std::size_t length) const {
    if (length < 2) alloy::fail(alloy::error_code::invalid_argument, "a context of ", length, " tokens cannot hold the start and end tokens");
    std::vector<std::int64_t> ids = encode(text);
    if (ids.size() > length) {
      ids.resize(length);
      ids.back() = eos_;
    }
    ids.resize(length, pad_);
    return ids;
  }

  // Step 1: the text as CLIPTokenizer sees it before the pattern.
  [[nodiscard]] static std::string clean(std::string_view text) {
    std::string spaced;
    for (const std::uint32_t cp : unicode::decode_utf8(text)) {
      if (cp == 0 || cp == 0xFFFD || unicode::in_ranges(unicode::controls, cp)) continue;
      if (unicode::in_ranges(unicode::clean_spaces, cp)) {
        spaced += ' ';
      } else if (unicode::is_cjk(cp)) {
        spaced += ' ';
        unicode::append_utf8(spaced, cp);
        spaced += ' ';
      } else {
        unicode::append_utf8(spaced, cp);
      }
    }
    // Split on whitespace (Python's str.split()), lower-case each word, join with single spaces.
    std::string out;
    std::string word;
    const auto flush = [&] {
      if (word.empty()) return;
      if (!out.empty()) out += ' ';
      for (const std::uint32_t cp : unicode::decode_utf8(word)) unicode::append_lower(out, cp);
      word.clear();
    };
    for (const std::uint32_t cp : unicode::decode_utf8(spaced)) {
      if (unicode::is_space(cp)) {
        flush();
      } else {
        unicode::append_utf8(word, cp);
      }
    }
    flush();
    return out;
  }

  // Step 2: CLIP's pattern, applied as Python's regex.findall does (alternatives in order at each position).
  [[nodiscard]] static std::vector<std::string> pre_tokenize(std::string_view text) {
    const std::vector<std::uint32_t> cps = unicode::decode_utf8(text);
    std::vector<std::string> pieces;
    const auto starts_with = [&](std::size_t at, std::string_view literal) {
      if (at + literal.size() > cps.size()) return false;
      for (std::size_t k = 0; k < literal.size(); ++k) {
        std::uint32_t c = cps[at + k];
        if (c >= 'A' && c <= 'Z') c += 32;  // the pattern is case-insensitive
        if (c != static_cast<unsigned char>(literal[k])) return false;
      }
      return true;
    };
    const auto emit = [&](std::size_t from, std::size_t to) {
      std::string piece;
      for (std::size_t k = from; k < to; ++k) unicode::append_utf8(piece, cps[k]);
      pieces.push_back(std::move(piece));
    };
    std::size_t i = 0;
    while (i < cps.size()) {
      std::size_t matched = 0;
      for (const std::string_view literal : {start_of_text, end_of_text}) {
        if (matched == 0 && starts_with(i, literal)) matched = literal.size();
      }
      for (const std::string_view suffix : {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}) {
        if (matched == 0 && starts_with(i, suffix)) matched = suffix.size();
      }
      if (matched == 0 && unicode::is_letter(cps[i])) {
        while (i + matched < cps.size() && unicode::is_letter(cps[i + matched])) ++matched;
      }
      if (matched == 0 && unicode::is_number(cps[i])) matched = 1;
      if (matched == 0) {
        const auto other = [](std::uint32_t c) { return !unicode::is_space(c) && !unicode::is_letter(c) && !unicode::is_number(c); };
        while (i + matched < cps.size() && other(cps[i + matched])) ++matched;
      }
      if (matched == 0) {
        ++i;  // whitespace: not part of any piece
        continue;
      }
      emit(i, i + matched);
      i += matched;
    }
    return pieces;
  }

  // Step 3: the BPE symbols of one piece.
  [[nodiscard]] std::vector<std::string> bpe(std::string_view piece) const {
    std::vector<std::string> word;
    for (const char byte : piece) word.push_back(byte_symbols()[static_cast<unsigned char>(byte)]);
    if (word.empty()) return word;
    word.back() += end_of_word;
    return apply_merges(std::move(word));
  }

  [[nodiscard]] std::vector<std::string> apply_merges(std::vector<std::string> word) const {
    while (word.size() > 1) {
      std::size_t best = std::numeric_limits<std::size_t>::max();
      std::string best_pair;
      for (std::size_t k = 0; k + 1 < word.size(); ++k) {
        std::string pair = word[k] + ' ' + word[k + 1];
        const auto it = ranks_.find(pair);
        if (it != ranks_.end() && it->second < best) {
          best = it->second;
          best_pair = std::move(pair);
        }
      }
      if (best == std::numeric_limits<std::size_t>::max()) break;
      const auto space = best_pair.find(' ');
      const std::string_view first(best_pair.data(), space), second(best_pair.data() + space + 1, best_pair.size() - space - 1);
      std::vector<std::string> merged;
      for (std::size_t k = 0; k < word.size(); ++k) {
        if (k + 1 < word.size() && word[k] == first && word[k + 1] == second) {
          merged.push_back(word[k] + word[k + 1]);
          ++k;
        } else {
          merged.push_back(std::move(word[k]));
        }
      }
      word = std::move(merged);
    }
    return word;
  }

  // The text of `ids` (special tokens dropped, "</w>" read as a space).
  [[nodiscard]] std::string decode(const std::vector<std::int64_t>& ids) const {
    std::string symbols;
    for (const auto id : ids) {
      if (id == bos_ || id == eos_ || id == pad_ || id < 0 || static_cast<std::size_t>(id) >= symbols_.size()) continue;
      symbols += symbols_[static_cast<std::size_t>(id)];
    }
    static const std::unordered_map<std::uint32_t, char> byte_of = [] {
      std::unordered_map<std::uint32_t, char> out;
      for (std::size_t b = 0; b < 256; ++b) out.emplace(unicode::decode_utf8(byte_symbols()[b]).front(), static_cast<char>(b));
      return out;
    }();
    std::string out;
    const std::vector<std::uint32_t> cps = unicode::decode_utf8(symbols);
    for (std::size_t k = 0; k < cps.size(); ++k) {
      if (cps[k] == '<' && k + 3 < cps.size() && cps[k + 1] == '/' && cps[k + 2] == 'w' && cps[k + 3] == '>') {
        out += ' ';
        k += 3;
        continue;
      }
      const auto it = byte_of.find(cps[k]);
      if (it != byte_of.end()) out += it->second;
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out;
  }

  [[nodiscard]] std::int64_t bos_id() const { return bos_; }
  [[nodiscard]] std::int64_t eos_id() const { return eos_; }
  [[nodiscard]] std::int64_t pad_id() const { return pad_; }
  // One more than the largest id (the embedding rows the model needs).
  [[nodiscard]] std::size_t vocab_size() const { return symbols_.size(); }

 private:
  static nlohmann::json read_json(const std::filesystem::path& file) {
    std::ifstream in(file);
    if (!in) alloy::fail(alloy::error_code::io, "cannot read ", file.string());
    try {
      return nlohmann::json::parse(in);
    } catch (const nlohmann::json::parse_error& e) {
      alloy::fail(alloy::error_code::format, file.string(), ": ", e.what());
    }
  }

  // merges.txt: a "#version" line, then one "first second" pair per line. Like CLIPTokenizer,
  // at most 49152 - 256 - 2 merges are read.
  static std::vector<std::pair<std::string, std::string>> read_merges(const std::filesystem::path& file) {
    std::ifstream in(file);
    if (!in) alloy::fail(alloy::error_code::io, "cannot read ", file.string());
    std::string line;
    std::getline(in, line);
    if (line.rfind("#version", 0) != 0) {
      alloy::fail(alloy::error_code::format, file.string(),
                          ": the first line must be the \"#version\" header (CLIPTokenizer skips it unread)");
    }
    std::vector<std::pair<std::string, std::string>> merges;
    constexpr std::size_t max_merges = 49152 - 256 - 2;
    std::size_t number = 1;
    while (std::getline(in, line) && merges.size() < max_merges) {
      ++number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      const auto space = line.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == line.size() || line.find(' ', space + 1) != std::string::npos) {
        alloy::fail(alloy::error_code::format, file.string(), ":", number, ": expected two symbols separated by one space, not ",
                            alloy::quoted{line});
      }
      merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    }
    return merges;
  }

  [[nodiscard]] std::int64_t special(std::string_view token) const {
    const auto it = vocab_.find(std::string(token));
    if (it == vocab_.end()) {
      alloy::fail(alloy::error_code::not_found, "the vocabulary lacks the special token ", token);
    }
    return it->second;
  }

  std::unordered_map<std::string, std::int64_t> vocab_;
  std::unordered_map<std::string, std::size_t> ranks_;
  std::vector<std::string> symbols_;
  std::int64_t bos_ = 0, eos_ = 0, pad_ = 0;
};

// A CLIP vocabulary learned from `texts`: the 256 byte symbols, the same with "</w>", one symbol
// per merge, then <|startoftext|> and <|endoftext|> (the layout and order of OpenAI's vocabulary,
// where "!" is id 0). Merges
// are learned greedily, most frequent adjacent pair first (ties: the smaller pair), until no pair
// occurs twice or `max_merges` are made.
struct bpe_vocabulary {
  std::vector<std::string> symbols;                          // id -> symbol
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order

  static bpe_vocabulary train(const std::vector<std::string>& texts, std::size_t max_merges = 10000) {
    std::map<std::vector<std::string>, std::size_t> words;  // symbol sequence -> count
    for (const auto& text : texts) {
      for (const std::string& piece : clip_tokenizer::pre_tokenize(clip_tokenizer::clean(text))) {
        if (piece == start_of_text || piece == end_of_text) continue;
        std::vector<std::string> word;
        for (const char byte : piece) word.push_back(byte_symbols()[static_cast<unsigned char>(byte)]);
        word.back() += end_of_word;
        ++words[word];
      }
    }
    bpe_vocabulary out;
    for (const unsigned char b : vocabulary_byte_order()) out.symbols.push_back(byte_symbols()[b]);
    for (const unsigned char b : vocabulary_byte_order()) out.symbols.push_back(byte_symbols()[b] + std::string(end_of_word));
    while (out.merges.size() < max_merges) {
      std::map<std::pair<std::string, std::string>, std::size_t> pairs;
      for (const auto& [word, count] : words) {
        for (std::size_t k = 0; k + 1 < word.size(); ++k) pairs[{word[k], word[k + 1]}] += count;
      }
      const std::pair<std::string, std::string>* best = nullptr;
      std::size_t best_count = 1;
      for (const auto& [pair, count] : pairs) {
        if (count > best_count) {  // strictly more: the first (smallest) pair wins ties
          best = &pair;
          best_count = count;
        }
      }
      if (best == nullptr) break;
      const auto merge = *best;
      out.merges.push_back(merge);
      out.symbols.push_back(merge.first + merge.second);
      std::map<std::vector<std::string>, std::size_t> next;
      for (const auto& [word, count] : words) {
        std::vector<std::string> merged;
        for (std::size_t k = 0; k < word.size(); ++k) {
          if (k + 1 < word.size() && word[k] == merge.first && word[k + 1] == merge.second) {
            merged.push_back(word[k] + word[k + 1]);
            ++k;
          } else {
            merged.push_back(word[k]);
          }
        }
        next[merged] += count;
      }
      words = std::move(next);
    }
    out.symbols.emplace_back(start_of_text);
    out.symbols.emplace_back(end_of_text);
    return out;
  }

  [[nodiscard]] clip_tokenizer tokenizer() const {
    std::unordered_map<std::string, std::int64_t> vocab;
    for (std::size_t id = 0; id < symbols.size(); ++id) vocab.emplace(symbols[id], static_cast<std::int64_t>(id));
    return clip_tokenizer(std::move(vocab), merges);
  }

  // Writes vocab.json and merges.txt into `folder`, as CLIPTokenizer.save_vocabulary does.
  void save(const std::filesystem::path& folder) const {
    std::filesystem::create_directories(folder);
    nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
    for (std::size_t id = 0; id < symbols.size(); ++id) vocab[symbols[id]] = id;
    alloy::write_file_atomically(folder / "vocab.json", vocab.dump() + "\n");
    std::string text = "#version: 0.2\n";
    for (const auto& [first, second] : merges) text += first + ' ' + second + '\n';
    alloy::write_file_atomically(folder / "merges.txt", text);
  }

};

}  // namespace alloy_clip
