"""segcal_lib.analysis: per-image sums against the meters, bootstrap intervals, the plateau detector, the trend rule,
the calibrated stand-in and the oracle against brute force, and the tidy frames of a (tiny) sweep."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from segcal_lib import analysis
from segcal_lib.analysis.correctness import _sample_calibrated_labels
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter
from segcal_lib.stats import bootstrap_ci, paired_bootstrap_ci


def _batch(n=6, c=4, h=9, w=11, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g) * scale
    labels = torch.randint(0, c, (n, h, w), generator=g)
    labels[:, 0, :3] = 255  # some ignore pixels
    return logits, labels


def _ece_float64(conf, correct, n_bins=10):
    """ECE by a loop over bins in float64 (the meters' [l, r) bins, the last one closed)."""
    conf, correct = np.asarray(conf, np.float64), np.asarray(correct, np.float64)
    k = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return sum(abs(conf[k == b].sum() - correct[k == b].sum()) for b in range(n_bins)) / conf.size


# ------------------------------------------------------------------------------------------------------ image sums
def test_image_sums_metrics_equal_the_meters():
    logits, labels = _batch()
    sums = analysis.ImageSums.from_batches([(logits[:4], labels[:4]), (logits[4:], labels[4:])], 4)
    ref = CalibrationMeter(4).update(logits, labels).compute()
    seg = SegmentationMeter(4).update(logits, labels).compute()
    m = sums.metrics()
    assert sums.n_images == 6 and sums.num_classes == 4
    assert m["pooled_ece"] == pytest.approx(ref["ece"], abs=1e-12)
    assert m["image_ece"] == pytest.approx(ref["image_ece"], abs=1e-12)
    assert m["nll"] == pytest.approx(ref["nll"], abs=1e-12)
    assert m["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert m["confidence"] == pytest.approx(ref["confidence"], abs=1e-12)
    assert m["over_confidence"] == pytest.approx(ref["confidence"] - ref["accuracy"], abs=1e-12)
    assert m["miou"] == pytest.approx(seg["miou"], abs=1e-12)
    np.testing.assert_allclose(sums.image_eces(), ref["image_eces"], atol=1e-12)


def test_weighted_metrics_equal_metrics_of_duplicated_images():
    logits, labels = _batch(n=5, seed=1)
    sums = analysis.ImageSums.from_batches([(logits, labels)], 4)
    counts = np.array([2, 0, 1, 3, 1])
    idx = np.repeat(np.arange(5), counts)
    dup = analysis.ImageSums.from_batches([(logits[idx], labels[idx])], 4).metrics()
    weighted = sums.metrics(counts[None].astype(float))
    for name in analysis.METRICS:
        assert weighted[name][0] == pytest.approx(dup[name], abs=1e-12), name


def test_masked_sums_count_only_the_mask():
    logits, labels = _batch(seed=2)
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:3] = True  # images 3..5 hold no counted pixel
    sums = analysis.ImageSums.from_batches([(logits, labels, mask)], 4)
    ref = CalibrationMeter(4).update(logits[:3], labels[:3]).compute()
    assert np.isnan(sums.image_eces()[3:]).all()
    assert sums.metrics()["image_ece"] == pytest.approx(ref["image_ece"], abs=1e-12)
    assert sums.pixels().sum() == ref["n_pixels"]


def test_bootstrap_weights_are_the_resamples_of_stats():
    w = analysis.bootstrap_weights(7, n_boot=50, seed=4)
    assert w.shape == (50, 7) and (w.sum(1) == 7).all()
    idx = np.random.default_rng(4).integers(0, 7, size=(50, 7))
    np.testing.assert_array_equal(w, np.stack([np.bincount(r, minlength=7) for r in idx]))
    with pytest.raises(ValueError, match="n must be"):
        analysis.bootstrap_weights(0)


def test_metric_rows_are_tidy_with_intervals():
    logits, labels = _batch(n=8, seed=3)
    sums = analysis.ImageSums.from_batches([(logits, labels)], 4)
    rows = pd.DataFrame(analysis.metric_rows(sums, {"model": "m", "seed": 0}, seed=5))
    assert list(rows["metric"]) == list(analysis.METRICS)
    assert {"model", "seed", "metric", "value", "ci_low", "ci_high", "n_images"} <= set(rows.columns)
    assert (rows["ci_low"] <= rows["value"] + 1e-12).all() and (rows["value"] <= rows["ci_high"] + 1e-12).all()
    image = rows.set_index("metric").loc["image_ece"]
    assert (image["value"], image["ci_low"], image["ci_high"]) == pytest.approx(bootstrap_ci(sums.image_eces(), seed=5))
    with pytest.raises(ValueError, match="subset"):
        analysis.metric_rows(sums, {}, metrics=["ece"])


def test_paired_stat_equals_paired_bootstrap_for_image_ece():
    logits, labels = _batch(n=8, seed=6)
    a = analysis.ImageSums.from_batches([(logits, labels)], 4)
    b = analysis.ImageSums.from_batches([(logits / 2, labels)], 4)
    ours = analysis.paired_stat(a, b, "image_ece", seed=2)
    assert ours == pytest.approx(paired_bootstrap_ci(a.image_eces(), b.image_eces(), seed=2))
    with pytest.raises(ValueError, match="same images"):
        analysis.paired_stat(a, analysis.ImageSums.from_batches([(logits[:3], labels[:3])], 4), "nll")


# ----------------------------------------------------------------------------------------------------- convergence
def test_plateau_step_of_an_exponential_matches_the_closed_form():
    t = np.arange(2000)
    a, b, tau, tol = 0.5, 2.0, 150.0, 0.05
    loss = a + b * np.exp(-t / tau)
    # Monotone curve: flat from s on iff loss[-1] >= (1 - tol) * loss[s].
    expected = math.ceil(-tau * math.log(((a + b * math.exp(-t[-1] / tau)) / (1 - tol) - a) / b))
    assert analysis.plateau_step(loss, window=1, rel_tol=tol) == expected
    assert analysis.plateaued(loss, window=1, rel_tol=tol)


def test_plateau_detector_rejects_a_falling_curve_and_accepts_a_noisy_flat_one():
    t = np.arange(1000)
    assert not analysis.plateaued(2.0 - 1.5 * t / 1000)  # still falling linearly at the end
    noisy = 1.0 + np.random.default_rng(0).normal(0, 0.1, size=1000)
    assert analysis.plateau_step(noisy) < 100 and analysis.plateaued(noisy)
    with pytest.raises(ValueError, match="finite"):
        analysis.plateau_step([1.0, math.nan])
    with pytest.raises(ValueError, match="window"):
        analysis.smooth([1.0, 2.0], window=5)


def test_a_power_law_loss_never_plateaus_whatever_the_run_length():
    # L = t^-0.3 loses 1 - 0.8^0.3 = 6.5% over the last fifth of any run: the relative test cannot pass by training
    # longer, while the same curve above a floor does.
    for n in (1_000, 10_000, 100_000):
        t = np.arange(1, n + 1)
        assert not analysis.plateaued(t ** -0.3)
        assert analysis.plateaued(0.2 + t ** -0.3)


def test_late_improvement_compares_the_best_values_before_and_after_the_cut():
    steps = np.arange(0, 101, 10)  # cut at 80: steps 90 and 100 are late
    values = np.array([2.0, 1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.52, 0.5, 0.495, 0.51])
    assert analysis.late_improvement(steps, values) == pytest.approx((0.5 - 0.495) / 0.5)
    assert analysis.stopped_improving(steps, values)  # 1% < 2%
    assert not analysis.stopped_improving(steps, values, rel_tol=0.005)
    falling = 1.0 / (1.0 + steps)
    assert analysis.late_improvement(steps, falling) == pytest.approx((1 / 81 - 1 / 101) / (1 / 81))
    assert not analysis.stopped_improving(steps, falling)
    u_shaped = 1.0 + (steps - 40.0) ** 2 / 1e4  # best at step 40, worse afterwards
    assert analysis.late_improvement(steps, u_shaped) < 0 and analysis.stopped_improving(steps, u_shaped)


@pytest.mark.parametrize(("steps", "values", "kw", "match"), [
    ([0, 1, 2], [1.0, 2.0], {}, "match values"),
    ([0, 2, 1], [1.0, 2.0, 3.0], {}, "increasing"),
    ([0, 1, 2], [1.0, 2.0, 3.0], {"fraction": 1.0}, "fraction"),
])
def test_late_improvement_rejects_bad_curves(steps, values, kw, match):
    with pytest.raises(ValueError, match=match):
        analysis.late_improvement(steps, values, **kw)


def test_smooth_is_a_trailing_moving_mean():
    x = np.array([4.0, 2.0, 6.0, 0.0, 8.0])
    np.testing.assert_allclose(analysis.smooth(x, 2), [4.0, 3.0, 4.0, 3.0, 4.0])


def test_curve_frame_rows():
    frame = analysis.curve_frame({("a", 0): [3.0, 2.0, 1.0, 1.0], ("b", 1): [1.0, 1.0]}, ("model", "seed"))
    assert len(frame) == 6 and list(frame.columns[:2]) == ["model", "seed"]
    assert frame.groupby("model")["fraction"].max().tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------------------- trends
def _trend_frame(values_by_seed, xs=(1, 10, 100), half=0.001):
    rows = [{"x": x, "seed": s, "value": v, "ci_low": v - half, "ci_high": v + half}
            for s, values in enumerate(values_by_seed) for x, v in zip(xs, values, strict=True)]
    return pd.DataFrame(rows)


def test_trend_claims_a_direction_only_above_the_noise():
    up = analysis.trend(_trend_frame([[0.10, 0.12, 0.14], [0.11, 0.13, 0.15]]), "x")
    assert up.direction == "increases" and up.effect == pytest.approx(0.04)
    assert up.seed_spread == pytest.approx(0.01) and "increases with x" in up.sentence
    noisy = analysis.trend(_trend_frame([[0.10, 0.12, 0.14], [0.11, 0.13, 0.15]], half=0.05), "x")
    assert noisy.direction == "within noise" and "within noise" in noisy.sentence
    disagree = analysis.trend(_trend_frame([[0.10, 0.20, 0.30], [0.30, 0.29, 0.28]]), "x")
    assert disagree.direction == "within noise" and "disagree" in disagree.sentence
    with pytest.raises(ValueError, match="positive"):
        analysis.trend(_trend_frame([[0.1, 0.2, 0.3]], xs=(0, 1, 2)), "x")


def test_trend_table_and_length_sentence_report_each_length_s_verdict():
    up = analysis.trend(_trend_frame([[0.10, 0.12, 0.14], [0.11, 0.13, 0.15]]), "x", x_label="size")
    flat = analysis.trend(_trend_frame([[0.10, 0.12, 0.14], [0.11, 0.13, 0.15]], half=0.05), "x", x_label="size")
    table = analysis.trend_table({"half": flat, "full": up}, "steps")
    assert list(table.index) == ["half", "full"] and table.index.name == "steps"
    assert list(table["direction"]) == ["within noise", "increases"]
    assert table.loc["full", "effect"] == pytest.approx(0.04) and table.loc["half", "noise"] == pytest.approx(0.05)
    nested = analysis.trend_table({("ECE", "half"): flat, ("ECE", "full"): up}, ["metric", "steps"])
    assert nested.index.names == ["metric", "steps"] and nested.loc[("ECE", "full"), "direction"] == "increases"
    text = analysis.length_sentence({"half": flat, "full": up})
    assert text.startswith("The verdict on value depends on how long")
    assert "(half: within noise, +0.0400 against noise 0.0500; full: increases, +0.0400 against noise 0.0100)." in text
    assert "is the same at every training length" in analysis.length_sentence({"a": up, "b": up})
    with pytest.raises(ValueError, match="two or more"):
        analysis.length_sentence({"a": up})
    with pytest.raises(ValueError, match="at least one"):
        analysis.trend_table({})


def test_compare_lengths_applies_the_trend_test_to_each_length():
    half = _trend_frame([[0.10, 0.12, 0.14], [0.11, 0.13, 0.15]], half=0.05).assign(metric="image_ece")
    full = _trend_frame([[0.10, 0.12, 0.14], [0.11, 0.13, 0.15]]).assign(metric="image_ece")
    lengths = analysis.compare_lengths({"half": half, "full": full}, "x", ["image_ece"], x_label="size")
    assert not lengths.same("image_ece")
    assert lengths.sentence("image_ece") == analysis.length_sentence(
        {"half": analysis.trend(half, "x", "image_ece", x_label="size"),
         "full": analysis.trend(full, "x", "image_ece", x_label="size")})
    assert list(lengths.table.index) == [("image-wise ECE", "half"), ("image-wise ECE", "full")]
    assert list(lengths.table["direction"]) == ["within noise", "increases"]
    with pytest.raises(ValueError, match="two or more"):
        analysis.compare_lengths({"full": full}, "x", ["image_ece"])


def test_scaled_settings_scale_every_budget_and_name_other_runs():
    s = analysis.factor_settings("fast")
    half = s.scaled(0.5)
    for dataset in ("synthetic", "camvid"):
        for (model, crop), _ in s.steps:
            assert half.iters(model, crop, dataset) == max(2, round(s.iters(model, crop, dataset) / 2))
    assert s.scaled(1e-9).iters(s.base_model, s.capacity_crop) == 2
    with pytest.raises(ValueError, match="positive"):
        s.scaled(0)
    from segcal_lib import pipeline
    from segcal_lib.analysis.factors import _overrides, factor_profile
    from segcal_lib.models import config_key

    def key(settings):
        kw = _overrides("synthetic", s.base_model, s.capacity_crop, 0, settings)
        return config_key(pipeline.train_config("synthetic", factor_profile("fast", settings), **kw))

    assert key(half) != key(s)  # a run of its own in the cache, not the longer run's entry


def test_difference_needs_every_seed_and_the_spread():
    assert analysis.difference([(-0.01, -0.015, -0.005), (-0.012, -0.02, -0.004)], "ECE", "a", "b").direction == "lower"
    assert analysis.difference([(-0.01, -0.015, 0.001), (-0.012, -0.02, -0.004)], "ECE", "a", "b").direction \
        == "within noise"
    assert analysis.difference([(0.001, 0.0005, 0.002), (0.02, 0.01, 0.03)], "ECE", "a", "b").direction \
        == "within noise"  # mean 0.0105 < spread 0.019


# ---------------------------------------------------------------------------------------------- stand-in and oracle
def test_stand_in_labels_follow_the_softmax():
    logits = torch.tensor([2.0, 0.0, -1.0, 1.0]).view(1, 4, 1, 1).expand(1, 4, 200, 250).contiguous()
    labels = torch.zeros(1, 200, 250, dtype=torch.long)
    labels[0, :10] = 255
    y = _sample_calibrated_labels(logits, labels, torch.Generator().manual_seed(0))
    assert (y[0, :10] == 255).all()
    freq = torch.bincount(y[0, 10:].flatten(), minlength=4).double() / y[0, 10:].numel()
    p = torch.softmax(logits[0, :, 0, 0].double(), 0)
    n = y[0, 10:].numel()
    assert torch.allclose(freq, p, atol=5 * math.sqrt(0.25 / n))  # five standard errors
    again = _sample_calibrated_labels(logits, labels, torch.Generator().manual_seed(0))
    assert torch.equal(y, again)


def test_oracle_against_brute_force():
    logits, labels = _batch(n=3, c=5, seed=7)
    out = analysis.oracle_logits(logits, labels)
    assert torch.equal(out.argmax(1), logits.argmax(1))
    p = torch.softmax(logits.double(), 1).numpy()
    y = labels.numpy()
    valid = y != 255
    pred = p.argmax(1)
    wrong = valid & (pred != y)
    conf = np.where(wrong, 1 / 5, p.max(1))
    expected = _ece_float64(conf[valid], (pred == y)[valid])
    got = CalibrationMeter(5).update(out, labels).compute()["ece"]
    assert got == pytest.approx(expected, abs=1e-7)
    # Restricted to a mask, only the mispredicted pixels inside it change.
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :4] = True
    part = analysis.oracle_logits(logits, labels, mask=mask)
    assert torch.equal(part[:, :, 4:], logits[:, :, 4:])
    with pytest.raises(ValueError, match="temperature"):
        analysis.oracle_logits(logits, labels, temperature=0)


