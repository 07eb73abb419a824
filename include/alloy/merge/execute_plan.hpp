#pragma once
// The one executor: walks a merge plan tensor by tensor on any backend, reading inputs from a
// source and writing into a sink. Everything that differs between the library's store merges,
// alloy-merge on the CPU, alloy-merge's pinned GPU pipeline and the torch adapter's in-place CUDA
// merge is a source and a sink; the walk, the copy rule and the policies are this one.
//
// A source gives, for a planned tensor, the views its policy reads, in the backend's memory:
//
//   void read(const planned_tensor&, tensor_inputs& out);                 // required
//   void read_host(const planned_tensor&, tensor_inputs& out);            // optional: host views,
//                                                                         // for copies (default read)
//   void release(const planned_tensor&);                                  // optional: done with it
//   void prefetch(const planned_tensor&);                                 // optional: read next
//                                                                         // (called before the
//                                                                         // tensor before it merges)
//
// A sink gives the view a tensor is written into, and hears when it is complete:
//
//   tensor_view output(const planned_tensor&);                            // required
//   void write_copy(const planned_tensor&, const_tensor_view host_value); // optional (default:
//                                                                         // convert into output())
//   void commit(const planned_tensor&);                                   // optional
//
// Copies (integer and boolean buffers) are compared and written on the host: every model must
// hold the reference's bytes.

#include <cstddef>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "alloy/core/convert.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/merge/merge_inputs.hpp"
#include "alloy/merge/merge_plan.hpp"
#include "alloy/merge/module_plan.hpp"
#include "alloy/merge/registry.hpp"
#include "alloy/merge/slice_plan.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

// The views of one planned tensor's inputs, in the plan's order.
struct tensor_inputs {
  std::optional<const_tensor_view> base;
  std::vector<const_tensor_view> models;

  [[nodiscard]] const_tensor_view reference() const { return base ? *base : models.front(); }
};

// Fills `out` for `tensor` from `lookup(source) -> const_tensor_view`: what most sources do.
template <class Lookup>
void gather_inputs(const planned_tensor& tensor, tensor_inputs& out, Lookup&& lookup) {
  out.base.reset();
  if (tensor.base) out.base = lookup(*tensor.base);
  out.models.resize(tensor.models.size());
  for (std::size_t i = 0; i < tensor.models.size(); ++i) out.models[i] = lookup(tensor.models[i]);
}

namespace detail {

// Inputs of a tensor merged over the common rows of its vocabulary (vocabulary_rows), as views
// of their first rows: each is contiguous, so nothing is copied.
inline void crop_to_rows(const shape& dims, tensor_inputs& inputs) {
  const auto crop = [&](const_tensor_view& view) {
    if (!(view.shape() == dims) && holds_rows_of(view.shape(), dims)) view = const_tensor_view(view.data(), view.dtype(), dims);
  };
  if (inputs.base) crop(*inputs.base);
  for (auto& model : inputs.models) crop(model);
}

// The copy rule: every model holds the reference's dtype, shape and bytes (host views).
inline void check_copy_agrees(const merge_plan& plan, const planned_tensor& tensor, const tensor_inputs& inputs) {
  const const_tensor_view reference = inputs.reference();
  for (std::size_t i = 0; i < inputs.models.size(); ++i) {
    const const_tensor_view& model = inputs.models[i];
    const bool same = model.dtype() == reference.dtype() && model.shape() == reference.shape() &&
                      (reference.byte_size() == 0 || std::memcmp(model.data(), reference.data(), reference.byte_size()) == 0);
    if (!same) {
      fail(error_code::dtype_mismatch, plan.method, ": tensor ", quoted{tensor.name}, " of dtype ", reference.dtype(),
           " cannot be merged and differs in ", plan.inputs[tensor.models[i].input]);
    }
  }
}

}  // namespace detail

