#pragma once
// mergekit's tokenizer merging (tokenizer/build.py, tokenizer/embed.py) for alloy-merge: the
// output vocabulary from tokenizer_source (base, union, a model) and the tokenizer section's
// tokens, each model's permutation into it, and every model's token embeddings and output head
// laid out in the output's token order before they are merged.
//
// Vocabularies are read from Hugging Face fast tokenizers (tokenizer.json: the model's vocabulary
// and the added tokens, as transformers' get_vocab() gives them) and config.json's vocab_size.
// Where mergekit's result depends on the iteration order of a hash map (the ids that a union
// gives to tokens the base lacks), alloy takes each model's tokens in id order, so that a config
// always gives the same vocabulary.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/alloy.hpp"
#include "json_file.hpp"
#include "merge_config.hpp"

namespace alloy::tools {

// A fast tokenizer as transformers presents it: get_vocab() (model vocabulary and added tokens),
// len(tokenizer) (one past the largest id), and the model's vocab_size.
struct hf_tokenizer {
  std::filesystem::path folder;
  nlohmann::ordered_json document;  // tokenizer.json
  std::map<std::string, std::int64_t, std::less<>> ids;
  std::vector<std::string> by_id;  // "" where no token has the id
  std::size_t vocab_size = 0;      // config.json's vocab_size, else the vocabulary's size

