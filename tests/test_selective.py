"""Selective scaling: the scaling rule, the selector, its quality measures, composition, saving, and evaluation."""

import itertools
import math

import numpy as np
import pytest
import torch

from segcal_lib.calibrators import NotFittedError, make_calibrator
from segcal_lib.calibrators.selective import (
    SelectiveScaling,
    apply_selective_scaling,
    auroc,
    detection_quality,
    fit_two_temperatures,
    selector_quality,
)
from segcal_lib.calibrators.selective_eval import (
    OracleSelective,
    estimate_selective_gain,
    evaluate_calibrators,
    selector_detection,
)
from segcal_lib.calibrators.temperature import TemperatureScaling, fit_inverse_temperature
from segcal_lib.logit_store import LogitStore
from segcal_lib.metrics import CalibrationMeter

FAST = {"steps": 150, "checks": 6, "lr": 3e-2, "progress": False, "device": "cpu"}


def _tell_data(n=6, c=4, hw=32, p_wrong=0.3, seed=0):
    """Over-confident logits whose mispredictions carry a tell: the true class's logit is raised on them.

    Every pixel predicts class k with a margin; on a share ``p_wrong`` of pixels the label is (k + 1) % C and that
    class's logit is raised by 2, which a selector can read from the log-probabilities (and temperature scaling
    cannot use).
    """
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, c, (n, hw, hw), generator=g)
    z = torch.randn(n, c, hw, hw, generator=g) * 0.3
    z.scatter_add_(1, k[:, None], torch.full((n, 1, hw, hw), 4.0))
    wrong = torch.rand(n, hw, hw, generator=g) < p_wrong
    other = (k + 1) % c
    z.scatter_add_(1, other[:, None], 2.0 * wrong[:, None].float())
    return z, torch.where(wrong, other, k)


def _uniform_data(n=4, c=5, hw=24, t=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, hw, hw, generator=g) * 4
    probs = (z / t).softmax(1).permute(0, 2, 3, 1).reshape(-1, c)
    return z, torch.multinomial(probs, 1, generator=g).view(n, hw, hw)


# ------------------------------------------------------------------------------------------------ scaling rule
def test_oracle_flags_with_infinite_t_mis_make_exactly_the_mispredicted_pixels_uniform():
    z, y = _uniform_data()
    wrong = z.argmax(1) != y
    p = apply_selective_scaling(z, wrong, t_mis=math.inf).softmax(1)
    assert torch.allclose(p.permute(0, 2, 3, 1)[wrong], torch.full((int(wrong.sum()), 5), 0.2), atol=0, rtol=0)
    assert torch.equal(p.permute(0, 2, 3, 1)[~wrong], z.softmax(1).permute(0, 2, 3, 1)[~wrong])
    # The paper's 1e10 is uniform up to float32 rounding, and keeps the argmax.
    big = apply_selective_scaling(z, wrong)
    assert torch.allclose(big.softmax(1).permute(0, 2, 3, 1)[wrong], torch.tensor(0.2), atol=1e-6)
    assert torch.equal(big.argmax(1), z.argmax(1))


def test_soft_rule_interpolates_the_inverse_temperature_and_hard_rule_thresholds():
    z = torch.randn(1, 3, 2, 2)
    q = torch.tensor([[[0.0, 0.25], [0.5, 1.0]]])
    soft = apply_selective_scaling(z, q, t_mis=4.0, t_cor=1.0, soft=True)
    beta = 0.25 * q + 1.0 * (1 - q)
    assert torch.allclose(soft, z * beta[:, None])
    hard = apply_selective_scaling(z, q, t_mis=4.0, t_cor=2.0, threshold=0.3)
    beta = torch.where(q > 0.3, 0.25, 0.5)
    assert torch.allclose(hard, z * beta[:, None])
    with pytest.raises(ValueError, match="mis_score must have shape"):
        apply_selective_scaling(z, q[0])
    with pytest.raises(ValueError, match="t_mis must be > 0"):
        apply_selective_scaling(z, q, t_mis=0)


# ------------------------------------------------------------------------------------------------ quality measures
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_from_ranks_equals_the_brute_force_pair_count(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (300,), generator=g).float() / 5  # many ties
    pos = torch.rand(300, generator=g) < 0.3 + 0.4 * scores
    sp, sn = scores[pos][:, None].double(), scores[~pos][None].double()
    brute = float(((sp > sn).double() + 0.5 * (sp == sn).double()).mean())
    assert auroc(scores, pos) == pytest.approx(brute, abs=1e-12)
    assert auroc(scores, ~pos) == pytest.approx(1 - brute, abs=1e-12)
    assert math.isnan(auroc(scores, torch.zeros(300, dtype=torch.bool)))


