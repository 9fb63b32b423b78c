"""Random weights and statistics for the parity tests against mmseg, chosen so that a wrong formula shows."""
import torch


def randomize(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "weight" in name else 0.2) + (1.0 if "bn" in name and "weight" in name else 0.0))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                b.fill_(7)
    return module


def randomize_model(model, generator_seed=0):
    """Random weights for a whole deep network that keep activations O(1) through its depth (fan-in scaled convs,
    residual-branch BN scales below 1), with BN statistics and affines far from the identity so a layer applied
    in the wrong order or with the wrong statistics changes the result. Every float parameter and buffer is set."""
    g = torch.Generator().manual_seed(generator_seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + (0.2 if name.endswith("bn3") else 0.6))
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(7)
    return model