def test_correctness_sums_subsets():
    logits, labels = _batch(n=6, c=4, h=16, w=16, seed=8, scale=2.0)
    sums = analysis.correctness_sums([(logits[:3], labels[:3]), (logits[3:], labels[3:])], 4, seed=1)
    assert {k[0] for k in sums} == {"model", "stand-in", "oracle"}
    for who in ("model", "stand-in"):
        right, wrong = sums[(who, "correct")].metrics(), sums[(who, "mispredicted")].metrics()
        # Accuracy is 0 on mispredicted pixels and 1 on correct ones: the subset ECE is fixed by the confidences.
        assert wrong["pooled_ece"] == pytest.approx(wrong["confidence"], abs=1e-12)
        assert right["pooled_ece"] == pytest.approx(1 - right["confidence"], abs=1e-12)
        parts = sums[(who, "correct")].pixels() + sums[(who, "mispredicted")].pixels()
        np.testing.assert_array_equal(parts, sums[(who, "all")].pixels())
        edge = sums[(who, "boundary")].pixels() + sums[(who, "interior")].pixels()
        np.testing.assert_array_equal(edge, sums[(who, "all")].pixels())
    model_all = sums[("model", "all")].metrics()["pooled_ece"]
    assert sums[("oracle", "all")].metrics()["pooled_ece"] < model_all
    ref = CalibrationMeter(4).update(logits, labels).compute()
    assert model_all == pytest.approx(ref["ece"], abs=1e-12)