def test_detection_quality_counts():
    q = torch.tensor([0.9, 0.8, 0.2, 0.6, 0.1])
    m = torch.tensor([True, False, True, True, False])
    res = detection_quality(q, m)
    # flagged: 0, 1, 3; true positives 0, 3.
    assert res["precision"] == pytest.approx(2 / 3) and res["recall"] == pytest.approx(2 / 3)
    assert res["accuracy"] == pytest.approx(3 / 5) and res["flagged_share"] == pytest.approx(3 / 5)
    assert res["auroc"] == pytest.approx(4 / 6)


def test_selector_quality_of_scores_equals_float64_counts_without_ignore_pixels():
    z, y = _uniform_data(n=2, c=4, hw=12, t=3.0, seed=5)
    y[0, :2] = 255
    q = torch.rand(y.shape, generator=torch.Generator().manual_seed(7))
    res = selector_quality(z, y, q, threshold=0.6)
    zn, yn, qn = z.double().numpy(), y.numpy(), q.double().numpy()
    valid = yn != 255
    wrong, score = (zn.argmax(1) != yn)[valid], qn[valid]
    flag = score > 0.6
    pairs = score[wrong][:, None] - score[~wrong][None, :]
    assert res["n_pixels"] == valid.sum()
    assert res["accuracy"] == pytest.approx((flag == wrong).mean(), abs=1e-12)
    assert res["precision"] == pytest.approx((flag & wrong).sum() / flag.sum(), abs=1e-12)
    assert res["recall"] == pytest.approx((flag & wrong).sum() / wrong.sum(), abs=1e-12)
    assert res["auroc"] == pytest.approx((pairs > 0).mean() + 0.5 * (pairs == 0).mean(), abs=1e-12)
    flags_only = selector_quality(z, y, q > 0.6)
    assert flags_only["precision"] == res["precision"] and flags_only["recall"] == res["recall"]
    with pytest.raises(ValueError, match="selector scores must have shape"):
        selector_quality(z, y, q[:, :5])
    with pytest.raises(ValueError, match="selector must be"):
        selector_quality(z, y, "mlp")
    with pytest.raises(ValueError, match="labels must have shape"):
        selector_quality(z, y[:, :5], q)


def test_selector_quality_of_a_calibrator_judges_its_base_and_uses_its_threshold():
    z, y = _tell_data(n=3, hw=16)
    cal = make_calibrator("selective", base="ts", threshold=0.3, **FAST).fit(z, y)
    zt, yt = _tell_data(n=2, hw=16, seed=2)
    got = selector_quality(zt, yt, cal)
    expect = selector_quality(cal.base(zt), yt, cal.mispredicted_proba(zt), threshold=0.3)
    assert got == expect
    assert got == selector_detection(cal, [(zt[:1], yt[:1]), (zt[1:], yt[1:])])


# ------------------------------------------------------------------------------------------------ temperatures
def test_two_temperatures_of_a_hard_selector_are_one_temperature_scaling_per_group():
    z, y = _uniform_data(n=3, t=1.7)
    x, yy = z.permute(0, 2, 3, 1).reshape(-1, 5), y.reshape(-1)
    q = (torch.arange(x.shape[0]) % 3 == 0).float()
    b_mis, b_cor = fit_two_temperatures(x, yy, q)
    flag = q > 0.5
    assert b_mis == pytest.approx(fit_inverse_temperature(x[flag], yy[flag]), rel=1e-7)
    assert b_cor == pytest.approx(fit_inverse_temperature(x[~flag], yy[~flag]), rel=1e-7)


def test_two_soft_temperatures_minimise_the_nll_on_a_grid():
    z, y = _uniform_data(n=2, hw=16, t=1.5)
    x, yy = z.permute(0, 2, 3, 1).reshape(-1, 5).double(), y.reshape(-1)
    q = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(3)).double()
    bm, bc = fit_two_temperatures(x, yy, q, soft=True)

    def nll(a, b):
        s = q * a + (1 - q) * b
        return float(torch.nn.functional.cross_entropy(s[:, None] * x, yy))

    best = nll(bm, bc)
    for da, db in itertools.product([-0.01, 0, 0.01], repeat=2):
        assert nll(bm + da, bc + db) >= best - 1e-12


# ------------------------------------------------------------------------------------------------ the calibrator
def test_registry_composes_with_any_base_by_name_or_instance():
    for base in ("ts", "identity", TemperatureScaling(progress=False)):
        cal = make_calibrator("selective", base=base)
        assert isinstance(cal, SelectiveScaling) and not cal.needs_images and cal.preserves_argmax
    with pytest.raises(ValueError, match="unknown calibrator"):
        make_calibrator("selective", base="nope")
    with pytest.raises(ValueError, match="selector must be"):
        make_calibrator("selective", selector="tree")
    with pytest.raises(ValueError, match="use_image"):
        make_calibrator("selective", use_image=True)
    with pytest.raises(ValueError, match="held_out"):
        make_calibrator("selective", held_out=1.0)
    with pytest.raises(ValueError, match="must not itself"):
        make_calibrator("selective", base=make_calibrator("selective"))
    with pytest.raises(NotFittedError):
        make_calibrator("selective")(torch.randn(1, 3, 4, 4))


