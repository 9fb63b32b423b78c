// Input validation shared by the CPU and CUDA kernels: every message names the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <type_traits>

#include "ops/splat_math.h"

namespace resnest_fast {

// scale_name and shift_name: what the messages call the pair (the fused backward checks coef_a, coef_b with it too).
inline void check_splat_common(const at::Tensor& x, const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& shift, int64_t radix,
                               const char* scale_name = "scale", const char* shift_name = "shift") {
  TORCH_CHECK(x.dim() == 4, "resnest_fast: x must be 4-D (B, radix*C, H, W), got ", x.dim(), "-D of shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "resnest_fast: x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(radix >= 1 && radix <= kMaxRadix, "resnest_fast: radix must be in [1, ", kMaxRadix, "], got ",
              radix);
  TORCH_CHECK(x.size(1) % radix == 0, "resnest_fast: x.shape[1] (", x.size(1), ") must be divisible by radix (",
              radix, ")");
  TORCH_CHECK(scale.has_value() == shift.has_value(),
              "resnest_fast: ", scale_name, " and ", shift_name,
              " must be given together (both tensors or both None)");
  if (scale.has_value()) {
    for (const auto& pair : {std::make_pair(scale_name, &*scale), std::make_pair(shift_name, &*shift)}) {
      const at::Tensor& t = *pair.second;
      TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), "resnest_fast: ", pair.first,
                  " must have shape (radix*C,) = (", x.size(1), ",), got ", t.sizes());
      TORCH_CHECK(t.device() == x.device(), "resnest_fast: ", pair.first, " is on ", t.device(),
                  " but x is on ", x.device());
      TORCH_CHECK(t.scalar_type() == x.scalar_type() || t.scalar_type() == at::kFloat, "resnest_fast: ",
                  pair.first, " must have x's dtype (", x.scalar_type(), ") or float32, got ", t.scalar_type());
    }
    TORCH_CHECK(scale->scalar_type() == shift->scalar_type(), "resnest_fast: ", scale_name, " (",
                scale->scalar_type(), ") and ", shift_name, " (", shift->scalar_type(), ") must have the same dtype");
  }
}

inline void check_splat_logits(const at::Tensor& x, const at::Tensor& logits, int64_t radix, int64_t groups) {
  TORCH_CHECK(groups >= 1, "resnest_fast: groups must be >= 1, got ", groups);
  TORCH_CHECK(x.size(1) % (radix * groups) == 0, "resnest_fast: x.shape[1] (", x.size(1),
              ") must be divisible by radix*groups (", radix * groups, ")");
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == x.size(0) && logits.size(1) == x.size(1),
              "resnest_fast: logits must have shape (B, radix*C) = (", x.size(0), ", ", x.size(1), "), got ",
              logits.sizes());
  TORCH_CHECK(logits.device() == x.device(), "resnest_fast: logits is on ", logits.device(), " but x is on ",
              x.device());
  TORCH_CHECK(logits.scalar_type() == x.scalar_type(), "resnest_fast: logits must have x's dtype (",
              x.scalar_type(), "), got ", logits.scalar_type());
}

inline void check_same_shape(const char* name, const at::Tensor& t, at::IntArrayRef expected,
                             const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == expected, "resnest_fast: ", name, " must have shape ", expected, ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), "resnest_fast: ", name, " is on ", t.device(), " but x is on ",
              x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "resnest_fast: ", name, " must have x's dtype (",
              x.scalar_type(), "), got ", t.scalar_type());
}

// The kernels read x in one of two dense layouts: NCHW-contiguous, or channels_last. Anything else is made
// NCHW-contiguous first. resnest_fast/op_rules.py (kernel_layout) spells the same rule for the fake kernels, the
// references and the Triton launchers, so shapes and strides agree.
inline bool splat_is_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat splat_layout(const at::Tensor& x) {
  return splat_is_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Calls f(std::integral_constant<bool, affine>, std::integral_constant<bool, relu>): the kernels take these
// options as template parameters so their inner loops have no branches.
template <typename F>
void dispatch_flags(bool affine, bool relu, F&& f) {
  if (affine) {
    if (relu) f(std::true_type{}, std::true_type{});
    else f(std::true_type{}, std::false_type{});
  } else {
    if (relu) f(std::false_type{}, std::true_type{});
    else f(std::false_type{}, std::false_type{});
  }
}

}  // namespace resnest_fast