# ----------------------------------------------------------------------------------------------------------- sweeps
def test_factor_settings_check_shared_points():
    s = analysis.factor_settings("fast")
    assert s.iters(s.base_model, s.capacity_crop) > 0
    with pytest.raises(ValueError, match="step budget"):
        s.iters("resnet50_fpn", 7)
    with pytest.raises(ValueError, match="shared"):
        analysis.factor_settings("fast", crop_sizes=(24, 36))


def test_factor_settings_take_a_data_set_s_own_step_budgets():
    s = analysis.factor_settings("fast")
    own = tuple((point, 7 * iters) for point, iters in s.steps)
    t = analysis.factor_settings("fast", dataset_steps=(("camvid", own),))
    for (model, crop), iters in s.steps:
        assert t.iters(model, crop, "camvid") == 7 * iters
        assert t.iters(model, crop, "synthetic") == t.iters(model, crop) == iters  # unnamed data sets: ``steps``
    mine = analysis.factor_settings("fast", steps=own)  # new budgets replace every table unless both are given
    assert mine.iters(s.base_model, s.capacity_crop, "camvid") == 7 * s.iters(s.base_model, s.capacity_crop)
    with pytest.raises(ValueError, match="on 'camvid'"):  # a table must hold every point of both sweeps
        analysis.factor_settings("fast", dataset_steps=(("camvid", own[1:]),))
    # the sweeps train with the data set's budget: the configuration they build says so
    model, crop = s.base_model, s.capacity_crop
    assert analysis.factors._overrides("camvid", model, crop, 0, t)["iters"] == 7 * s.iters(model, crop)
    assert analysis.factors._overrides("synthetic", model, crop, 0, t)["iters"] == s.iters(model, crop)