def test_learned_selector_finds_the_tell_and_flagged_pixels_become_uniform():
    z, y = _tell_data()
    cal = make_calibrator("selective", base="identity", t_mis=math.inf, **FAST).fit(z, y)
    assert cal.selector_quality_["auroc"] > 0.99 and cal.selector_quality_["recall"] > 0.97
    zt, yt = _tell_data(n=2, seed=1)
    wrong = zt.argmax(1) != yt
    p = cal(zt).softmax(1).permute(0, 2, 3, 1)
    uniform = (p == 0.25).all(-1)
    assert (uniform == wrong).float().mean() > 0.98
    det = selector_detection(cal, [(zt, yt)])
    assert det["auroc"] > 0.99 and det["n_pixels"] == yt.numel()


@pytest.mark.parametrize("base", ["identity", "ts"])
def test_a_selector_that_flags_nothing_returns_the_base_output(base):
    z, _ = _uniform_data()
    y = z.argmax(1)  # every prediction is right: nothing to flag
    y[:, :3] = 255
    cal = make_calibrator("selective", base=base, **FAST).fit(z, y)
    assert cal.selector_quality_["flagged_share"] == 0
    assert torch.equal(cal(z), cal.base(z))


def test_ignore_pixels_never_reach_the_selector():
    z, y = _tell_data(n=3)
    y = y.clone()
    y[:, :10] = 255
    a = make_calibrator("selective", base="ts", **FAST).fit(z, y)
    z2 = z.clone()
    z2[:, :, :10] = torch.randn_like(z2[:, :, :10]) * 30
    b = make_calibrator("selective", base="ts", **FAST).fit(z2, y)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.selector_quality_["n_pixels"] == round(0.2 * int((y != 255).sum()))


@pytest.mark.parametrize("options", [{}, {"selector": "conv", "hidden": 4, "crop": 16},
                                     {"soft": True, "fit_temperatures": True}])
def test_state_dict_round_trip_into_a_fresh_calibrator(options):
    z, y = _tell_data(n=4, hw=24)
    cal = make_calibrator("selective", base="ts", **FAST, **options).fit(z, y)
    fresh = make_calibrator("selective", base="ts", **options)
    fresh.load_state_dict(cal.state_dict())
    assert torch.equal(fresh(z), cal(z))
    assert fresh.t_mis_ == cal.t_mis_ and fresh.selector_quality_ == pytest.approx(cal.selector_quality_, nan_ok=True)
    assert fresh.base.temperature_ == cal.base.temperature_


@pytest.mark.parametrize("options", [{}, {"soft": True}, {"fit_temperatures": True},
                                     {"selector": "conv", "hidden": 4, "crop": 16}])
def test_argmax_and_miou_are_unchanged(options):
    z, y = _tell_data(n=4, hw=24)
    cal = make_calibrator("selective", base="ts", **FAST, **options).fit(z, y)
    out = cal(z)
    assert out.shape == z.shape and out.dtype == z.dtype
    assert torch.equal(out.argmax(1), z.argmax(1))
    res = evaluate_calibrators({"uncal": make_calibrator("identity", progress=False).fit(z, y), "sel": cal},
                               (z, y), progress=False)
    assert res["miou"]["uncal"] == res["miou"]["sel"]


def test_fitted_temperatures_lower_the_held_out_nll_below_the_fixed_ones():
    z, y = _tell_data(n=8, p_wrong=0.4)
    zt, yt = _tell_data(n=4, p_wrong=0.4, seed=5)
    ce = torch.nn.functional.cross_entropy
    fixed = make_calibrator("selective", base="ts", t_mis=2.0, **FAST).fit(z, y)
    fitted = make_calibrator("selective", base="ts", fit_temperatures=True, **FAST).fit(z, y)
    assert ce(fitted(zt), yt) < ce(fixed(zt), yt)
    assert fitted.t_cor_ > 0 and fitted.t_mis_ > fitted.t_cor_


def test_selective_beats_temperature_scaling_when_mispredictions_are_detectable():
    z, y = _tell_data(n=8)
    zt, yt = _tell_data(n=4, seed=7)
    ts = make_calibrator("ts", progress=False).fit(z, y)
    sel = make_calibrator("selective", base=ts, t_mis=math.inf, **FAST).fit(z, y)
    assert sel.base is ts
    res = evaluate_calibrators({"ts": ts, "sel": sel}, (zt, yt), progress=False)["metrics"]["all"]
    assert res["sel"]["image_ece"] < 0.5 * res["ts"]["image_ece"]


