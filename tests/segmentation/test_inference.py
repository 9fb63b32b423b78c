"""One image through mmseg's test pipeline (resnest_fast.segmentation.inference): mmseg's TTA (softmax averaged
over the original image's ratios x flips) against expectations written out here, and single-scale logits brought
back to the original resolution."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnest_fast.segmentation.inference import predict_scores, tta_size


class Probe(nn.Module):
    """A stand-in segmenter: inference() returns `fn(x)` and records the input sizes it saw."""

    def __init__(self, fn, num_classes):
        super().__init__()
        self.fn, self.num_classes, self.align_corners = fn, num_classes, False
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen = []

    def inference(self, x, mode=None, crop_size=None, stride=None):
        self.seen.append((tuple(x.shape[2:]), x.clone()))
        return self.fn(x)


def _ramp(x):
    """Two classes: logit 0 grows from left to right across the input, logit 1 is 1."""
    w = x.shape[3]
    ramp = torch.linspace(-3.0, 3.0, w).view(1, 1, 1, w).expand(x.shape[0], 1, x.shape[2], w)
    return torch.cat([ramp, torch.ones_like(ramp)], dim=1)


def test_flip_tta_flips_back_and_averages_probabilities():
    img = np.random.default_rng(0).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    probe = Probe(_ramp, 2)
    scores = predict_scores(probe, img, tta_ratios=(1.0,), flip=True)
    # the second pass saw the flipped image
    assert torch.equal(probe.seen[1][1], probe.seen[0][1].flip(-1))
    ramp = torch.linspace(-3.0, 3.0, 8)
    p_plain = torch.softmax(torch.stack([ramp, torch.ones(8)]), 0)  # (2, 8)
    p_flipped = p_plain.flip(-1)  # the flipped input's ramp, flipped back
    expected = ((p_plain + p_flipped) / 2)[:, None, :].expand(2, 5, 8)
    torch.testing.assert_close(scores, expected)
    # averaging the logits instead would give (0, 1) everywhere, i.e. probabilities (0.27, 0.73) at every pixel
    assert scores[0, 0, 0] == pytest.approx((torch.sigmoid(torch.tensor(-4.0)) + torch.sigmoid(torch.tensor(2.0))) / 2)
    assert float(scores[0].max() - scores[0].min()) > 0.1


def test_multi_scale_tta_resizes_the_original_and_scores_at_its_size():
    img = np.random.default_rng(1).integers(0, 256, (10, 15, 3), dtype=np.uint8)
    # constant logits that depend on the input height: (3, 0, 0) for small inputs, (0, 2, 1) otherwise
    small = torch.tensor([3.0, 0.0, 0.0])
    big = torch.tensor([0.0, 2.0, 1.0])

    def by_size(x):
        v = small if x.shape[2] < 10 else big
        return v.view(1, 3, 1, 1).expand(x.shape[0], 3, x.shape[2], x.shape[3]).clone()

    probe = Probe(by_size, 3)
    scores = predict_scores(probe, img, scale=(999, 999), tta_ratios=(0.5, 1.25), flip=True)
    # mmcv: 15x10 by 0.5 -> target (8, 5) -> imrescale to (8, 5); by 1.25 -> (19, 13) ("+0.5" rounding)
    assert [s for s, _ in probe.seen] == [(5, 8), (5, 8), (13, 19), (13, 19)]
    assert tta_size(15, 10, 0.5) == (8, 5) and tta_size(2048, 1024, 0.75) == (1536, 768)
    expected = (torch.softmax(small, 0) + torch.softmax(big, 0)) / 2
    assert scores.shape == (3, 10, 15)
    torch.testing.assert_close(scores, expected.view(3, 1, 1).expand(3, 10, 15))
    assert scores.argmax(0).unique().tolist() == [0]  # probabilities: 0.52 vs 0.38; mean logits would pick class 1


def test_single_scale_logits_come_back_to_the_original_size():
    img = np.random.default_rng(2).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    probe = Probe(_ramp, 2)
    scores = predict_scores(probe, img, scale=(10, 6))  # fits 20x12 into long 10 / short 6: 10x6
    assert probe.seen[0][0] == (6, 10) and scores.shape == (2, 12, 20)
    expected = F.interpolate(_ramp(torch.zeros(1, 3, 6, 10)), size=(12, 20), mode="bilinear", align_corners=False)[0]
    assert not torch.equal(expected[0, 0], _ramp(torch.zeros(1, 3, 12, 20))[0, 0, 0])  # resized, not re-computed
    torch.testing.assert_close(scores, expected)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predict_scores(probe, img.astype(np.float32))


def test_a_model_in_train_mode_predicts_in_eval_mode_and_is_left_as_it_was():
    """predict / inference / segment_image are inference: on a model left in train mode (mid-training, or never
    put in eval) they used the batch statistics and overwrote the running ones, and a single image failed on the
    split attention's batch-of-one check. They run in eval mode, as the model in eval mode would, and leave every
    module's flag and buffer as they were."""
    import copy

    from resnest_fast.segmentation import build_segmentor, segment_image
    from resnest_fast.testing.small_models import small_model_cfg
    from tests.parity import randomize_model

    model = randomize_model(build_segmentor(small_model_cfg("pspnet"))).train()
    model.backbone.layer1.eval()  # mixed flags (frozen stages, norm_eval) must survive too
    reference = copy.deepcopy(model).eval()
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    img = torch.rand(2, 3, 40, 56) * 255
    rgb = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    with torch.no_grad():
        want_logits = reference(img)
    assert torch.equal(model.predict(img), reference.predict(img))
    torch.testing.assert_close(model.inference(img, mode="slide", crop_size=32, stride=24),
                               reference.inference(img, mode="slide", crop_size=32, stride=24))
    torch.testing.assert_close(model.inference(img), want_logits)
    np.testing.assert_array_equal(segment_image(model, rgb), segment_image(reference, rgb))
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "a running statistic changed"
