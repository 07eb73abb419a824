#pragma once
// The one table of merge methods: config names, parameters, defaults, and how each builds its
// policy. The recipe, the CLI, the docs and the tests all read it (as mergekit's registry.py).

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <deque>
#include <iterator>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/core/lookup.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/merge/arcee_fusion_merge.hpp"
#include "alloy/merge/linear_merge.hpp"
#include "alloy/merge/magmax_merge.hpp"
#include "alloy/merge/model_stock_merge.hpp"
#include "alloy/merge/nearswap_merge.hpp"
#include "alloy/merge/ram_merge.hpp"
#include "alloy/merge/sce_merge.hpp"
#include "alloy/merge/slerp_merge.hpp"
#include "alloy/merge/spherical_merge.hpp"
#include "alloy/merge/task_vector_merge.hpp"

namespace alloy {

using merge_policy = std::variant<linear_merge, task_vector_merge, magmax_merge, slerp_merge, model_stock_merge,
                                  nearswap_merge, nuslerp_merge, multislerp_merge, karcher_merge, sce_merge, ram_merge,
                                  arcee_fusion_merge>;

// Runs `policy` on `backend`. With the CUDA backend, a translation unit that nvcc does not compile
// calls alloy::cuda::merge_with (adapters/cuda), which this same template instantiates on the GPU.
template <class Backend>
void merge_with(const merge_policy& policy, const Backend& backend, const merge_inputs& in, tensor_view output) {
  std::visit([&](const auto& p) { p.merge(backend, in, output); }, policy);
}

// merge_with on the CPU instantiates every method's kernels at every dispatch level and dtype: most
// of the compile time of a file that merges (about 80 of 100 s with g++ -O3). A project with many
// such files compiles them once: each file sees ALLOY_EXTERN_CPU_MERGE, and one file holds the
// instantiation. With CMake, link alloy::cpu_merge, which does both (docs/building.md).
#ifdef ALLOY_EXTERN_CPU_MERGE
extern template void merge_with<cpu_backend>(const merge_policy&, const cpu_backend&, const merge_inputs&, tensor_view);
#endif

struct parameter_definition {
  enum class scope : std::uint8_t { method, model };  // once per merge, or once per model
  // What values a parameter takes. Numbers (real, boolean as 0/1, integer) may vary per tensor
  // (gradients, filters); a choice is one word for the whole merge.
  enum class kind : std::uint8_t { real, boolean, integer, choice };
  std::string_view name{};
  scope where = scope::method;
  kind type = kind::real;
  std::optional<double> default_value{};  // numbers; none (and no choices): required
  std::string_view meaning{};
  double minimum = -std::numeric_limits<double>::infinity();  // the numbers a merge accepts
  double maximum = std::numeric_limits<double>::infinity();
  std::vector<std::string_view> choices{};  // kind::choice: the words it accepts, the first the default
  // scope::model: the field of model_parameters the value fills (none: the field of the same
  // name, one of weight, density, gamma, epsilon).
  double model_parameters::*field = nullptr;

  [[nodiscard]] bool required() const noexcept { return !default_value && choices.empty(); }

  [[nodiscard]] bool accepts(double value) const noexcept {
    if (type == kind::choice || !std::isfinite(value) || value < minimum || value > maximum) return false;
    if (type == kind::boolean) return value == 0.0 || value == 1.0;
    if (type == kind::integer) return value == std::floor(value);
    return true;
  }
  [[nodiscard]] bool accepts(std::string_view word) const noexcept {
    return type == kind::choice && std::find(choices.begin(), choices.end(), word) != choices.end();
  }
  // What accepts() wants, for messages: "a boolean (true or false)", "in [0, 1]", ...
  [[nodiscard]] std::string expected() const {
    const bool bounded = std::isfinite(minimum) || std::isfinite(maximum);
    const std::string range = detail::concat("[", minimum, ", ", maximum, "]");
    switch (type) {
      case kind::boolean: return "a boolean (true or false)";
      case kind::integer: return bounded ? "a whole number in " + range : std::string("a whole number");
      case kind::choice: {
        std::string words;
        for (const auto word : choices) words += (words.empty() ? "" : ", ") + std::string(word);
        return "one of " + words;
      }
      case kind::real: break;
    }
    return bounded ? "in " + range : std::string("a finite number");
  }
};

// A method's parameters resolved for the tensor being merged (defaults applied, kinds checked),
// as a method's `make` reads them.
class parameter_lookup {
 public:
  using numbers = std::function<double(std::string_view)>;
  using words = std::function<std::string(std::string_view)>;
  explicit parameter_lookup(numbers number_of, words choice_of = {})
      : number_of_(std::move(number_of)), choice_of_(std::move(choice_of)) {}

