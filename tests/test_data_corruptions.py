"""Every registered shift and corruption: deterministic by seed, shape and dtype kept, severity 0 the identity,
severity monotone in an image statistic; the corruptions against references computed another way; shifted data
sets of any reader."""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from segcal_lib.data import CORRUPTIONS, SHIFTS, ShiftedDataset, apply_shift, get_dataset, list_shifts, render_scene
from segcal_lib.data.corruptions import BLUR_SIGMA_224, BRIGHTNESS_SHIFT, CONTRAST_FACTOR, JPEG_QUALITY, NOISE_STD
from segcal_lib.data.shifts import image_seed, register_shift

SIZE = (48, 64)


@pytest.fixture(scope="module")
def scene() -> torch.Tensor:
    return torch.from_numpy(render_scene(5, "test", 0, SIZE)[0])


def _luma(x):
    return 0.299 * x[..., 0, :, :] + 0.587 * x[..., 1, :, :] + 0.114 * x[..., 2, :, :]


def _high_freq(x):
    """Energy of the discrete Laplacian: what blur removes."""
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return (lap**2).mean()


# name -> statistic of (shifted, clean) that must strictly increase with severity 0..5.
MONOTONE = {
    "dusk": lambda out, x: -_luma(out).mean(),                  # darker
    "fog": lambda out, x: -_luma(out).std(),                    # flatter
    "colour": lambda out, x: (out - x).abs().mean(),            # further hue rotation
    "texture": lambda out, x: (out - x).abs().mean(),
    "noise": lambda out, x: (out - x).std(),                    # noise variance against the clean image
    "blur": lambda out, x: -_high_freq(out),                    # less high-frequency energy
    "gaussian_noise": lambda out, x: (out - x).std(),
    "brightness": lambda out, x: out.mean(),                    # brighter
    "contrast": lambda out, x: -out.std(),                      # lower contrast
    "jpeg": lambda out, x: ((out - x) ** 2).mean(),             # larger compression error
}
RANDOM = {"texture", "noise", "gaussian_noise"}


def test_one_registry_of_both_kinds():
    assert list_shifts() == list(SHIFTS)
    assert list_shifts("corruption") == list(CORRUPTIONS) == ["blur", "gaussian_noise", "brightness", "contrast",
                                                              "jpeg"]
    assert set(list_shifts("shift")) == {"dusk", "fog", "colour", "texture", "noise"}
    assert set(MONOTONE) == set(SHIFTS)  # every registered transform is covered below
    with pytest.raises(ValueError, match="already registered"):
        register_shift("fog", lambda x, s, g: x, SHIFTS["fog"])
    with pytest.raises(ValueError, match="kind"):
        list_shifts("weather")


@pytest.mark.parametrize("name", list(MONOTONE))
def test_severity_is_monotone_in_an_image_statistic(scene, name):
    values = [float(MONOTONE[name](apply_shift(scene, name, s, seed=3), scene)) for s in range(6)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(MONOTONE))
def test_shape_dtype_range_identity_and_seed(scene, name, dtype):
    x = scene.to(dtype)
    batch = torch.stack([x, x.flip(-1)])
    for inp in (x, batch):
        out = apply_shift(inp, name, 4, seed=11)
        assert out.shape == inp.shape and out.dtype == dtype
        assert 0 <= out.min() and out.max() <= 1 and not torch.equal(out, inp)
        assert torch.equal(out, apply_shift(inp, name, 4, seed=11))      # deterministic by seed
        zero = apply_shift(inp, name, 0, seed=11)
        assert torch.equal(zero, inp) and zero is not inp                 # severity 0: an unchanged copy
    assert torch.equal(SHIFTS[name](x, severity=2, seed=5), apply_shift(x, name, 2, seed=5))
    other_seed = apply_shift(x, name, 4, seed=12)
    assert torch.equal(other_seed, apply_shift(x, name, 4, seed=11)) != (name in RANDOM)


@pytest.mark.parametrize("name", ["blur", "brightness", "contrast", "jpeg"])
def test_deterministic_corruptions_act_per_image(scene, name):
    other = torch.from_numpy(render_scene(6, "test", 0, SIZE)[0])
    batch = apply_shift(torch.stack([scene, other]), name, 3)
    torch.testing.assert_close(batch[1], apply_shift(other, name, 3), atol=1e-6, rtol=0)


def _blur_reference(x: np.ndarray, sigma: float) -> np.ndarray:
    """Brute-force 2-D Gaussian in float64 with clamped (replicated) borders."""
    r = max(1, math.ceil(3 * sigma))
    offsets = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (offsets / sigma) ** 2)
    k2 = np.outer(k, k) / k.sum() ** 2
    c, h, w = x.shape
    out = np.zeros_like(x)
    for i, dy in enumerate(offsets):
        rows = np.clip(np.arange(h) + dy, 0, h - 1)
        for j, dx in enumerate(offsets):
            cols = np.clip(np.arange(w) + dx, 0, w - 1)
            out += k2[i, j] * x[:, rows][:, :, cols]
    return out


