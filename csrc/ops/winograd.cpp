// Schema of the Winograd F(2x2, 3x3) convolution that optimize_for_inference uses for the big 3x3 convolutions
// on CPU (tiling and maths: ops/winograd_geometry.h; CPU kernel: ops/cpu/winograd_kernel.cpp; weight transform and
// pure-PyTorch reference: resnest_fast/ops/winograd.py; fake kernel: resnest_fast/ops/registrations.py).
// F(2x2, 3x3) computes a 3x3 convolution with 16 multiplications per 2x2 outputs and channel pair instead of 36
// (2.25x fewer), with transform coefficients 0, +-1 and +-1/2 only, so its fp32 error stays at the direct
// convolution's level.
//
// winograd_conv3x3: relu?(conv2d(x, w, stride 1, padding dilation, dilation, groups) + bias + other)
//   x (B, C, H, W) float32; u = G w G^T as (groups*16, C/groups, K/groups); bias (K,) or None; other
//   (B, K, H, W) or None; returns (B, K, H, W) channels_last.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(resnest_fast, m) {
  m.def(
      "winograd_conv3x3(Tensor x, Tensor u, Tensor? bias, Tensor? other, int dilation, int groups, bool relu) "
      "-> Tensor");
}