  [[nodiscard]] double number(std::string_view name) const { return number_of_(name); }
  [[nodiscard]] bool flag(std::string_view name) const { return number_of_(name) != 0.0; }
  [[nodiscard]] std::uint64_t integer(std::string_view name) const {
    return static_cast<std::uint64_t>(number_of_(name));  // range and wholeness checked by its kind
  }
  [[nodiscard]] std::string choice(std::string_view name) const {
    if (!choice_of_) detail::fail(error_code::invalid_argument, "parameter ", detail::quoted{name}, " has no value");
    return choice_of_(name);
  }

 private:
  numbers number_of_;
  words choice_of_;
};

struct method_definition {
  std::string_view name;
  bool needs_base = true;
  // A method without a required base that still takes one where the config names it, as the
  // origin of its task vectors (nuslerp, multislerp). Otherwise a named base of a method that
  // needs none is one more model (linear, karcher), as in mergekit.
  bool optional_base = false;
  std::size_t min_models = 1;  // models besides the base
  std::size_t max_models = std::numeric_limits<std::size_t>::max();
  std::vector<parameter_definition> parameters;
  std::function<merge_policy(const parameter_lookup&)> make;

  // Whether a base the config names is the base (rather than one more model).
  [[nodiscard]] bool uses_base() const noexcept { return needs_base || optional_base; }