@pytest.mark.parametrize("severity", [1, 5])
def test_blur_matches_a_brute_force_gaussian(scene, severity):
    x = scene.double()
    ref = _blur_reference(x.numpy(), BLUR_SIGMA_224[severity - 1] * SIZE[0] / 224)
    np.testing.assert_allclose(apply_shift(x, "blur", severity).numpy(), ref, atol=1e-12)
    flat = torch.full((3, 10, 12), 0.3, dtype=torch.float64)
    torch.testing.assert_close(apply_shift(flat, "blur", 5), flat)


def test_brightness_is_hsv_value_plus_c():
    x = torch.rand(3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[:, 0, 0] = 0.0  # black: no hue, becomes grey
    for severity in (1, 4):
        c = BRIGHTNESS_SHIFT[severity - 1]
        ref = np.empty(x.shape)
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                h, s, v = colorsys.rgb_to_hsv(*x[:, i, j].tolist())
                ref[:, i, j] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
        np.testing.assert_allclose(apply_shift(x, "brightness", severity).numpy(), ref, atol=1e-12)


def test_contrast_and_noise_follow_their_tables():
    x = torch.rand(2, 3, 8, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(apply_shift(x, "contrast", 3), mean + (x - mean) * CONTRAST_FACTOR[2])
    grey = torch.full((3, 200, 200), 0.5)  # far from the clipping edges at severity 1
    assert (apply_shift(grey, "gaussian_noise", 1) - grey).std().item() == pytest.approx(NOISE_STD[0], rel=0.02)


def test_jpeg_is_an_8bit_pillow_round_trip(scene):
    out = apply_shift(scene, "jpeg", 2)
    codes = out * 255
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
    buf = io.BytesIO()
    Image.fromarray((scene.permute(1, 2, 0).double().numpy() * 255).round().astype(np.uint8)).save(
        buf, format="JPEG", quality=JPEG_QUALITY[1])
    ref = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(out.numpy(), ref)


@pytest.mark.parametrize("args", [("snow", 1), ("blur", 6), ("jpeg", -1), ("contrast", 2.0)])
def test_bad_names_and_severities_are_rejected(scene, args):
    with pytest.raises(ValueError, match="shift|severity"):
        apply_shift(scene, *args)


# ------------------------------------------------------------------------------------------------ shifted data sets

@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for sub in ("img", "lbl"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "img" / f"f{i}.png")
        Image.fromarray(rng.integers(0, 3, (12, 16), dtype=np.uint8)).save(tmp_path / "lbl" / f"f{i}.png")
    return dict(image_dir=str(tmp_path / "img"), label_dir=str(tmp_path / "lbl"), num_classes=3)


def test_any_reader_takes_a_shift_by_name(folder):
    plain = get_dataset("folder", "all", **folder)
    blurred = get_dataset("folder", "all", shift="gaussian_noise", severity=2, **folder)
    assert isinstance(blurred, ShiftedDataset) and len(blurred) == len(plain) and blurred.num_classes == 3
    for i in range(len(plain)):
        a, b = plain[i], blurred[i]
        assert torch.equal(a.label, b.label) and b.name == f"{a.name}+gaussian_noise2"
        assert torch.equal(b.image, apply_shift(a.image, "gaussian_noise", 2, seed=image_seed(0, i)))
    assert not torch.equal(blurred[0].image - plain[0].image, blurred[1].image - plain[1].image)  # per-image noise
    assert torch.equal(get_dataset("folder", "all", shift=None, severity=0, **folder)[0].image, plain[0].image)
    with pytest.raises(ValueError, match="needs a shift"):
        get_dataset("folder", "all", severity=2, **folder)
    with pytest.raises(ValueError, match="unknown shift"):
        get_dataset("folder", "all", shift="snow", severity=2, **folder)


def test_synthetic_scenes_take_corruptions_too():
    ds = get_dataset("synthetic", "test", n=2, size=SIZE, shift="contrast", severity=5)
    plain = get_dataset("synthetic", "test", n=2, size=SIZE)
    assert torch.equal(ds[1].image, apply_shift(plain[1].image, "contrast", 5))
    assert ds[1].name == "synthetic/test/1+contrast5"


@pytest.mark.parametrize("name", list(MONOTONE))
def test_shifted_dataset_is_deterministic_by_seed_in_any_reading_order(name):
    plain = get_dataset("synthetic", "test", n=3, size=SIZE)
    a, b = ShiftedDataset(plain, name, 3, seed=4), ShiftedDataset(plain, name, 3, seed=4)
    forward = [a[i] for i in range(3)]
    backward = [b[i] for i in reversed(range(3))][::-1]
    for i, (x, y) in enumerate(zip(forward, backward, strict=True)):
        assert torch.equal(x.image, y.image) and torch.equal(x.label, plain[i].label)
        assert x.image.shape == plain[i].image.shape and x.image.dtype == plain[i].image.dtype
    other = ShiftedDataset(plain, name, 3, seed=5)[0].image
    assert torch.equal(other, forward[0].image) != (name in RANDOM)
    assert torch.equal(ShiftedDataset(plain, name, 0, seed=4)[1].image, plain[1].image)  # severity 0: identity