  [[nodiscard]] std::optional<std::int64_t> id_of(std::string_view token) const {
    const auto it = ids.find(token);
    return it == ids.end() ? std::nullopt : std::optional(it->second);
  }
};

namespace detail {

inline constexpr std::size_t max_tokenizer_bytes = 512'000'000;

// config.json's vocab_size, at the top level or in text_config (multimodal configs).
inline std::optional<std::size_t> config_vocab_size(const std::filesystem::path& folder) {
  std::error_code ec;
  const std::filesystem::path path = folder / "config.json";
  if (folder.empty() || !std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  const nlohmann::ordered_json config = read_json_file(path, "a model config", 16'000'000);
  for (const auto* object : {&config, config.contains("text_config") ? &config["text_config"] : nullptr}) {
    if (object == nullptr || !object->is_object()) continue;
    const auto it = object->find("vocab_size");
    if (it != object->end() && it->is_number_unsigned()) return it->get<std::size_t>();
  }
  return std::nullopt;
}

inline void index_tokens(hf_tokenizer& t, const std::string& label) {
  t.ids.clear();
  const auto& model = t.document["model"];
  const auto add = [&](const std::string& token, std::int64_t id) {
    if (id < 0) alloy::fail(error_code::format, label, ": token id ", id, " of ", alloy::quoted{token}, " is out of range");
    t.ids[token] = id;
  };
  const auto& vocab = model["vocab"];
  if (vocab.is_object()) {
    for (const auto& [token, id] : vocab.items()) {
      if (!id.is_number_integer()) alloy::fail(error_code::format, label, ": the id of ", alloy::quoted{token}, " is not a whole number");
      add(token, id.get<std::int64_t>());
    }
  } else if (vocab.is_array()) {  // Unigram: [token, score] pairs, the id is the position
    for (std::size_t i = 0; i < vocab.size(); ++i) {
      if (!vocab[i].is_array() || vocab[i].empty() || !vocab[i][0].is_string()) {
        alloy::fail(error_code::format, label, ": entry ", i, " of model.vocab is not [token, score]");
      }
      add(vocab[i][0].get<std::string>(), static_cast<std::int64_t>(i));
    }
  } else {
    alloy::fail(error_code::format, label, ": model.vocab is neither a mapping nor a list");
  }
  if (t.document.contains("added_tokens")) {
    for (const auto& added : t.document["added_tokens"]) {
      if (!added.is_object() || !added.contains("id") || !added["id"].is_number_integer() || !added.contains("content") ||
          !added["content"].is_string()) {
        alloy::fail(error_code::format, label, ": an added token has no id or content");
      }
      add(added["content"].get<std::string>(), added["id"].get<std::int64_t>());
    }
  }
  std::int64_t largest = -1;
  for (const auto& [token, id] : t.ids) largest = std::max(largest, id);
  if (largest >= std::int64_t{1} << 24) {
    alloy::fail(error_code::limit, label, ": token id ", largest, " is beyond alloy's limit of 2^24 tokens");
  }
  t.by_id.assign(static_cast<std::size_t>(largest + 1), std::string());
  for (const auto& [token, id] : t.ids) t.by_id[static_cast<std::size_t>(id)] = token;
}

// An added token as transformers' add_tokens(str) makes it.
inline nlohmann::ordered_json plain_added_token(const std::string& content) {
  return {{"id", 0}, {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", true}, {"special", false}};
}

// transformers' add_tokens: a token already added is skipped; one in the model's vocabulary is
// added under its id; any other gets the next id.
inline void add_token(hf_tokenizer& t, const std::string& content, nlohmann::ordered_json entry) {
  auto& added = t.document["added_tokens"];
  if (!added.is_array()) added = nlohmann::ordered_json::array();
  for (const auto& existing : added) {
    if (existing["content"] == content) return;
  }
  const std::optional<std::int64_t> known = t.id_of(content);
  const std::int64_t id = known ? *known : static_cast<std::int64_t>(t.by_id.size());
  entry["id"] = id;
  entry["content"] = content;
  added.push_back(std::move(entry));
  if (!known) {
    t.ids[content] = id;
    t.by_id.push_back(content);
  }
}

// mergekit's get_stripped_tokenizer: the tokens at or beyond the model's vocab_size are removed
// (from the vocabulary, the added tokens and the BPE merges that make them).
inline void strip_unused_tokens(hf_tokenizer& t, const std::string& label) {
  std::set<std::string, std::less<>> unused;
  for (const auto& [token, id] : t.ids) {
    if (static_cast<std::size_t>(id) >= t.vocab_size) unused.insert(token);
  }
  if (unused.empty()) return;
  auto& model = t.document["model"];
  if (!model.contains("type") || model["type"] != "BPE") {
    alloy::fail(error_code::format, label, ": the tokenizer has ", unused.size(), " tokens at or beyond vocab_size ",
                t.vocab_size, " and is not BPE; mergekit strips unused tokens of BPE tokenizers only");
  }
  auto& added = t.document["added_tokens"];
  nlohmann::ordered_json kept = nlohmann::ordered_json::array();
  for (const auto& entry : added) {
    if (static_cast<std::size_t>(entry["id"].get<std::int64_t>()) < t.vocab_size) kept.push_back(entry);
  }
  added = std::move(kept);
  for (const auto& token : unused) model["vocab"].erase(token);
  if (model.contains("merges") && model["merges"].is_array()) {
    nlohmann::ordered_json merges = nlohmann::ordered_json::array();
    for (const auto& merge : model["merges"]) {
      bool keep = true;
      const auto check = [&](const std::string& part) { keep = keep && !unused.contains(part); };
      if (merge.is_string()) {
        const std::string text = merge.get<std::string>();
        std::size_t start = 0;
        for (std::size_t space = text.find(' '); ; space = text.find(' ', start)) {
          check(text.substr(start, space == std::string::npos ? std::string::npos : space - start));
          if (space == std::string::npos) break;
          start = space + 1;
        }
      } else if (merge.is_array()) {
        for (const auto& part : merge) check(part.is_string() ? part.get<std::string>() : std::string());
      }
      if (keep) merges.push_back(merge);
    }
    model["merges"] = std::move(merges);
  }
  index_tokens(t, label);
}

}  // namespace detail

// Reads `folder`'s tokenizer.json and config.json's vocab_size. `label` names the model in errors.
inline hf_tokenizer read_tokenizer(const std::filesystem::path& folder, const std::string& label) {
  const std::filesystem::path path = folder / "tokenizer.json";
  std::error_code ec;
  if (folder.empty() || !std::filesystem::is_regular_file(path, ec)) {
    alloy::fail(error_code::not_found, label, ": no tokenizer.json", folder.empty() ? "" : " in " + folder.string(),
                "; building a vocabulary reads Hugging Face fast tokenizers (tokenizer.json), as mergekit does "
                "through transformers");
  }
  hf_tokenizer t;
  t.folder = folder;
  t.document = read_json_file(path, "a tokenizer", detail::max_tokenizer_bytes);
  if (!t.document.is_object() || !t.document.contains("model") || !t.document["model"].is_object() ||
      !t.document["model"].contains("vocab")) {
    alloy::fail(error_code::format, path.string(), ": not a Hugging Face tokenizer (no model.vocab)");
  }
  detail::index_tokens(t, path.string());
  t.vocab_size = detail::config_vocab_size(folder).value_or(t.ids.size());
  return t;
}

// The output vocabulary and how every referenced model maps into it.
struct vocabulary_plan {
  hf_tokenizer output;
  std::size_t tokens = 0;  // len(vocabulary)
  std::size_t rows = 0;    // tokens, padded to tokenizer.pad_to_multiple_of
  std::vector<model_reference> models;               // the referenced models, in config order
  std::vector<hf_tokenizer> vocabularies;            // each model's own (the base's stripped)
  std::vector<std::vector<std::int64_t>> permutation;  // per model: output id -> its row, or -1
  std::optional<std::size_t> base;                   // index of the base in `models`
  std::vector<std::pair<std::string, token_embedding_rule>> rules;
  bool keeps_donor_vocabulary = false;  // identity for every model, nothing added: the files are copied
  bool rewrites_tokenizer = false;      // the output tokenizer differs from its source's files

  [[nodiscard]] std::size_t index_of(const model_reference& reference) const {
    for (std::size_t i = 0; i < models.size(); ++i) {
      if (models[i] == reference) return i;
    }
    return models.size();
  }
};

// mergekit's build_tokenizer over the referenced models (`folders` holds each one's folder; the
// base, if any, first). `tokenizer_only` is the tokenizer source's folder when it is not merged.
inline vocabulary_plan plan_vocabulary(const tokenizer_settings& settings, const std::vector<model_reference>& models,
                                       const std::vector<std::filesystem::path>& folders, bool has_base,
                                       const std::filesystem::path& tokenizer_only = {}) {
  vocabulary_plan plan;
  plan.models = models;
  plan.rules = settings.tokens;
  if (has_base) plan.base = 0;
  for (std::size_t i = 0; i < models.size(); ++i) {
    std::error_code ec;
    const bool readable = !folders[i].empty() && std::filesystem::is_regular_file(folders[i] / "tokenizer.json", ec);
    if (i == 0 || readable) {
      plan.vocabularies.push_back(read_tokenizer(folders[i], models[i].text()));
    } else {
      // As mergekit: a model without a readable tokenizer is taken to have the base's (or first
      // model's) vocabulary, up to its own vocab_size.
      hf_tokenizer assumed = plan.vocabularies.front();
      assumed.vocab_size = detail::config_vocab_size(folders[i]).value_or(assumed.ids.size());
      plan.vocabularies.push_back(std::move(assumed));
    }
  }
  const nlohmann::ordered_json base_document = plan.vocabularies.front().document;
  detail::strip_unused_tokens(plan.vocabularies.front(), models.front().text());

  switch (settings.source) {
    case tokenizer_settings::kind::base: plan.output = plan.vocabularies.front(); break;
    case tokenizer_settings::kind::model: {
      // The source's own tokenizer: a merged model's as read (the base's unstripped), or one
      // outside the merge read from its folder.
      const std::size_t at = plan.index_of(settings.model);
      if (at == 0 || at == models.size()) {
        plan.output = read_tokenizer(at == 0                 ? folders[0]
                                     : tokenizer_only.empty() ? std::filesystem::path(settings.model.model)
                                                              : tokenizer_only,
                                     settings.model.text());
      } else {
        plan.output = plan.vocabularies[at];
      }
      break;
    }
    case tokenizer_settings::kind::union_of_models: {
      // build_union_tokenizer: every model's tokens below its vocab_size in order, first seen
      // first; the added tokens by content with the first model's settings.
      std::vector<std::string> regular;
      std::set<std::string, std::less<>> seen;
      std::vector<std::pair<std::string, nlohmann::ordered_json>> added;
      std::set<std::string, std::less<>> added_seen;
      for (const hf_tokenizer& vocabulary : plan.vocabularies) {
        for (std::size_t id = 0; id < vocabulary.by_id.size() && id < vocabulary.vocab_size; ++id) {
          const std::string& token = vocabulary.by_id[id];
          if (!token.empty() && seen.insert(token).second) regular.push_back(token);
        }
        if (!vocabulary.document.contains("added_tokens")) continue;
        std::vector<nlohmann::ordered_json> entries(vocabulary.document["added_tokens"].begin(),
                                                    vocabulary.document["added_tokens"].end());
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto& a, const auto& b) { return a["id"].template get<std::int64_t>() < b["id"].template get<std::int64_t>(); });
        for (const auto& entry : entries) {
          if (static_cast<std::size_t>(entry["id"].get<std::int64_t>()) >= vocabulary.vocab_size) continue;
          const std::string content = entry["content"].get<std::string>();
          if (added_seen.insert(content).second) added.emplace_back(content, entry);
        }
      }
      plan.output = plan.vocabularies.front();
      const hf_tokenizer& base = plan.vocabularies.front();
      for (const auto& token : regular) {
        if (added_seen.contains(token) || base.id_of(token)) continue;
        detail::add_token(plan.output, token, detail::plain_added_token(token));
      }
      for (const auto& [content, entry] : added) detail::add_token(plan.output, content, entry);
      break;
    }
  }
  // The tokenizer source's own file, before stripping or additions.
  const nlohmann::ordered_json source_document = settings.source == tokenizer_settings::kind::model ? plan.output.document : base_document;
  for (const auto& [token, rule] : settings.tokens) detail::add_token(plan.output, token, detail::plain_added_token(token));
  plan.rewrites_tokenizer = plan.output.document != source_document;
  for (std::size_t id = 0; id < plan.output.by_id.size(); ++id) {
    if (plan.output.by_id[id].empty()) {
      alloy::fail(error_code::format, "the output vocabulary has no token with id ", id,
                  " (the tokenizer's ids are not contiguous)");
    }
  }
  plan.tokens = plan.output.by_id.size();
  plan.rows = plan.tokens;
  if (settings.pad_to_multiple_of && plan.rows % *settings.pad_to_multiple_of != 0) {
    plan.rows += *settings.pad_to_multiple_of - plan.rows % *settings.pad_to_multiple_of;
  }
  bool identity = plan.rows == plan.tokens;
  for (const hf_tokenizer& vocabulary : plan.vocabularies) {
    std::vector<std::int64_t> p(plan.tokens, -1);
    for (std::size_t id = 0; id < plan.tokens; ++id) {
      const auto own = vocabulary.id_of(plan.output.by_id[id]);
      if (own && static_cast<std::size_t>(*own) < vocabulary.vocab_size) p[id] = *own;
      identity = identity && p[id] == static_cast<std::int64_t>(id);
    }
    identity = identity && vocabulary.vocab_size == plan.tokens;
    plan.permutation.push_back(std::move(p));
  }
  plan.keeps_donor_vocabulary = identity && settings.tokens.empty();
  for (const auto& [token, rule] : settings.tokens) {
    if (rule.source != token_embedding_rule::kind::zero && plan.index_of(rule.model) == plan.models.size()) {
      alloy::fail(error_code::invalid_argument, "tokenizer.tokens.", token, ": model ", alloy::quoted{rule.model.text()},
                  " is not part of the merge");
    }
  }
  return plan;
}

// embed.py's PermutedEmbeddings for one vocabulary matrix: `views[i]` is reader i's matrix, of
// plan model `model_of[i]`. Returns each reader's matrix in the output's token order, rows x H,
// in f32. A token a reader lacks (or every reader, with `force`) takes the row its rule says,
// else that of the one model that has it, else the base's, else the mean of those that have it,
// else zeros; padding rows are the mean of the reader's token rows.
inline std::vector<std::vector<float>> permute_vocabulary_rows(const vocabulary_plan& plan, std::span<const std::size_t> model_of,
                                                               std::span<const const_tensor_view> views,
                                                               std::string_view tensor) {
  const std::size_t readers = views.size();
  const auto width = static_cast<std::size_t>(views[0].shape()[1]);
  for (std::size_t i = 0; i < readers; ++i) {
    if (views[i].shape().rank() != 2 || static_cast<std::size_t>(views[i].shape()[1]) != width) {
      alloy::fail(error_code::shape_mismatch, "tensor ", alloy::quoted{tensor}, " of ", plan.models[model_of[i]].text(),
                  " has shape ", views[i].shape(), "; the vocabulary matrices must share their width ", width);
    }
  }
  const auto row_of = [&](std::size_t reader, std::int64_t row, float* out) {
    if (row < 0 || row >= views[reader].shape()[0]) {
      alloy::fail(error_code::invalid_argument, "tensor ", alloy::quoted{tensor}, ": row ", row, " is outside ",
                  plan.models[model_of[reader]].text(), "'s ", views[reader].shape()[0], " rows");
    }
    alloy::detail::load_block(views[reader], static_cast<std::size_t>(row) * width, width, out);
  };
  const auto reader_of = [&](const model_reference& reference, std::string_view token) {
    for (std::size_t i = 0; i < readers; ++i) {
      if (plan.models[model_of[i]] == reference) return i;
    }
    alloy::fail(error_code::invalid_argument, "tokenizer.tokens.", token, ": model ", alloy::quoted{reference.text()},
                " does not take part in tensor ", alloy::quoted{tensor});
  };
  std::map<std::string, const token_embedding_rule*, std::less<>> rules;
  for (const auto& [token, rule] : plan.rules) rules.emplace(token, &rule);

  std::vector<std::vector<float>> result(readers, std::vector<float>(plan.rows * width, 0.0f));
  std::vector<float> fallback(width);
  std::vector<float> scratch(width);
  std::vector<double> mean(width);
  for (std::size_t id = 0; id < plan.tokens; ++id) {
    const std::string& token = plan.output.by_id[id];
    const auto found = rules.find(token);
    const token_embedding_rule* rule = found == rules.end() ? nullptr : found->second;
    const bool force = rule != nullptr && rule->force;
    std::size_t present = 0, donor = 0;
    bool missing = false;
    for (std::size_t i = 0; i < readers; ++i) {
      const std::int64_t own = plan.permutation[model_of[i]][id];
      if (own >= 0) {
        ++present;
        donor = i;
        if (!force) row_of(i, own, result[i].data() + id * width);
      }
      missing = missing || own < 0 || force;
    }
    if (!missing) continue;
    // The row for the readers without the token (or for all, forced).
    std::fill(fallback.begin(), fallback.end(), 0.0f);
    if (rule != nullptr) {
      switch (rule->source) {
        case token_embedding_rule::kind::zero: break;
        case token_embedding_rule::kind::model: {
          const std::size_t from = reader_of(rule->model, token);
          const std::int64_t row = plan.permutation[model_of[from]][id];
          if (row < 0) {
            alloy::fail(error_code::invalid_argument, "tokenizer.tokens.", token, ": model ", alloy::quoted{rule->model.text()},
                        " has no token ", alloy::quoted{token});
          }
          row_of(from, row, fallback.data());
          break;
        }
        case token_embedding_rule::kind::model_token: {
          const std::size_t from = reader_of(rule->model, token);
          std::int64_t row = rule->token_id.value_or(-1);
          if (!rule->token_id) {
            const auto id_in_model = plan.vocabularies[model_of[from]].id_of(rule->token);
            if (!id_in_model) {
              alloy::fail(error_code::invalid_argument, "tokenizer.tokens.", token, ": token ", alloy::quoted{rule->token},
                          " is not in model ", alloy::quoted{rule->model.text()});
            }
            row = *id_in_model;
          }
          row_of(from, row, fallback.data());
          break;
        }
      }
    } else if (present == 1) {
      row_of(donor, plan.permutation[model_of[donor]][id], fallback.data());
    } else if (present > 1) {
      std::optional<std::size_t> base_reader;
      for (std::size_t i = 0; plan.base && i < readers; ++i) {
        if (model_of[i] == *plan.base && plan.permutation[model_of[i]][id] >= 0) base_reader = i;
      }
      if (base_reader) {
        row_of(*base_reader, plan.permutation[model_of[*base_reader]][id], fallback.data());
      } else {
        std::fill(mean.begin(), mean.end(), 0.0);
        for (std::size_t i = 0; i < readers; ++i) {
          const std::int64_t own = plan.permutation[model_of[i]][id];
          if (own < 0) continue;
          row_of(i, own, scratch.data());
          for (std::size_t c = 0; c < width; ++c) mean[c] += static_cast<double>(scratch[c]);
        }
        for (std::size_t c = 0; c < width; ++c) fallback[c] = static_cast<float>(mean[c] / static_cast<double>(present));
      }
    }
    for (std::size_t i = 0; i < readers; ++i) {
      if (force || plan.permutation[model_of[i]][id] < 0) std::copy(fallback.begin(), fallback.end(), result[i].begin() + static_cast<std::ptrdiff_t>(id * width));
    }
  }
  if (plan.rows > plan.tokens) {  // padding: each reader's mean token row
    for (auto& matrix : result) {
      std::fill(mean.begin(), mean.end(), 0.0);
      for (std::size_t id = 0; id < plan.tokens; ++id) {
        for (std::size_t c = 0; c < width; ++c) mean[c] += static_cast<double>(matrix[id * width + c]);
      }
      for (std::size_t id = plan.tokens; id < plan.rows; ++id) {
        for (std::size_t c = 0; c < width; ++c) matrix[id * width + c] = static_cast<float>(mean[c] / static_cast<double>(plan.tokens));
      }
    }
  }
  return result;
}

// tokenizer_config.json for the output vocabulary: the source's, with added_tokens_decoder
// listing the output's added tokens (as transformers' save_pretrained writes it).
inline nlohmann::ordered_json output_tokenizer_config(nlohmann::ordered_json config, const hf_tokenizer& output) {
  if (!config.is_object()) config = nlohmann::ordered_json::object();
  nlohmann::ordered_json decoder = nlohmann::ordered_json::object();
  if (output.document.contains("added_tokens")) {
    for (const auto& entry : output.document["added_tokens"]) {
      nlohmann::ordered_json info = nlohmann::ordered_json::object();
      for (const char* key : {"content", "lstrip", "normalized", "rstrip", "single_word", "special"}) {
        if (entry.contains(key)) info[key] = entry[key];
      }
      decoder[std::to_string(entry["id"].get<std::int64_t>())] = std::move(info);
    }
  }
  config["added_tokens_decoder"] = std::move(decoder);
  return config;
}

namespace detail {
// The templates mergekit ships under these names (mergekit/_data/chat_templates), so that a
// config that names one writes the same tokenizer_config.json.
inline std::optional<std::string_view> named_chat_template(std::string_view name) {
  static const std::pair<std::string_view, std::string_view> templates[] = {
      {"chatml",
       "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
       "'\\n'}}{% endfor %}\n{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
      {"llama3",
       "{% set loop_messages = messages %}\n{% for message in loop_messages %}\n{% set content = "
       "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
       "'<|eot_id|>' %}\n{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}\n{{ content "
       "}}\n{% endfor %}\n{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' "
       "}}{% endif %}\n"},
      {"alpaca",
       "{{ (messages|selectattr('role', 'equalto', 'system')|list|last).content|trim if "
       "(messages|selectattr('role', 'equalto', 'system')|list) else '' }}\n\n{% for message in messages %}\n{% if "
       "message['role'] == 'user' %}\n### Instruction:\n{{ message['content']|trim -}}\n{% if not loop.last "
       "%}\n\n\n{% endif %}\n{% elif message['role'] == 'assistant' %}\n### Response:\n{{ message['content']|trim "
       "-}}\n{% if not loop.last %}\n\n\n{% endif %}\n{% elif message['role'] == 'user_context' %}\n### "
       "Input:\n{{ message['content']|trim -}}\n{% if not loop.last %}\n\n\n{% endif %}\n{% endif %}\n{% endfor "
       "%}\n{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}\n### Response:\n{% endif %}\n"},
      {"exaone",
       "{% for message in messages %}\n    {% if loop.first and message['role'] != 'system' %}\n        {{ "
       "'[|system|][|endofturn|]\\n' }}\n    {% endif %}\n    {{ '[|' + message['role'] + '|]' + "
       "message['content'] }}\n    {% if message['role'] == 'user' %}\n        {{ '\\n' }}\n    {% else %}\n        "
       "{{ '[|endofturn|]\\n' }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n    {{ "
       "'[|assistant|]' }}\n{% endif %}\n"},
  };
  for (const auto& [key, text] : templates) {
    if (key == name) return text;
  }
  return std::nullopt;
}

inline std::string trimmed(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

// A model's chat template: chat_template.jinja, else tokenizer_config.json's chat_template (a
// string, or the "default" of a list of named templates).
inline std::optional<std::string> chat_template_of(const std::filesystem::path& folder) {
  std::error_code ec;
  if (folder.empty()) return std::nullopt;
  if (std::filesystem::is_regular_file(folder / "chat_template.jinja", ec)) {
    const mapped_file file(folder / "chat_template.jinja");
    return std::string(reinterpret_cast<const char*>(file.bytes().data()), file.bytes().size());
  }
  if (!std::filesystem::is_regular_file(folder / "tokenizer_config.json", ec)) return std::nullopt;
  const nlohmann::ordered_json config = read_json_file(folder / "tokenizer_config.json", "a tokenizer config", max_tokenizer_bytes);
  if (!config.is_object() || !config.contains("chat_template")) return std::nullopt;
  const auto& value = config["chat_template"];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) {
    for (const auto& named : value) {
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") && named["template"].is_string()) {
        return named["template"].get<std::string>();
      }
    }
  }
  return std::nullopt;
}
}  // namespace detail

// mergekit's _set_chat_template: "auto" (the template most of the models have, the first of
// equals), a name mergekit ships (chatml, llama3, alpaca, exaone), or a template itself. None:
// nothing to set.
inline std::optional<std::string> resolve_chat_template(const std::string& setting,
                                                        const std::vector<std::filesystem::path>& folders) {
  if (setting == "auto") {
    std::vector<std::pair<std::string, std::size_t>> counts;
    for (const auto& folder : folders) {
      const auto found = detail::chat_template_of(folder);
      if (!found) continue;
      const std::string text = detail::trimmed(*found);
      if (text.empty()) continue;
      const auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == text; });
      if (it == counts.end()) {
        counts.emplace_back(text, 1);
      } else {
        ++it->second;
      }
    }
    if (counts.empty()) return std::nullopt;
    return std::max_element(counts.begin(), counts.end(), [](const auto& a, const auto& b) { return a.second < b.second; })->first;
  }
  if (setting.size() < 256 && setting.find('\n') == std::string::npos && setting.find('{') == std::string::npos) {
    if (const auto named = detail::named_chat_template(setting)) return std::string(*named);
  }
  if (setting.size() < 20 || setting.find('{') == std::string::npos) {
    alloy::fail(error_code::invalid_argument, "chat_template: ", alloy::quoted{setting},
                " is neither a template nor one of auto, chatml, llama3, alpaca, exaone");
  }
  return setting;
}

}  // namespace alloy::tools
