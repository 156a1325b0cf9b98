// eager_loss: the folded loss operator and its backward joined by a C++ autograd node (what eager
// mode calls; compiled code calls `loss`, whose autograd formula dice_impls/fused/autograd.py registers).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace {

// Eager mode: `loss` and `loss_backward` joined by a C++ autograd node. Python's autograd.Function
// (or register_autograd's wrapper) costs a Python frame, an operator call from Python and its
// argument conversion per backward: ~40 us of a ~400 us 4x4x128x128 forward+backward
// (docs/performance.md). Both operators are called through the dispatcher, so fake and meta
// tensors (FakeTensorMode, make_fx) reach their fake kernels; with create_graph=True the backward's
// `loss_backward` goes through its registered autograd, which refuses double backward.
std::optional<std::vector<double>> optional_vector(const c10::IValue& value) {
  if (value.isNone()) return std::nullopt;
  return value.toDoubleVector();
}

std::optional<at::ArrayRef<double>> optional_ref(const std::optional<std::vector<double>>& values) {
  if (!values.has_value()) return std::nullopt;
  return at::ArrayRef<double>(*values);
}

using OptionalDoubles = std::optional<at::ArrayRef<double>>;

const auto& loss_operator() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dice_fused::loss", "").typed<
      std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t, bool,
                                                     std::optional<int64_t>, bool, bool, at::IntArrayRef,
                                                     at::ArrayRef<double>, OptionalDoubles, OptionalDoubles,
                                                     OptionalDoubles)>();
  return op;
}

const auto& loss_backward_operator() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dice_fused::loss_backward", "").typed<
      at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                 int64_t, bool, std::optional<int64_t>, at::IntArrayRef, at::ArrayRef<double>, OptionalDoubles,
                 OptionalDoubles, OptionalDoubles)>();
  return op;
}

class FoldedLossFunction : public torch::autograd::Function<FoldedLossFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels,
                            int64_t activation, bool squared, std::optional<int64_t> ignore_index, bool check_finite,
                            bool check_labels, at::IntArrayRef flags, at::ArrayRef<double> scalars,
                            OptionalDoubles weight, OptionalDoubles pixel_weight, OptionalDoubles norm_weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [value, saved, codes] = loss_operator().call(logits, labels, activation, squared, ignore_index, check_finite,
                                                      check_labels, flags, scalars, weight, pixel_weight, norm_weight);
    ctx->save_for_backward({logits, labels, saved, codes});
    auto& data = ctx->saved_data;
    data["activation"] = activation;
    data["squared"] = squared;
    data["ignore_index"] = ignore_index;
    data["flags"] = flags.vec();
    data["scalars"] = scalars.vec();
    data["weight"] = weight.has_value() ? c10::IValue(weight->vec()) : c10::IValue();
    data["pixel_weight"] = pixel_weight.has_value() ? c10::IValue(pixel_weight->vec()) : c10::IValue();
    data["norm_weight"] = norm_weight.has_value() ? c10::IValue(norm_weight->vec()) : c10::IValue();
    return value;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    const auto weight = optional_vector(data["weight"]), pixel_weight = optional_vector(data["pixel_weight"]),
               norm_weight = optional_vector(data["norm_weight"]);
    const auto gradient = [&] {
      return loss_backward_operator().call(
          grads[0], saved[0], saved[1], saved[2], saved[3], data["activation"].toInt(), data["squared"].toBool(),
          data["ignore_index"].toOptional<int64_t>(), data["flags"].toIntVector(), data["scalars"].toDoubleVector(),
          optional_ref(weight), optional_ref(pixel_weight), optional_ref(norm_weight));
    };
    at::Tensor grad;
    if (at::GradMode::is_enabled()) {
      grad = gradient();  // create_graph=True: through loss_backward's autograd, which refuses double backward
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;  // straight to the kernel: no Python autograd wrapper
      grad = gradient();
    }
    torch::autograd::variable_list out(12);  // one per forward argument; only the logits get one
    out[0] = grad;
    return out;
  }
};

}  // namespace

at::Tensor eager_loss(const at::Tensor& logits, const at::Tensor& labels, int64_t activation, bool squared,
                      std::optional<int64_t> ignore_index, bool check_finite, bool check_labels, at::IntArrayRef flags,
                      at::ArrayRef<double> scalars, std::optional<at::ArrayRef<double>> weight,
                      std::optional<at::ArrayRef<double>> pixel_weight,
                      std::optional<at::ArrayRef<double>> norm_weight) {
  return FoldedLossFunction::apply(logits, labels, activation, squared, ignore_index, check_finite, check_labels, flags,
                                   scalars, weight, pixel_weight, norm_weight);
}

TORCH_LIBRARY_IMPL(dice_fused, CompositeImplicitAutograd, m) { m.impl("eager_loss", &eager_loss); }
