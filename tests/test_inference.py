"""Whole / sliding-window inference and multi-scale + flip testing: exact equivalences and invariants on toy models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from segcal_lib.data.base import Sample
from segcal_lib.inference import predict_dataset, predict_logits, window_starts
from segcal_lib.models import create_model

torch.set_num_threads(1)


class Pointwise(nn.Module):
    """A 1x1 conv: each output pixel depends on its input pixel only, so any tiling gives the whole-image result."""

    def __init__(self, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return self.conv(x)


class SymmetricConv(nn.Module):
    """3x3 convs whose kernels are mirror-symmetric left-right: the net commutes with horizontal flips."""

    def __init__(self, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, classes, 3, padding=1)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Ones(nn.Module):
    """Predicts logit 1 everywhere: a sliding-window average of it is 1 exactly where windows cover the pixel."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.ones(x.shape[0], 2, *x.shape[-2:])


class HalfRes(nn.Module):
    """Predicts at half resolution, like many segmentation heads before upsampling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x[..., ::2, ::2])


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 37, 53, generator=torch.Generator().manual_seed(1))


def test_window_starts_cover_and_end_at_the_border():
    for length, crop, stride in [(10, 4, 3), (37, 16, 11), (16, 16, 5), (100, 33, 33), (50, 7, 1)]:
        starts = window_starts(length, crop, stride)
        assert starts[0] == 0 and starts[-1] == length - crop
        assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:], strict=False))
    assert window_starts(10, 4, 3) == [0, 3, 6]
    with pytest.raises(ValueError, match="length"):
        window_starts(3, 4, 2)


def test_one_view_whole_equals_the_model(images):
    model = SymmetricConv().eval()
    with torch.no_grad():
        expected = model(images)
    out = predict_logits(model, images, scales=(1.0,), flip=False, batch_size=2)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out, expected)
    # One view: "probs" averaging leaves the logits as they are.
    torch.testing.assert_close(predict_logits(model, images, average="probs"), expected)


def test_slide_with_one_full_window_equals_whole(images):
    model = create_model("mobilenetv3_small_fpn", num_classes=5).eval()
    whole = predict_logits(model, images, mode="whole", batch_size=3)
    slide = predict_logits(model, images, mode="slide", crop_size=(37, 53), stride=(37, 53), batch_size=3)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("crop,stride", [(16, 11), ((20, 24), (7, 24)), (64, 40), (8, 8)])
def test_slide_equals_whole_for_a_pointwise_model(images, crop, stride):
    model = Pointwise()
    whole = predict_logits(model, images)
    slide = predict_logits(model, images, mode="slide", crop_size=crop, stride=stride, batch_size=5)
    torch.testing.assert_close(slide, whole)


def test_slide_with_small_stride_covers_every_pixel(images):
    out = predict_logits(Ones(), images, mode="slide", crop_size=16, stride=5, batch_size=7)
    assert out.shape == (3, 2, 37, 53)
    assert torch.equal(out, torch.ones_like(out))  # an uncovered pixel would be 0/0 = NaN


@pytest.mark.parametrize("kwargs", [
    dict(mode="whole"),
    dict(mode="slide", crop_size=16, stride=11),
    dict(mode="slide", crop_size=64),  # the crop is larger than the image: padded, then cropped back
    dict(mode="whole", scales=(0.5, 0.75, 1.25), flip=True),
    dict(mode="slide", crop_size=(24, 32), scales=(0.6, 1.5), flip=True, average="probs"),
])
def test_output_shape_for_odd_sizes(images, kwargs):
    out = predict_logits(SymmetricConv(classes=6), images, batch_size=4, **kwargs)
    assert out.shape == (3, 6, 37, 53) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.isfinite(out).all()


def test_flip_testing_is_a_no_op_for_a_flip_equivariant_model(images):
    model = SymmetricConv()
    plain = predict_logits(model, images)
    torch.testing.assert_close(predict_logits(model, images, flip=True), plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(predict_logits(model, images, flip=True, average="probs"), plain.log_softmax(1),
                               rtol=1e-4, atol=1e-4)


def test_multi_view_averaging_rules(images):
    model = Pointwise()
    with torch.no_grad():
        a = model(images)
        b = model(images.flip(-1)).flip(-1)
    torch.testing.assert_close(predict_logits(model, images, flip=True), (a + b) / 2)
    mean_probs = (a.softmax(1) + b.softmax(1)) / 2
    torch.testing.assert_close(predict_logits(model, images, flip=True, average="probs").softmax(1), mean_probs)


def test_low_resolution_outputs_are_upsampled(images):
    out = predict_logits(HalfRes(), images, mode="slide", crop_size=20, stride=10)
    assert out.shape == (3, 3, 37, 53)


def test_training_mode_is_restored(images):
    model = SymmetricConv().train()
    predict_logits(model, images)
    assert model.training


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="tiles"), "mode"),
    (dict(mode="slide"), "crop_size is required"),
    (dict(mode="slide", crop_size=8, stride=9), "stride"),
    (dict(mode="slide", crop_size=(8, 0)), "crop_size"),
    (dict(average="median"), "average"),
    (dict(scales=()), "scales"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_arguments_raise(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict_logits(Pointwise(), images, **kwargs)


def test_bad_images_raise():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        predict_logits(Pointwise(), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predict_logits(Pointwise(), torch.rand(1, 3, 8, 8) * 255)
    with pytest.raises(ValueError, match="float"):
        predict_logits(Pointwise(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


class Mixed(Dataset):
    """Five images, the fourth of a different size, to check that batches never mix sizes."""

    num_classes = 4

    def __len__(self):
        return 5

    def __getitem__(self, i):
        h, w = (12, 16) if i != 3 else (10, 10)
        g = torch.Generator().manual_seed(i)
        return Sample(torch.rand(3, h, w, generator=g), torch.randint(0, 4, (h, w), generator=g), f"img{i}")


def test_predict_dataset_batches_in_order():
    model = Pointwise()
    batches = list(predict_dataset(model, Mixed(), batch_size=2, progress=False))
    assert [names for _, _, names in batches] == [["img0", "img1"], ["img2"], ["img3"], ["img4"]]
    data = Mixed()
    for logits, labels, names in batches:
        assert logits.shape[0] == labels.shape[0] == len(names) and labels.dtype == torch.int64
        for j, name in enumerate(names):
            image, label, _ = data[int(name[3:])]
            torch.testing.assert_close(logits[j], predict_logits(model, image[None])[0])
            assert torch.equal(labels[j], label)
