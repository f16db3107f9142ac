"""Procedural street scenes and the named domain shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from segcal_lib.data import IGNORE_INDEX, SHIFTS, Sample, SyntheticScenes, apply_shift, render_scene
from segcal_lib.data.synthetic import (
    BICYCLIST,
    BUILDING,
    CAR,
    CLASS_NAMES,
    FENCE,
    NUM_CLASSES,
    PALETTE,
    PEDESTRIAN,
    POLE,
    ROAD,
    SIGN,
    SKY,
)

SIZE = (96, 128)
N_SCENES = 40


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """Labels (N, H, W) uint8 of the first train scenes (rendered once for the module)."""
    return np.stack([render_scene(i, "train", 0, SIZE)[1] for i in range(N_SCENES)])


# ----------------------------------------------------------------------------------------------------- determinism

def test_same_key_gives_identical_scene():
    a, b = SyntheticScenes("train", n=3), SyntheticScenes("train", n=3)
    for i in range(3):
        assert torch.equal(a[i].image, b[i].image) and torch.equal(a[i].label, b[i].label)
        assert a[i].name == b[i].name == f"synthetic/train/{i}"


@pytest.mark.parametrize("other", [dict(index=1), dict(seed=1), dict(split="val"), dict(split="test")])
def test_different_index_seed_or_split_gives_a_different_scene(other):
    key = dict(index=0, split="train", seed=0)
    img, lbl = render_scene(**key, size=SIZE)
    img2, lbl2 = render_scene(**{**key, **other}, size=SIZE)
    assert np.abs(img - img2).mean() > 0.02
    assert (lbl != lbl2).mean() > 0.05


def test_cal_is_an_alias_of_val():
    cal, val = SyntheticScenes("cal", n=2), SyntheticScenes("val", n=2)
    assert cal.split == "val"
    assert torch.equal(cal[1].image, val[1].image)


def test_layout_does_not_depend_on_resolution():
    _, small = render_scene(5, "train", 0, (96, 128))
    _, large = render_scene(5, "train", 0, (192, 256))
    down = large[::2, ::2]
    valid = (small != IGNORE_INDEX) & (down != IGNORE_INDEX)
    assert (small[valid] == down[valid]).mean() > 0.9


# ---------------------------------------------------------------------------------------------- types and ranges

def test_sample_types_shapes_and_ranges():
    s = SyntheticScenes("test", n=1, size=(64, 80))[0]
    assert isinstance(s, Sample)
    assert s.image.dtype == torch.float32 and s.image.shape == (3, 64, 80)
    assert s.label.dtype == torch.int64 and s.label.shape == (64, 80)
    assert 0 <= s.image.min() and s.image.max() <= 1
    values = set(s.label.unique().tolist())
    assert values <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}


def test_full_resolution_scene_renders():
    img, lbl = render_scene(0, "train", 0, (360, 480))
    assert img.shape == (3, 360, 480) and img.dtype == np.float32 and lbl.shape == (360, 480)


def test_batches_with_default_collate():
    ds = SyntheticScenes("train", n=2)
    batch = default_collate([ds[0], ds[1]])
    assert batch.image.shape == (2, 3, *SIZE) and batch.label.shape == (2, *SIZE)


def test_metadata_matches_camvid():
    ds = SyntheticScenes("train", n=1)
    assert ds.num_classes == 11 and len(ds.class_names) == 11 and ds.ignore_index == 255
    assert ds.class_names[:4] == ("Sky", "Building", "Pole", "Road") and ds.class_names[-1] == "Bicyclist"
    assert PALETTE.shape == (11, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE}) == 11


def test_n_defaults_from_the_profile(monkeypatch):
    monkeypatch.setenv("SEGCAL_PROFILE", "fast")
    assert (len(SyntheticScenes("train")), len(SyntheticScenes("val")), len(SyntheticScenes("test"))) == (192, 48, 48)


# -------------------------------------------------------------------------------------------------- scene content

def test_every_class_appears_and_big_classes_dominate(labels):
    counts = np.bincount(labels.ravel(), minlength=256)
    share = counts[:NUM_CLASSES] / counts.sum()
    missing = [CLASS_NAMES[c] for c in range(NUM_CLASSES) if counts[c] == 0]
    assert not missing, f"classes never drawn in {N_SCENES} scenes: {missing}"
    for big in (SKY, BUILDING, ROAD):
        assert share[big] > 0.1
    for rare in (POLE, SIGN, PEDESTRIAN, BICYCLIST):  # the small, rare classes real models struggle with
        assert share[rare] < 0.02


@pytest.mark.camvid
def test_object_class_frequencies_are_close_to_camvids(labels):
    # The object counts were set so the scenes are as cluttered as CamVid's training frames: a model then sees as many
    # poles, signs and people per image as on the real data. Within a factor of 1.6 of CamVid, class by class.
    from segcal_lib.data.datasets import CamVid, find_camvid

    root = find_camvid()
    if root is None:
        pytest.skip("CamVid not found (set SEGCAL_CAMVID)")
    real = np.zeros(256)
    for sample in CamVid(root, "train", size=SIZE):
        real += np.bincount(sample.label.numpy().ravel(), minlength=256)
    ours = np.bincount(labels.ravel(), minlength=256)
    for c in (POLE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST):
        ratio = (ours[c] / ours.sum()) / (real[c] / real.sum())
        assert 1 / 1.6 < ratio < 1.6, f"{CLASS_NAMES[c]}: {ratio:.2f} x CamVid's share"


def test_thin_objects_are_one_or_two_pixels_wide(labels):
    # Horizontal runs of Pole pixels: many poles are at most 2 pixels wide at 96x128.
    pole = labels == POLE
    starts = pole[..., 1:] & ~pole[..., :-1]
    thin = starts[..., :-2] & ~pole[..., 3:]  # a run starting at column j+1 that is over by column j+3
    assert thin.sum() > 50


def test_small_objects_are_small(labels):
    # All the signs (or all the people) of a typical scene together cover under 1% of it.
    per_scene = [(lbl == c).mean() for lbl in labels for c in (SIGN, PEDESTRIAN) if (lbl == c).any()]
    assert np.median(per_scene) < 0.01


def test_ignore_band_is_thin_and_on_boundaries(labels):
    ignore = labels == IGNORE_INDEX
    frac = ignore.mean(axis=(1, 2))
    assert (frac > 0).all() and 0.005 < frac.mean() < 0.1
    # Thin: few ignore pixels have all 8 neighbours ignored (only where many boundaries meet, e.g. bare tree crowns).
    core = ignore[:, 1:-1, 1:-1].copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            core &= ignore[:, 1 + dy:ignore.shape[1] - 1 + dy, 1 + dx:ignore.shape[2] - 1 + dx]
    assert core.sum() < 0.1 * ignore.sum()


def test_image_is_not_a_function_of_the_label_alone():
    # The same class has different appearances in different scenes (textures and lighting vary).
    means = []
    for i in range(6):
        img, lbl = render_scene(i, "train", 0, SIZE)
        means.append(img[:, lbl == ROAD].mean(axis=1))
    assert np.ptp(np.stack(means), axis=0).max() > 0.08


# ---------------------------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("kw", [dict(split="bogus"), dict(n=-1), dict(n=2.5), dict(size=(4, 4)), dict(size=96),
                                dict(seed=-1), dict(shift="rain", severity=1), dict(shift="fog", severity=6),
                                dict(severity=2)])
def test_bad_arguments_raise_value_error(kw):
    with pytest.raises(ValueError):
        SyntheticScenes(**{"n": 2, **kw})


def test_index_out_of_range_raises_index_error():
    ds = SyntheticScenes("train", n=2)
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(IndexError):
        ds[-1]


# --------------------------------------------------------------------------------------------------------- shifts

@pytest.fixture(scope="module")
def scene() -> torch.Tensor:
    return torch.from_numpy(render_scene(3, "val", 0, SIZE)[0])


def _luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[..., 0, :, :] + 0.587 * x[..., 1, :, :] + 0.114 * x[..., 2, :, :]


def _series(scene, name, stat):
    return [float(stat(apply_shift(scene, name, s, seed=1), scene)) for s in range(6)]


def _strictly_increasing(values):
    return all(b > a for a, b in zip(values, values[1:], strict=False))


def test_registry_names():
    assert {"dusk", "fog", "colour", "texture", "noise"} <= set(SHIFTS)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_shift_keeps_shape_dtype_range_and_is_deterministic(scene, name):
    out = SHIFTS[name](scene, severity=3, seed=4)
    assert out.shape == scene.shape and out.dtype == scene.dtype
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, apply_shift(scene, name, 3, seed=4))
    assert not torch.equal(out, scene)
    assert torch.equal(apply_shift(scene, name, 0), scene)
    batch = apply_shift(torch.stack([scene, scene]), name, 3, seed=4)
    assert batch.shape == (2, *scene.shape)


@pytest.mark.parametrize("name", ["dusk", "fog", "colour"])
def test_deterministic_shifts_act_per_image_in_a_batch(scene, name):
    other = torch.from_numpy(render_scene(4, "val", 0, SIZE)[0])
    batch = apply_shift(torch.stack([scene, other]), name, 2)
    assert torch.allclose(batch[1], apply_shift(other, name, 2), atol=1e-6)


def test_dusk_darkens_monotonically(scene):
    brightness = _series(scene, "dusk", lambda out, x: -_luma(out).mean())
    assert _strictly_increasing(brightness)
    out = apply_shift(scene, "dusk", 5)
    assert out[2].mean() / out[0].mean() > scene[2].mean() / scene[0].mean()  # bluish cast


def test_fog_lowers_contrast_monotonically_and_more_at_the_top(scene):
    assert _strictly_increasing(_series(scene, "fog", lambda out, x: -_luma(out).std()))
    # On a black image the output is the haze itself, A (1 - t): denser toward the top (far away).
    haze = apply_shift(torch.zeros(3, 32, 8), "fog", 3).mean(dim=(0, 2))
    assert (haze[:-1] > haze[1:]).all() and haze[-1] > 0


def test_colour_rotates_hue_monotonically_and_120_degrees_permutes_channels(scene):
    assert _strictly_increasing(_series(scene, "colour", lambda out, x: (out - x).abs().mean()))
    grey = torch.full((3, 4, 4), 0.4)
    assert torch.allclose(apply_shift(grey, "colour", 5), grey, atol=1e-5)
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(apply_shift(x, "colour", 4), x[[2, 0, 1]], atol=1e-5)


def test_texture_and_noise_grow_with_severity(scene):
    assert _strictly_increasing(_series(scene, "texture", lambda out, x: (out - x).abs().mean()))
    assert _strictly_increasing(_series(scene, "noise", lambda out, x: (out - x).std()))


def test_noise_depends_on_seed(scene):
    assert not torch.equal(apply_shift(scene, "noise", 2, seed=0), apply_shift(scene, "noise", 2, seed=1))


def test_shifted_dataset_keeps_labels_and_changes_images():
    plain = SyntheticScenes("test", n=2)
    foggy = SyntheticScenes("test", n=2, shift="fog", severity=3)
    for i in range(2):
        assert torch.equal(foggy[i].label, plain[i].label)
        assert not torch.equal(foggy[i].image, plain[i].image)
        assert torch.equal(foggy[i].image, apply_shift(plain[i].image, "fog", 3))
    assert foggy[0].name == "synthetic/test/0+fog3"


@pytest.mark.parametrize("args", [("rain", 1), ("fog", 6), ("fog", -1), ("fog", 2.0), ("fog", True)])
def test_shift_rejects_unknown_names_and_severities(scene, args):
    with pytest.raises(ValueError, match="shift|severity"):
        apply_shift(scene, *args)


@pytest.mark.parametrize("image", [torch.zeros(4, 8, 8), torch.zeros(8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8),
                                   torch.full((3, 8, 8), 1.5), np.zeros((3, 8, 8), np.float32)])
def test_shift_rejects_bad_images(image):
    with pytest.raises(ValueError, match="image"):
        apply_shift(image, "dusk", 1)