class _NeedsImages(TemperatureScaling):
    """A stand-in for LTS: fits on whole batches and needs the images."""

    needs_images = True

    def _fit_batches(self, batches):
        xs, ys = [], []
        for lg, lb, im in batches:
            assert im is not None
            valid = lb != 255
            xs.append(lg.permute(0, 2, 3, 1)[valid])
            ys.append(lb[valid])
        self.inverse_temperature.fill_(fit_inverse_temperature(torch.cat(xs), torch.cat(ys)))
        return xs[0].shape[1]


def test_a_base_that_needs_images_is_fitted_on_whole_maps_and_passed_the_images():
    z, y = _tell_data(n=4, hw=24)
    im = torch.rand(4, 3, 24, 24)
    cal = make_calibrator("selective", base=_NeedsImages(progress=False), **FAST)
    assert cal.needs_images
    with pytest.raises(ValueError, match="needs images"):
        cal.fit(z, y)
    cal = make_calibrator("selective", base=_NeedsImages(progress=False), **FAST).fit(z, y, im)
    ref = TemperatureScaling(progress=False, max_pixels=10**9).fit(z, y)
    assert cal.base.temperature_ == pytest.approx(ref.temperature_, rel=1e-9)
    assert cal(z, im).shape == z.shape
    with pytest.raises(ValueError, match="needs images"):
        cal(z)


def test_conv_selector_with_image_needs_images():
    z, y = _tell_data(n=4, hw=24)
    im = torch.rand(4, 3, 24, 24)
    cal = make_calibrator("selective", selector="conv", use_image=True, hidden=4, crop=16, **FAST)
    assert cal.needs_images
    cal.fit(z, y, im)
    assert cal(z, im).shape == z.shape
    with pytest.raises(ValueError, match="needs images"):
        cal(z)


# ------------------------------------------------------------------------------------------------ evaluation helpers
def test_evaluate_calibrators_equals_a_meter_fed_directly_and_measures_subsets():
    z, y = _uniform_data()
    ident = make_calibrator("identity", progress=False).fit(z, y)
    mask_fn = {"left": lambda lb: torch.zeros_like(lb, dtype=torch.bool).index_fill_(2, torch.arange(12), True)}
    res = evaluate_calibrators({"uncal": ident}, (z, y), subsets=mask_fn, progress=False)
    direct = CalibrationMeter(5, classwise=False).update(z, y).compute()
    assert res["metrics"]["all"]["uncal"]["image_ece"] == pytest.approx(direct["image_ece"], abs=1e-12)
    left = CalibrationMeter(5, classwise=False).update(z[..., :12], y[..., :12]).compute()
    assert res["metrics"]["left"]["uncal"]["ece"] == pytest.approx(left["ece"], abs=1e-12)


def test_oracle_selective_reaches_its_recall_and_false_positive_rate():
    z, y = _uniform_data(n=8, hw=40)
    wrong = z.argmax(1) != y
    perfect = OracleSelective(None)
    assert torch.equal(perfect.flags(z, y), wrong)
    perfect(z, y)
    assert perfect.precision_ == 1.0
    none = OracleSelective(None, recall=0.0)
    assert torch.equal(none(z, y), z)
    half = OracleSelective(None, recall=0.5, false_positive_rate=0.1, seed=1)
    f = half.flags(z, y)
    assert f[wrong].float().mean() == pytest.approx(0.5, abs=0.03)
    assert f[~wrong].float().mean() == pytest.approx(0.1, abs=0.02)
    with pytest.raises(ValueError, match="recall"):
        OracleSelective(None, recall=1.5)


def test_estimate_selective_gain_sees_a_detectable_case_and_splits_images(tmp_path):
    z, y = _tell_data(n=12, hw=32)
    store = LogitStore.from_arrays(tmp_path / "cal", z.half().float(), y)
    est = estimate_selective_gain(store, base="ts", t_mis=math.inf, **FAST)
    assert est["n_fit"] + est["n_held_out"] == 12 and est["n_held_out"] == 4
    lo, hi = est["gain_ci"]
    assert lo <= est["gain"] <= hi
    assert est["gain"] == pytest.approx(est["base_ece"] - est["selective_ece"], abs=1e-12)
    assert est["verdict"] == "likely to help" and est["selector"]["auroc"] > 0.99
    with pytest.raises(ValueError, match="at least 4"):
        estimate_selective_gain(LogitStore.from_arrays(tmp_path / "tiny", z[:3], y[:3]))


def test_fit_is_deterministic():
    z, y = _tell_data(n=3)
    a = make_calibrator("selective", **FAST).fit(z, y)
    b = make_calibrator("selective", **FAST).fit(z, y)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert np.isfinite([h["held_out_loss"] for h in a.history_]).all()
