// CPU kernel of the dilated depthwise 3x3 convolution (schema: ops/depthwise.cpp).
//
// Why: ATen and oneDNN ran DeepLabV3+'s dilated depthwise convs (2048 channels, dilation 12-36) 5-40x slower than
// the memory traffic they need, and channels_last input (what the optimized model keeps) had to be copied to NCHW
// and back around them. Here, in channels_last, every output row is written once: for each output position the
// contributing taps are found from the bounds (taps that fall in the padding are skipped, not multiplied by
// zeros), and the channels, contiguous in memory, are the vectorised inner loop. The output row (C floats per
// position) stays in L1 while the taps add into it; the three input rows a row reads stay in L2.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "ops/cpu/cpu_utils.h"

namespace resnest_fast {
namespace {

void check_depthwise_conv3x3(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                             int64_t dilation) {
  const char* op = "resnest_fast: depthwise_conv3x3: ";
  TORCH_CHECK(x.dim() == 4, op, "x must be 4-D (B, C, H, W), got ", x.dim(), "-D of shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              "x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(dilation >= 1, op, "dilation must be >= 1, got ", dilation);
  const int64_t C = x.size(1);
  TORCH_CHECK(w.dim() == 4 && w.size(0) == C && w.size(1) == 1 && w.size(2) == 3 && w.size(3) == 3 &&
                  w.scalar_type() == x.scalar_type() && w.device() == x.device(),
              op, "weight must be (", C, ", 1, 3, 3) of x's dtype (", x.scalar_type(), ") on ", x.device(), ", got ",
              w.scalar_type(), " ", w.sizes(), " on ", w.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == C && bias->scalar_type() == x.scalar_type() &&
                    bias->device() == x.device(),
                op, "bias must be (", C, ",) of x's dtype on ", x.device(), ", got ", bias->scalar_type(), " ",
                bias->sizes(), " on ", bias->device());
  }
}

template <typename T>
void depthwise_rows(const T* x, const T* taps, const T* bias, bool relu, int64_t B, int64_t H, int64_t W, int64_t C,
                    int64_t d, T* y) {
  // rows (b, h) are the work items: each writes its own output row
  parallel_items(0, B * H, 1, [&](int64_t begin, int64_t end) RF_ALWAYS_INLINE {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, h = row % H;
      for (int64_t w = 0; w < W; ++w) {
        T* out = y + ((b * H + h) * W + w) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) out[c] = bias ? bias[c] : T(0);
        for (int i = 0; i < 3; ++i) {
          const int64_t hi = h + (i - 1) * d;
          if (hi < 0 || hi >= H) continue;
          for (int j = 0; j < 3; ++j) {
            const int64_t wj = w + (j - 1) * d;
            if (wj < 0 || wj >= W) continue;
            const T* in = x + ((b * H + hi) * W + wj) * C;
            const T* k = taps + (i * 3 + j) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) out[c] += in[c] * k[c];
          }
        }
        if (relu) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) out[c] = out[c] < T(0) ? T(0) : out[c];  // NaN stays NaN, as torch.relu
        }
      }
    }
  });
}

at::Tensor depthwise_conv3x3_cpu(const at::Tensor& x_in, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, int64_t dilation, bool relu) {
  check_depthwise_conv3x3(x_in, weight, bias, dilation);
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  at::Tensor y = at::empty({B, C, H, W}, x_in.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  prefer_huge_pages(y);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  // (3, 3, C): the nine taps of every channel, each tap's channels contiguous like x's
  const at::Tensor taps = weight.reshape({C, 9}).t().contiguous();
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise_conv3x3_cpu", [&] {
    depthwise_rows<scalar_t>(x.data_ptr<scalar_t>(), taps.data_ptr<scalar_t>(),
                             bias_c.defined() ? bias_c.data_ptr<scalar_t>() : nullptr, relu, B, H, W, C, dilation,
                             y.data_ptr<scalar_t>());
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(resnest_fast, CPU, m) {
  m.impl("depthwise_conv3x3", &depthwise_conv3x3_cpu);
}

}  // namespace resnest_fast
