"""Debiased and adaptive-bin ECE (segcal_lib.ece_estimators), the meter options that report them, the calibrated
stand-in sampler and the training-loss plateau test."""

import math

import numpy as np
import pytest
import torch

from segcal_lib.ece_estimators import adaptive_ece, debiased_ece, expected_abs_normal
from segcal_lib.metrics import CalibrationMeter
from segcal_lib.standin import sample_calibrated_labels


def _batch(seed, n=3, c=4, h=10, w=12, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, c, (n, h, w), generator=g)
    labels[:, 0] = 255
    return logits, labels


def test_expected_abs_normal_matches_sampling():
    g = torch.Generator().manual_seed(0)
    for mean, std in [(0.0, 1.0), (0.3, 0.1), (-0.05, 0.2), (0.2, 0.0)]:
        draws = mean + std * torch.randn(400_000, generator=g, dtype=torch.float64)
        got = expected_abs_normal(torch.tensor(mean), torch.tensor(std)).item()
        assert got == pytest.approx(draws.abs().mean().item(), abs=3e-3)


def test_fine_bins_reproduce_the_meters_image_eces_exactly():
    meter = CalibrationMeter(4, n_bins=10, estimators=("debiased", "adaptive"))
    for seed in range(2):
        meter.update(*_batch(seed))
    coarse = meter.extra.coarse()
    per_image = (coarse[:, 1] - coarse[:, 2]).abs().sum(1) / coarse[:, 0].sum(1)
    np.testing.assert_allclose(per_image.numpy(), meter.compute()["image_eces"], rtol=0, atol=1e-12)
    res = meter.compute()
    assert res["debiased_image_eces"].shape == res["adaptive_image_eces"].shape == (6,)


def test_debiased_ece_by_hand_for_one_bin():
    # One bin: 4 pixels, confidence sum 3.2 (mean 0.8), 2 right: gap -0.3, std sqrt(0.8 * 0.2 / 4) = 0.2.
    sums = torch.tensor([[4.0], [3.2], [2.0]], dtype=torch.float64)
    g, s = -0.3, 0.2
    folded = s * math.sqrt(2 / math.pi) * math.exp(-g * g / (2 * s * s)) + g * math.erf(g / (s * math.sqrt(2)))
    assert debiased_ece(sums).item() == pytest.approx(2 * 0.3 - folded, abs=1e-12)


def test_debiased_ece_removes_part_of_the_small_sample_bias_of_a_calibrated_model():
    logits, labels = _batch(1, n=40, c=5, h=8, w=8, scale=2.0)
    standin = sample_calibrated_labels(logits, seed=3, labels=labels)
    res = CalibrationMeter(5, estimators=("debiased",)).update(logits, standin).compute()
    assert res["image_ece"] > 0.1  # 56 pixels per image: the plug-in estimate is far from 0
    # A calibrated model: the correction lowers every image's ECE, but with ~6 pixels per bin only in part.
    assert (res["debiased_image_eces"] < res["image_eces"]).all()
    assert 0 < res["debiased_image_ece"] < 0.7 * res["image_ece"]


def test_debiased_ece_keeps_a_large_real_gap():
    # Every pixel says 0.9 (two classes), none is right: the gap 0.9 is far above the noise.
    probs = torch.zeros(1, 2, 50, 50, dtype=torch.float64)
    probs[:, 0], probs[:, 1] = 0.9, 0.1
    labels = torch.ones(1, 50, 50, dtype=torch.long)
    res = CalibrationMeter(2, inputs="probs", estimators=("debiased",)).update(probs, labels).compute()
    assert res["ece"] == pytest.approx(0.9)
    assert res["debiased_ece"] == pytest.approx(0.9, abs=1e-6)


def test_adaptive_ece_equals_equal_mass_bins_by_brute_force():
    # 100 pixels, each in its own sub-bin: the groups are exact quantile splits of 10 pixels each.
    rng = np.random.default_rng(0)
    conf = (rng.choice(np.arange(100, 1000), size=100, replace=False) + 0.5) / 1000
    hit = (rng.random(100) < conf).astype(float)
    order = np.argsort(conf)
    brute = sum(abs(conf[i].sum() - hit[i].sum()) for i in np.array_split(order, 10)) / 100
    probs = np.full((10, 100), 0.0)
    probs[0] = conf
    probs[1:] = (1 - conf) / 9
    labels = np.where(hit == 1, 0, 1)
    meter = CalibrationMeter(10, inputs="probs", estimators=("adaptive",))
    meter.update(torch.tensor(probs).view(1, 10, 10, 10), torch.tensor(labels).view(1, 10, 10))
    res = meter.compute()
    assert res["adaptive_ece"] == pytest.approx(brute, abs=1e-12)
    assert res["adaptive_image_ece"] == pytest.approx(brute, abs=1e-12)
    fine = meter.extra.sums[0]
    assert adaptive_ece(fine, 10).item() == pytest.approx(brute, abs=1e-12)


def test_merge_equals_one_pass_with_estimators():
    a, b, both = (CalibrationMeter(4, estimators=("debiased", "adaptive")) for _ in range(3))
    a.update(*_batch(0))
    b.update(*_batch(1))
    both.update(*_batch(0)).update(*_batch(1))
    ra, rb = a.merge(b).compute(), both.compute()
    for key in ("debiased_ece", "debiased_image_ece", "adaptive_ece", "adaptive_image_ece"):
        assert ra[key] == pytest.approx(rb[key], abs=1e-12)


def test_bad_estimator_options_raise():
    with pytest.raises(ValueError, match="estimators"):
        CalibrationMeter(3, estimators=("smooth",))
    with pytest.raises(ValueError, match="estimators"):
        CalibrationMeter(3, estimators="debiased")
    with pytest.raises(ValueError, match="fine_bins"):
        CalibrationMeter(3, estimators=("adaptive",), fine_bins=1005)
    with pytest.raises(ValueError, match="sums"):
        debiased_ece(torch.zeros(2, 10))


def test_standin_labels_follow_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).view(1, 4, 1, 1).expand(1, 4, 300, 300).contiguous()
    drawn = sample_calibrated_labels(logits, seed=0)
    freq = torch.bincount(drawn.flatten(), minlength=4).double() / drawn.numel()
    np.testing.assert_allclose(freq.numpy(), logits[0, :, 0, 0].double().softmax(0).numpy(), atol=4e-3)


def test_standin_is_seeded_and_keeps_ignore_pixels():
    logits, labels = _batch(0)
    a = sample_calibrated_labels(logits, seed=5, labels=labels)
    assert torch.equal(a, sample_calibrated_labels(logits, seed=5, labels=labels))
    assert not torch.equal(a, sample_calibrated_labels(logits, seed=6, labels=labels))
    assert torch.equal(a == 255, labels == 255)
    assert a[labels != 255].max() < 4
    with pytest.raises(ValueError, match="logits"):
        sample_calibrated_labels(logits[0], seed=0)
    with pytest.raises(ValueError, match="labels"):
        sample_calibrated_labels(logits, labels=labels[:1])


