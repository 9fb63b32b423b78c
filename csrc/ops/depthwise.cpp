// Schema of the dilated depthwise 3x3 convolution that optimize_for_inference uses on CPU for DeepLabV3+'s
// separable ASPP (CPU kernel: ops/cpu/depthwise_kernel.cpp; reference and public function:
// resnest_fast/ops/depthwise.py; fake kernel: resnest_fast/ops/registrations.py).
//
// depthwise_conv3x3: relu?(conv2d(x, w, bias, stride 1, padding dilation, dilation, groups C))
//   x (B, C, H, W) float32 or float64, any layout; weight (C, 1, 3, 3); bias (C,) or None; returns (B, C, H, W)
//   channels_last.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(resnest_fast, m) {
  m.def("depthwise_conv3x3(Tensor x, Tensor weight, Tensor? bias, int dilation, bool relu) -> Tensor");
}
