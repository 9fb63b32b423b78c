// Host-side helpers of the split-attention launchers, one home for every backend: the shape of x read as
// (B, R*C, P), the accumulation dtype, the optional scale/shift as accumulation-typed tensors, and their data
// pointers. The CPU kernels (ops/cpu/splat_kernel.cpp) and the CUDA launchers (ops/cuda/splat_kernel.cu) both use
// these.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <type_traits>

#include "ops/splat_math.h"

namespace resnest_fast {

// x of shape (B, R*C, H, W) as B samples of R*C rows of P = H*W positions.
struct Shape {
  int64_t B, R, C, P;
  RF_HOST_DEVICE int64_t RC() const { return R * C; }
};

inline Shape shape_of(const at::Tensor& x, int64_t radix) {
  return {x.size(0), radix, x.size(1) / radix, x.size(2) * x.size(3)};
}

template <typename acc_t>
constexpr at::ScalarType acc_scalar_type() {
  return std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
}

// scale/shift (or any per-channel parameter) in the accumulation dtype, contiguous; undefined when absent.
template <typename acc_t>
at::Tensor params_as_acc(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->to(acc_scalar_type<acc_t>()).contiguous() : at::Tensor();
}

template <typename acc_t>
const acc_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

template <typename acc_t>
acc_t* mutable_ptr_or_null(at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

// Every tensor argument of a kernel of `backend` must live on that backend's device type.
inline void check_device_type(const char* name, const at::Tensor& t, at::DeviceType type, const char* backend) {
  TORCH_CHECK(t.device().type() == type, "resnest_fast: ", name, " must be a ", backend, " tensor for the ",
              backend, " kernels, got a tensor on ", t.device());
}

}  // namespace resnest_fast
