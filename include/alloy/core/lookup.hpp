#pragma once
// Finding an entry of a table by its name, with the error every such lookup gives: the name asked
// for and the names known ("unknown merge method 'frankenmerge' (known: linear, ties, ...)").

#include <string>
#include <string_view>

#include "alloy/core/error.hpp"

namespace alloy {

// The entry of `table` whose name_of(entry) equals `name`; fails with error_code::invalid_argument
// naming `what`, `name` and every known name otherwise.
template <class Table, class NameOf>
const auto& find_named(const Table& table, std::string_view name, NameOf&& name_of, std::string_view what) {
  for (const auto& entry : table) {
    if (std::string_view(name_of(entry)) == name) return entry;
  }
  std::string known;
  for (const auto& entry : table) known += (known.empty() ? "" : ", ") + std::string(name_of(entry));
  fail(error_code::invalid_argument, "unknown ", what, " ", quoted{name}, " (known: ", known, ")");
}

}  // namespace alloy