@pytest.mark.parametrize("profile", ["fast", "full"])
def test_the_gpu_script_s_dry_run_settings_are_valid_in_every_profile(profile, monkeypatch):
    # benchmarks/run_chapters.py --dry-run inserts this cell into chapters 4-7; a settings table it leaves behind (a
    # data set's own step budgets at crops it has remapped) would fail there, on the CPU check or the GPU run.
    import importlib.util
    from pathlib import Path

    from segcal_lib import config
    from segcal_lib.analysis import factors

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "run_chapters.py"
    spec = importlib.util.spec_from_file_location("run_chapters", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("SEGCAL_PROFILE", profile)
    monkeypatch.setitem(config.PROFILES, profile, config.PROFILES[profile])  # restored after the test
    monkeypatch.setitem(factors.FACTOR_SETTINGS, profile, factors.FACTOR_SETTINGS[profile])
    exec(module.DRY_RUN_CELL, {})
    tiny = factors.FACTOR_SETTINGS[profile]
    assert tiny.image_size == (32, 40) and max(tiny.crop_sizes) <= 40
    for dataset in ("synthetic", "camvid"):
        for model in tiny.capacity_models:
            assert tiny.iters(model, tiny.capacity_crop, dataset) == 20


def test_training_sentence_counts_both_tests_and_sorts_the_misses():
    runs = pd.DataFrame({"model": ["a", "b", "c", "d"], "crop_size": [24, 24, 48, 48], "seed": [0, 1, 0, 1],
                         "plateaued": [True, False, False, True], "stopped_improving": [True, True, False, False],
                         "trained_now": [False, True, False, False], "train_time_s": [1.0, 12.4, 3.0, 4.0]})
    text = analysis.training_sentence(runs)
    assert text.startswith("2 of 4 training runs plateaued") and "in 2 of 4 the validation loss" in text
    fitting, learning = text.split("had stopped improving: ")[1], text.split("when the run ended: ")[1]
    assert fitting.startswith("b at crop 24 (seed 1);") and learning.startswith("c at crop 48 (seed 0).")
    assert text.endswith("This run trained 1 of them in 12 s and loaded 3 from the cache.")
    done = analysis.training_sentence(runs.assign(plateaued=True, trained_now=False))
    assert "falling" not in done and "both tests" not in done and done.endswith("All 4 came from the cache.")


@pytest.mark.slow
def test_tiny_capacity_sweep_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCAL_CACHE", str(tmp_path))
    from segcal_lib.config import get_profile

    profile = get_profile("fast", n_train=4, n_test=3)
    settings = analysis.factor_settings(
        "fast", image_size=(32, 40), batch_size=2, seeds=(0, 1), capacity_crop=32, crop_sizes=(32,),
        capacity_models=("resnet10t_eighth_fpn", "convnext_d8_fpn"), base_model="resnet10t_eighth_fpn",
        steps=((("resnet10t_eighth_fpn", 32), 3), (("convnext_d8_fpn", 32), 3)))
    sweep = analysis.capacity_sweep("synthetic", profile, settings=settings)
    assert len(sweep.metrics) == 2 * 2 * len(analysis.METRICS)
    assert sweep.metrics.groupby(["model", "seed", "split", "metric"]).size().eq(1).all()
    assert {"ci_low", "ci_high", "params", "family"} <= set(sweep.metrics.columns)
    assert sweep.models["trained_now"].all() and len(sweep.models) == 4
    assert set(sweep.curves["model"]) == {"resnet10t_eighth_fpn", "convnext_d8_fpn"}
    again = analysis.capacity_sweep("synthetic", profile, settings=settings)
    assert not again.models["trained_now"].any()  # the second call loads every model from the cache
    pd.testing.assert_frame_equal(again.metrics, sweep.metrics)


@pytest.mark.slow
def test_tiny_crop_sweep_protocol_only_is_the_diagonal_of_the_full_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCAL_CACHE", str(tmp_path))
    from segcal_lib.config import get_profile

    profile = get_profile("fast", n_train=4, n_test=3)
    settings = analysis.factor_settings(
        "fast", image_size=(32, 40), batch_size=2, seeds=(0,), capacity_crop=32, crop_sizes=(24, 32),
        capacity_models=("resnet10t_eighth_fpn",), base_model="resnet10t_eighth_fpn",
        steps=((("resnet10t_eighth_fpn", 24), 3), (("resnet10t_eighth_fpn", 32), 3)))
    full = analysis.crop_sweep("synthetic", profile, settings=settings)
    grid = full.metrics.groupby(["train_crop", "test", "test_crop"]).size()
    assert len(grid) == 2 * 3  # two windows and whole images for each of two training crops
    diagonal = analysis.crop_sweep("synthetic", profile, settings=settings, tests="protocol")
    assert diagonal.metrics["protocol"].all() and not diagonal.models["trained_now"].any()
    expected = full.metrics[full.metrics["protocol"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(diagonal.metrics.reset_index(drop=True), expected)
    with pytest.raises(ValueError, match="'all' or 'protocol'"):
        analysis.crop_sweep("synthetic", profile, settings=settings, tests="diagonal")


def test_capacity_ladder_models_grow_and_run_at_their_crops():
    from segcal_lib.models import count_parameters, create_model, get_model_config

    s = analysis.factor_settings("fast")
    counts = [count_parameters(create_model(m, 11)) for m in s.capacity_models]
    assert counts == sorted(counts) and counts[-1] / counts[0] >= 20
    assert len({get_model_config(m).family for m in s.capacity_models}) >= 2
    eighth, quarter = create_model("resnet10t_eighth_fpn", 11), create_model("resnet10t_quarter_fpn", 11)
    assert quarter.backbone.feature_info.channels() == [2 * c for c in eighth.backbone.feature_info.channels()]
    with torch.no_grad():  # every (model, crop) of the settings, at its training crop
        for (model, crop), _ in s.steps:
            out = create_model(model, 5).eval()(torch.rand(1, 3, crop, crop))
            assert out.shape == (1, 5, crop, crop), model


# ------------------------------------------------------------------------------------------------- training length
def test_training_length_table_matches_the_meters_on_each_length(monkeypatch, tmp_path):
    from segcal_lib import pipeline
    from segcal_lib.config import get_profile
    from segcal_lib.metrics import CalibrationMeter, SegmentationMeter

    monkeypatch.setenv("SEGCAL_CACHE", str(tmp_path / "cache"))
    tiny = get_profile("fast", image_size=(32, 48), n_train=4, n_val=2, n_test=2, crop_size=32, train_iters=4,
                       batch_size=2, model="mobilenetv3_small_fpn")
    table = analysis.training_length_table("synthetic", tiny, fractions=(0.5, 1.0), progress=False)
    assert list(table.index) == [2, 4]
    for steps, row in table.iterrows():
        model, cfg = pipeline.get_model("synthetic", tiny, progress=False, iters=steps)
        store = pipeline.get_logits(model, cfg, "test", tiny, progress=False)
        seg, cal = SegmentationMeter(store.num_classes), CalibrationMeter(store.num_classes, classwise=False)
        for logits, labels in store.iter_batches(2):
            seg.update(logits, labels)
            cal.update(logits, labels)
        seg, cal = seg.compute(), cal.compute()
        assert row["test_miou"] == pytest.approx(seg["miou"], abs=1e-9)
        assert row["test_over_confidence"] == pytest.approx(cal["confidence"] - cal["accuracy"], abs=1e-9)
        assert row["test_ece_low"] <= row["test_ece"] <= row["test_ece_high"]
        assert row["final_loss"] == pytest.approx(analysis.smooth(model.train_meta["history"]["loss"])[-1])
    shown = analysis.format_training_length(table)
    assert list(shown.columns) == [2, 4] and shown.loc["training loss plateaued"].isin(["yes", "no"]).all()
    with pytest.raises(ValueError, match="fractions"):
        analysis.training_length_table("synthetic", tiny, fractions=(0.0, 1.0))