// Runs `plan` on `backend`: for every planned tensor in order, reads its inputs from `source`,
// merges (or copies) into `sink.output(tensor)`, commits, and releases the inputs.
template <class Backend, class Source, class Sink>
void execute(const merge_plan& plan, const Backend& backend, Source& source, Sink& sink) {
  tensor_inputs inputs;
  for (std::size_t index = 0; index < plan.tensors.size(); ++index) {
    const planned_tensor& tensor = plan.tensors[index];
    if constexpr (requires { source.prefetch(tensor); }) {
      if (index + 1 < plan.tensors.size()) source.prefetch(plan.tensors[index + 1]);
    }
    if (tensor.merged()) {
      source.read(tensor, inputs);
      detail::crop_to_rows(tensor.dims, inputs);
      const tensor_view output = sink.output(tensor);
      // Unqualified: a backend may provide its own merge_with (the CUDA library's, compiled by nvcc).
      merge_with(tensor.merge.policy, backend, merge_inputs{tensor.name, inputs.base, inputs.models, tensor.merge.per_model},
                 output);
    } else {
      if constexpr (requires { source.read_host(tensor, inputs); }) {
        source.read_host(tensor, inputs);
      } else {
        source.read(tensor, inputs);
      }
      detail::check_copy_agrees(plan, tensor, inputs);
      if constexpr (requires { sink.write_copy(tensor, inputs.reference()); }) {
        sink.write_copy(tensor, inputs.reference());
      } else {
        const tensor_view output = sink.output(tensor);
        if (output.data() != inputs.reference().data()) convert(inputs.reference(), output);
      }
    }
    if constexpr (requires { sink.commit(tensor); }) sink.commit(tensor);
    if constexpr (requires { source.release(tensor); }) source.release(tensor);
  }
}

// A source over a base store (or none) and model stores, indexed as plan_merge over stores
// indexes them: input 0 is the base when there is one, then the models.
template <parameter_store Base, parameter_store Model, std::size_t Extent>
class stores_source {
 public:
  stores_source(const Base* base, std::span<const Model, Extent> models) : base_(base), models_(models) {}

  [[nodiscard]] const_tensor_view view(const tensor_source& source) const {
    if (base_ != nullptr) return source.input == 0 ? base_->view(source.tensor) : models_[source.input - 1].view(source.tensor);
    return models_[source.input].view(source.tensor);
  }
  void read(const planned_tensor& tensor, tensor_inputs& out) const {
    gather_inputs(tensor, out, [this](const tensor_source& source) { return view(source); });
  }

 private:
  const Base* base_;
  std::span<const Model, Extent> models_;
};

// Writes each planned tensor into a view chosen for it beforehand, by its position in the plan.
class views_sink {
 public:
  views_sink(const merge_plan& plan, std::vector<tensor_view> targets) : plan_(&plan), targets_(std::move(targets)) {}
  [[nodiscard]] tensor_view output(const planned_tensor& tensor) const {
    return targets_[static_cast<std::size_t>(&tensor - plan_->tensors.data())];
  }

 private:
  const merge_plan* plan_;
  std::vector<tensor_view> targets_;
};

// Merges whole stores into a new memory store, tensor by tensor in the order of the base (or of
// the first model). Every model must hold every tensor with the same shape, and no other. The
// output dtype is the base's (or the first model's) unless `output_dtype` says otherwise. Tensors
// of integer or boolean dtype are copied unchanged when all models hold the same values, refused
// otherwise.
namespace detail {
// Runs `plan` from `source` into a new memory store, its tensors in the plan's order.
template <class Backend, class Source>
memory_store execute_into_memory(const merge_plan& plan, const Backend& backend, Source& source) {
  memory_store merged;
  std::vector<tensor_view> targets;
  for (const auto& tensor : plan.tensors) targets.push_back(merged.insert(tensor.name, tensor.output_dtype, tensor.dims));
  views_sink sink(plan, std::move(targets));
  execute(plan, backend, source, sink);
  return merged;
}
}  // namespace detail