  [[nodiscard]] const parameter_definition* find(std::string_view parameter) const {
    for (const auto& p : parameters) {
      if (p.name == parameter) return &p;
    }
    return nullptr;
  }
  // Every parameter at its default (required ones must be given by `fallback`).
  [[nodiscard]] parameter_lookup defaults(const parameter_lookup::numbers& fallback = {}) const {
    return parameter_lookup(
        [this, fallback](std::string_view parameter) {
          const parameter_definition* p = find(parameter);
          if (p != nullptr && p->default_value) return *p->default_value;
          if (fallback) return fallback(parameter);
          detail::fail(error_code::invalid_argument, name, ": parameter ", detail::quoted{parameter}, " has no default");
        },
        [this](std::string_view parameter) { return std::string(find(parameter)->choices.front()); });
  }
};

namespace detail {

using scope = parameter_definition::scope;
using kind = parameter_definition::kind;

// Seeds are 64-bit; the largest double below 2^64 bounds what a config can write exactly.
inline constexpr double max_seed = 18446744073709549568.0;

inline std::vector<parameter_definition> task_vector_parameters(bool normalize, bool rescale, bool density,
                                                                bool random, bool gamma, bool epsilon, bool consensus) {
  std::vector<parameter_definition> p{
      {.name = "weight", .where = scope::model, .meaning = "scale of the model's task vector"},
      {.name = "normalize", .type = kind::boolean, .default_value = normalize ? 1.0 : 0.0,
       .meaning = "divide by the sum of (agreeing) weights"},
      {.name = "lambda", .default_value = 1.0, .meaning = "scale of the merged task vector"},
      {.name = "int8_mask", .type = kind::boolean, .default_value = 0.0,
       .meaning = "accepted for mergekit compatibility; alloy's masks are bits"},
  };
  if (density) {
    p.push_back({.name = "density", .where = scope::model, .default_value = 1.0,
                 .meaning = "fraction of the task vector kept", .minimum = 0.0, .maximum = 1.0});
    p.push_back({.name = "rescale", .type = kind::boolean, .default_value = rescale ? 1.0 : 0.0,
                 .meaning = "rescale what is kept"});
  }
  if (random) {
    p.push_back({.name = "seed", .type = kind::integer, .default_value = 0.0, .meaning = "seed of the random masks",
                 .minimum = 0.0, .maximum = max_seed});
  }
  if (random && !epsilon) {  // DARE's
    p.push_back({.name = "rescale_by", .type = kind::choice,
                 .meaning = "what rescale matches: the task vector's L1 norm (mergekit) or 1/density (DARE's paper)",
                 .choices = {"l1", "density"}});
  }
  if (gamma) {
    p.push_back({.name = "gamma", .where = scope::model, .default_value = 0.01,
                 .meaning = "fraction of largest entries dropped", .minimum = 0.0, .maximum = 1.0});
  }
  if (epsilon) {
    p.push_back({.name = "epsilon", .where = scope::model, .default_value = 0.15,
                 .meaning = "spread of keep probabilities", .minimum = 0.0, .maximum = 1.0});
  }
  if (consensus) {
    p.push_back({.name = "consensus", .type = kind::choice,
                 .meaning = "how the sign is elected: by the weighted sum or by counting signs",
                 .choices = {"sum", "count"}});
  }
  return p;
}

inline method_definition task_vector_method(task_vector_merge prototype, bool density, bool random, bool gamma,
                                            bool epsilon) {
  method_definition def;
  def.name = prototype.method;
  const bool consensus = prototype.consensus != sign_consensus::none;
  def.parameters =
      task_vector_parameters(prototype.normalize, prototype.rescale, density, random, gamma, epsilon, consensus);
  def.make = [prototype, density, random, epsilon, consensus](const parameter_lookup& get) {
    task_vector_merge policy = prototype;
    policy.normalize = get.flag("normalize");
    policy.lambda = get.number("lambda");
    if (density) policy.rescale = get.flag("rescale");
    if (random) policy.seed = get.integer("seed");
    if (random && !epsilon) {
      policy.rescale_by = get.choice("rescale_by") == "density" ? rescale_rule::inverse_density : rescale_rule::l1_norm;
    }
    if (consensus) policy.consensus = get.choice("consensus") == "count" ? sign_consensus::count : sign_consensus::sum;
    return merge_policy(policy);
  };
  return def;
}

inline std::vector<method_definition> builtin_methods() {
  std::vector<method_definition> all;
  {
    method_definition linear;
    linear.name = "linear";
    linear.needs_base = false;
    linear.parameters = {{.name = "weight", .where = scope::model, .meaning = "weight of the model"},
                         {.name = "normalize", .type = kind::boolean, .default_value = 1.0,
                          .meaning = "divide by the sum of weights"}};
    linear.make = [](const parameter_lookup& get) { return merge_policy(linear_merge{get.flag("normalize")}); };
    all.push_back(std::move(linear));
  }
  all.push_back(task_vector_method(task_vector_merge::task_arithmetic(), false, false, false, false));
  all.push_back(task_vector_method(task_vector_merge::ties(), true, false, false, false));
  all.push_back(task_vector_method(task_vector_merge::dare_linear(), true, true, false, false));
  all.push_back(task_vector_method(task_vector_merge::dare_ties(), true, true, false, false));
  all.push_back(task_vector_method(task_vector_merge::breadcrumbs(), true, false, true, false));
  all.push_back(task_vector_method(task_vector_merge::breadcrumbs_ties(), true, false, true, false));
  all.push_back(task_vector_method(task_vector_merge::della(), true, true, false, true));
  all.push_back(task_vector_method(task_vector_merge::della_linear(), true, true, false, true));
  {
    // mergekit's passthrough: one model's tensor as it is, times `scale`. The weighted sum of one
    // model with the sum's normalisation off, so that no second kernel copies tensors.
    method_definition passthrough;
    passthrough.name = "passthrough";
    passthrough.needs_base = false;
    passthrough.max_models = 1;
    passthrough.parameters = {{.name = "scale", .where = scope::model, .default_value = 1.0,
                               .meaning = "factor applied to the model's tensor", .field = &model_parameters::weight}};
    passthrough.make = [](const parameter_lookup&) { return merge_policy(linear_merge{/*normalize=*/false}); };
    all.push_back(std::move(passthrough));
  }
  {
    method_definition magmax;
    magmax.name = "magmax";
    magmax.parameters = {{.name = "lambda", .default_value = 1.0, .meaning = "scale of the selected task vector"}};
    magmax.make = [](const parameter_lookup& get) { return merge_policy(magmax_merge{get.number("lambda")}); };
    all.push_back(std::move(magmax));
  }
  {
    method_definition slerp;
    slerp.name = "slerp";
    slerp.max_models = 1;  // interpolates between the base and one other model
    slerp.parameters = {{.name = "t", .meaning = "interpolation factor: 0 is the base, 1 the model"}};
    slerp.make = [](const parameter_lookup& get) { return merge_policy(slerp_merge{get.number("t")}); };
    all.push_back(std::move(slerp));
  }
  {
    method_definition nearswap;
    nearswap.name = "nearswap";
    nearswap.max_models = 1;  // the base and one model
    nearswap.parameters = {{.name = "t", .meaning = "distance within which the model's value is taken whole"}};
    nearswap.make = [](const parameter_lookup& get) { return merge_policy(nearswap_merge{get.number("t")}); };
    all.push_back(std::move(nearswap));
  }
  {
    method_definition stock;
    stock.name = "model_stock";
    stock.min_models = 2;
    stock.parameters = {{.name = "filter_wise", .type = kind::boolean, .default_value = 0.0,
                         .meaning = "one ratio per row (along the last axis) instead of per tensor"}};
    stock.make = [](const parameter_lookup& get) { return merge_policy(model_stock_merge{get.flag("filter_wise")}); };
    all.push_back(std::move(stock));
  }
  {
    method_definition nuslerp;
    nuslerp.name = "nuslerp";
    nuslerp.needs_base = false;
    nuslerp.optional_base = true;
    nuslerp.min_models = nuslerp.max_models = 2;
    nuslerp.parameters = {
        {.name = "weight", .where = scope::model, .meaning = "relative weight: t = w_1 / (w_0 + w_1)"},
        {.name = "nuslerp_flatten", .type = kind::boolean, .default_value = 1.0,
         .meaning = "interpolate each tensor as one vector"},
        {.name = "nuslerp_row_wise", .type = kind::boolean, .default_value = 0.0,
         .meaning = "without flatten: vectors along the first axis instead of the last"}};
    nuslerp.make = [](const parameter_lookup& get) {
      return merge_policy(nuslerp_merge{get.flag("nuslerp_row_wise"), get.flag("nuslerp_flatten")});
    };
    all.push_back(std::move(nuslerp));
  }
  {
    method_definition multislerp;
    multislerp.name = "multislerp";
    multislerp.needs_base = false;
    multislerp.optional_base = true;
    multislerp.parameters = {
        {.name = "weight", .where = scope::model, .meaning = "weight of the model's direction"},
        {.name = "normalize_weights", .type = kind::boolean, .default_value = 1.0,
         .meaning = "divide the weights by their sum"},
        {.name = "eps", .default_value = 1e-8, .meaning = "added to norms before dividing by them", .minimum = 0.0}};
    multislerp.make = [](const parameter_lookup& get) {
      return merge_policy(multislerp_merge{get.flag("normalize_weights"), get.number("eps")});
    };
    all.push_back(std::move(multislerp));
  }
  {
    method_definition karcher;
    karcher.name = "karcher";
    karcher.needs_base = false;
    karcher.parameters = {
        {.name = "max_iter", .type = kind::integer, .default_value = 10.0, .meaning = "iterations at most",
         .minimum = 0.0, .maximum = 1e6},
        {.name = "tol", .default_value = 1e-5, .meaning = "convergence and zero-norm tolerance", .minimum = 0.0}};
    karcher.make = [](const parameter_lookup& get) {
      return merge_policy(karcher_merge{get.integer("max_iter"), get.number("tol")});
    };
    all.push_back(std::move(karcher));
  }
  {
    method_definition sce;
    sce.name = "sce";
    sce.parameters = {
        {.name = "select_topk", .default_value = 1.0, .meaning = "fraction of entries kept by variance across the models",
         .minimum = 0.0, .maximum = 1.0},
        {.name = "int8_mask", .type = kind::boolean, .default_value = 0.0,
         .meaning = "accepted for mergekit compatibility; alloy's masks are bits"}};
    sce.make = [](const parameter_lookup& get) { return merge_policy(sce_merge{get.number("select_topk")}); };
    all.push_back(std::move(sce));
  }
  const auto ram_method = [](std::string_view name, bool boost) {
    method_definition ram;
    ram.name = name;
    ram.parameters = {{.name = "epsilon", .default_value = 1e-5, .meaning = "|m - b| above which a model changed an entry",
                       .minimum = 0.0}};
    if (boost) {
      ram.parameters.push_back({.name = "r", .default_value = 0.1, .meaning = "strength of the unique entries' boost"});
      ram.parameters.push_back({.name = "alpha", .default_value = 0.2, .meaning = "cap of the shared / unique ratio",
                                .minimum = 0.0});
    }
    ram.make = [boost](const parameter_lookup& get) {
      ram_merge policy{get.number("epsilon"), boost};
      if (boost) {
        policy.r = get.number("r");
        policy.alpha = get.number("alpha");
      }
      return merge_policy(policy);
    };
    return ram;
  };
  all.push_back(ram_method("ram", false));
  all.push_back(ram_method("ramplus_tl", true));
  {
    method_definition fusion;
    fusion.name = "arcee_fusion";
    fusion.max_models = 1;  // the base and one model
    fusion.make = [](const parameter_lookup&) { return merge_policy(arcee_fusion_merge{}); };
    all.push_back(std::move(fusion));
  }
  return all;
}

// A deque: registering a method leaves references to the others valid.
inline std::deque<method_definition>& method_registry() {
  static std::deque<method_definition> methods = [] {
    std::vector<method_definition> builtin = builtin_methods();
    return std::deque<method_definition>(std::make_move_iterator(builtin.begin()), std::make_move_iterator(builtin.end()));
  }();
  return methods;
}

}  // namespace detail

// Every merge method alloy knows: the built-in ones, then those registered by the program.
inline const std::deque<method_definition>& merge_methods() { return detail::method_registry(); }

// Adds a method under a new name: a new configuration of the existing policies (a task-vector
// method with other defaults or steps, say), usable from recipes and configs like a built-in one,
// on every backend (its policies are the variant's, which the CUDA library compiles). Names are
// views: give literals or strings that outlive the program's merges. Register before merging
// starts (the registry is not guarded for concurrent changes). Fails if the name is taken or the
// definition is incomplete.
inline void register_merge_method(method_definition method) {
  if (method.name.empty()) detail::fail(error_code::invalid_argument, "register_merge_method: the method has no name");
  if (!method.make) {
    detail::fail(error_code::invalid_argument, "register_merge_method: ", detail::quoted{method.name}, " has no make");
  }
  if (method.min_models == 0 || method.min_models > method.max_models) {
    detail::fail(error_code::invalid_argument, "register_merge_method: ", detail::quoted{method.name},
                 " has model counts [", method.min_models, ", ", method.max_models, "]");
  }
  for (const auto& p : method.parameters) {
    if (p.type == parameter_definition::kind::choice && p.choices.empty()) {
      detail::fail(error_code::invalid_argument, "register_merge_method: choice parameter ", detail::quoted{p.name},
                   " of ", detail::quoted{method.name}, " has no choices");
    }
  }
  for (const auto& known : merge_methods()) {
    if (known.name == method.name) {
      detail::fail(error_code::already_exists, "register_merge_method: a method named ", detail::quoted{method.name},
                   " exists already");
    }
  }
  detail::method_registry().push_back(std::move(method));
}

// The method of that config name; fails naming the known ones.
inline const method_definition& find_merge_method(std::string_view name) {
  return find_named(merge_methods(), name, [](const method_definition& m) { return m.name; }, "merge method");
}

}  // namespace alloy