template <class Backend, parameter_store Base, parameter_store Model, std::size_t Extent>
memory_store merge_stores(const merge_recipe& recipe, const Backend& backend, const Base* base,
                          std::span<const Model, Extent> models, std::optional<dtype> output_dtype = std::nullopt) {
  const merge_plan plan = plan_merge(recipe, base, models, {.output_dtype = output_dtype});
  stores_source source(base, models);
  return detail::execute_into_memory(plan, backend, source);
}

// mergekit's slices over stores (slice_plan.hpp): `inputs` are every model the slices name, by
// the indices the recipe uses; input i is "model i" in messages.
template <class Backend, parameter_store Model, std::size_t Extent>
memory_store merge_slices(const slice_recipe& recipe, const Backend& backend, std::span<const Model, Extent> inputs,
                          std::optional<dtype> output_dtype = std::nullopt) {
  std::vector<plan_input> described;
  for (std::size_t i = 0; i < inputs.size(); ++i) described.push_back(describe_input(inputs[i], "model " + std::to_string(i)));
  const merge_plan plan = plan_slices(recipe, described, {.output_dtype = output_dtype});
  stores_source source(static_cast<const Model*>(nullptr), inputs);
  return detail::execute_into_memory(plan, backend, source);
}

// mergekit's modules over stores (module_plan.hpp): `inputs` are every model the modules name, by
// the indices the recipe uses; input i is "model i" in messages.
template <class Backend, parameter_store Model, std::size_t Extent>
memory_store merge_modules(const module_recipe& recipe, const Backend& backend, std::span<const Model, Extent> inputs,
                           std::optional<dtype> output_dtype = std::nullopt) {
  std::vector<plan_input> described;
  for (std::size_t i = 0; i < inputs.size(); ++i) described.push_back(describe_input(inputs[i], "model " + std::to_string(i)));
  const merge_plan plan = plan_modules(recipe, described, {.output_dtype = output_dtype});
  stores_source source(static_cast<const Model*>(nullptr), inputs);
  return detail::execute_into_memory(plan, backend, source);
}

// Merges whole stores into an existing one, in place: a torch module's parameters, Eigen
// matrices, a file-backed store. `output` must hold every merged tensor with the same shape; its
// dtypes may differ for merged tensors (the merge computes in f32 and rounds once into them), not
// for copied buffers. Everything is checked before the first tensor is written. The output may be
// one of the models (same dtype) for linear and task arithmetic, whose output elements each read
// the same element of the inputs only; for other methods, merge into a separate store.
template <class Backend, parameter_store Base, parameter_store Model, std::size_t Extent,
          mutable_parameter_store Output>
void merge_stores_into(const merge_recipe& recipe, const Backend& backend, const Base* base,
                       std::span<const Model, Extent> models, Output& output) {
  const merge_plan plan = plan_merge(recipe, base, models);
  std::vector<tensor_view> targets;
  for (const auto& tensor : plan.tensors) {
    const auto target = output.find_mutable(tensor.name);
    if (!target || !(target->shape() == tensor.dims)) {
      detail::fail(target ? error_code::shape_mismatch : error_code::not_found, recipe.method, ": the output ",
                   target ? detail::concat("has shape ", target->shape(), " for") : std::string("has no"), " tensor ",
                   detail::quoted{tensor.name}, target ? detail::concat(", the models ", tensor.dims) : std::string());
    }
    if (!tensor.merged() && target->dtype() != tensor.output_dtype) {
      detail::fail(error_code::dtype_mismatch, recipe.method, ": tensor ", detail::quoted{tensor.name}, " is ",
                   tensor.output_dtype, " in the models but ", target->dtype(), " in the output");
    }
    if (tensor.merged()) detail::check_computable(*target, "the output of tensor '" + tensor.name + "'");
    targets.push_back(*target);
  }
  stores_source source(base, models);
  views_sink sink(plan, std::move(targets));
  execute(plan, backend, source, sink);
}

}  // namespace alloy
