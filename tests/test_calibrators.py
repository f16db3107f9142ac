"""Every registered calibrator: recovery of known maps, invariants, ignore pixels, stores, state_dict, errors."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segcal_lib.calibrators import list_calibrators, make_calibrator
from segcal_lib.calibrators.binning import pool_adjacent_violators, with_top_confidence
from segcal_lib.calibrators.ensemble import average_probabilities
from segcal_lib.calibrators.evaluate import ImageBatches, compare_calibrators
from segcal_lib.calibrators.meta_cal import entropy
from segcal_lib.logit_store import LogitStore
from segcal_lib.metrics import CalibrationMeter

FAST = {"lts": {"steps": 25, "hidden": 4}, "lts_image": {"steps": 25, "hidden": 4}}


def _sample(logits, g):
    """Labels drawn from softmax(logits) (N, C, H, W)."""
    n, c, h, w = logits.shape
    p = logits.double().softmax(1).permute(0, 2, 3, 1).reshape(-1, c)
    return torch.multinomial(p, 1, generator=g).view(n, h, w)


def _data(n=4, c=4, hw=24, seed=0, scale=3.0):
    """Over-confident logits (labels drawn at temperature 2) and random images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, hw, hw, generator=g) * scale
    return z, _sample(z / 2, g), torch.rand(n, 3, hw, hw, generator=g)


def _members():
    conv = torch.nn.Conv2d(3, 4, 1)
    torch.nn.init.constant_(conv.weight, 0.5)
    torch.nn.init.constant_(conv.bias, 0.1)
    return [conv, lambda im: im[:, :1].repeat(1, 4, 1, 1) * torch.arange(4.0).view(1, 4, 1, 1)]


def _make(name, **kw):
    extra = {"members": _members()} if name == "ensemble" else {}
    return make_calibrator(name, progress=False, **FAST.get(name, {}), **extra, **kw)


def _apply(cal, z, im):
    return cal(z, im if cal.needs_images else None)


def _state(cal):
    return {k: v.clone() for k, v in cal.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


ALL = list_calibrators()
NLL_MINIMISERS = ["ts", "vs", "ms", "dirs", "ets", "lts", "lts_image"]


# ------------------------------------------------------------------------------------------------ recovery
def _centred(z):
    return z - z.mean(1, keepdim=True)


@pytest.mark.parametrize("name", ["vs", "ms", "dirs"])
def test_affine_calibrators_recover_a_known_map(name):
    g = torch.Generator().manual_seed(1)
    c = 4
    z = torch.randn(16, c, 64, 64, generator=g) * 2  # 65k pixels: parameters to about +-0.03
    w = torch.tensor([[1.5, 0.3, 0.0, -0.2], [0.1, 0.7, 0.2, 0.0], [0.0, -0.3, 1.1, 0.4], [0.2, 0.0, 0.1, 0.6]])
    if name == "vs":
        w = torch.diag(w.diagonal())
    b = torch.tensor([0.4, -0.3, 0.1, 0.0])
    x = z.log_softmax(1) if name == "dirs" else z
    y = _sample(torch.einsum("kc,nchw->nkhw", w, x) + b.view(1, -1, 1, 1), g)
    cal = make_calibrator(name, progress=False, reg_bias=0.0, **({} if name == "vs" else {"reg_offdiag": 0.0}))
    cal.fit(z, y)
    got_w = torch.diag(cal.weight_) if name == "vs" else cal.weight_
    # Softmax ignores a shift of all logits: compare W up to adding a row vector to every row, b up to a constant.
    np.testing.assert_allclose((got_w - got_w.mean(0)).numpy(), (w - w.mean(0)).double().numpy(), atol=0.06)
    np.testing.assert_allclose((cal.bias_ - cal.bias_.mean()).numpy(), (b - b.mean()).double().numpy(), atol=0.06)
    assert not cal.preserves_argmax


def test_odir_penalty_pulls_off_diagonal_entries_to_zero():
    z, y, _ = _data(c=4, hw=16)
    free = make_calibrator("dirs", progress=False, reg_offdiag=0.0).fit(z, y).weight_
    tied = make_calibrator("dirs", progress=False, reg_offdiag=100.0).fit(z, y).weight_
    off = ~torch.eye(4, dtype=torch.bool)
    assert tied[off].abs().max() < 0.1 * free[off].abs().max()


def test_ets_weights_are_the_nll_optimum_on_the_simplex():
    z, y, _ = _data(hw=32)
    cal = _make("ets").fit(z, y)
    w = cal.weights_
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12) and bool((w >= 0).all())
    x, yy = z.permute(0, 2, 3, 1).reshape(-1, 4).double(), y.reshape(-1)
    q = torch.stack([(x / cal.temperature_).softmax(1), x.softmax(1), torch.full_like(x, 0.25)])
    q = q.gather(2, yy.view(1, -1, 1).expand(3, -1, 1))[..., 0].T  # (P, 3)
    best = float(-(q @ w).log().mean())
    for a, b in itertools.product(np.linspace(0, 1, 21), repeat=2):
        if a + b <= 1:
            grid_w = torch.tensor([a, b, 1 - a - b], dtype=torch.float64)
            assert best <= float(-(q @ grid_w).clamp_min(1e-300).log().mean()) + 1e-7
    # The calibrated probabilities are the mixture.
    p = cal(z).softmax(1)
    mix = w[0] * (z.double() / cal.temperature_).softmax(1) + w[1] * z.double().softmax(1) + w[2] / 4
    assert torch.allclose(p.double(), mix, atol=1e-5)


def test_meta_cal_threshold_temperature_and_uniform_rejections():
    z, y, _ = _data(hw=32)
    cal = _make("meta_cal", alpha=0.1).fit(z, y)
    h = entropy(z)
    correct = z.argmax(1) == y
    assert float((h[correct] > cal.threshold_).float().mean()) == pytest.approx(0.1, abs=0.01)
    out = cal(z).softmax(1)
    rejected = h > cal.threshold_
    assert (out.amax(1)[rejected] - 0.25).abs().max() < 1e-4
    kept = (z / cal.temperature_.float()).softmax(1)
    assert torch.allclose(out.permute(0, 2, 3, 1)[~rejected], kept.permute(0, 2, 3, 1)[~rejected], atol=1e-6)
    ts_kept = make_calibrator("ts", progress=False).fit(z.permute(0, 2, 3, 1)[~rejected].T[None, :, :, None],
                                                        y[~rejected][None, :, None])
    assert float(cal.temperature_) == pytest.approx(ts_kept.temperature_, rel=1e-9)


def test_histogram_binning_maps_each_pixel_to_its_bins_accuracy():
    z, y, _ = _data(hw=32)
    cal = _make("histogram", n_bins=5).fit(z, y)
    p = z.double().softmax(1)
    conf, pred = p.max(1)
    b = (conf * 5).long().clamp(max=4)
    new_conf = cal(z).double().softmax(1).gather(1, pred[:, None])[:, 0]
    for k in b.unique():
        acc = (pred == y)[b == k].double().mean()
        assert torch.allclose(new_conf[b == k], acc.clamp(1e-6, 1 - 1e-6).expand_as(new_conf[b == k]), atol=1e-6)


def test_with_top_confidence_sets_the_top_and_keeps_the_others_proportions():
    z, _, _ = _data(n=2, hw=8)
    z[0, :, 0, 0] = torch.tensor([40.0, 0.0, -1.0, 2.0])  # confidence 1 - 1e-17: 1 - c underflows in float32
    target = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.9 + 0.05
    p, q = z.double().softmax(1), with_top_confidence(z.double(), target).softmax(1)
    top = p.argmax(1, keepdim=True)
    assert torch.allclose(q.gather(1, top)[:, 0], target.double(), atol=1e-12)
    ratio = q / p  # the same factor (1 - c') / (1 - c) for every class but the top
    other = torch.ones_like(p, dtype=torch.bool).scatter_(1, top, False)
    r = ratio.masked_fill(~other, float("nan"))
    assert torch.allclose(r.nanquantile(0.0, 1), r.nanquantile(1.0, 1), rtol=1e-9)


def test_pool_adjacent_violators_against_the_min_max_formula():
    assert pool_adjacent_violators([1, 3, 2, 4]).tolist() == [1, 2.5, 2.5, 4]
    rng = np.random.default_rng(0)
    y, w = rng.random(25), rng.random(25) + 0.1
    got = pool_adjacent_violators(y, w)
    cum_wy, cum_w = np.r_[0, np.cumsum(w * y)], np.r_[0, np.cumsum(w)]

    def mean(j, k):  # weighted mean of y[j..k]
        return (cum_wy[k + 1] - cum_wy[j]) / (cum_w[k + 1] - cum_w[j])

    ref = [max(min(mean(j, k) for k in range(i, 25)) for j in range(i + 1)) for i in range(25)]
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_isotonic_map_is_monotone_and_fits_correctness():
    z, y, _ = _data(hw=32)
    cal = _make("isotonic").fit(z, y)
    assert bool((cal.values_.diff() >= 0).all()) and bool((cal.knots_.diff() > 0).all())
    # The step values are the accuracies of the pooled blocks: their pixel-weighted mean is the overall accuracy.
    conf, pred = z.double().softmax(1).max(1)
    assert float(cal._map(conf).mean()) == pytest.approx(float((pred == y).double().mean()), abs=1e-9)


def test_ensemble_averages_probabilities_of_the_input_and_members():
    z, y, im = _data()
    members = _members()
    ens = make_calibrator("ensemble", members=members, progress=False).fit(z, y, im)
    manual = (z.softmax(1) + members[0](im).softmax(1) + members[1](im).softmax(1)) / 3
    assert torch.allclose(ens(z, im).softmax(1), manual, atol=1e-6)
    alone = make_calibrator("ensemble", members=members, include_input=False, progress=False).fit(z, y, im)
    assert torch.allclose(alone(z, im), average_probabilities([m(im) for m in members]), atol=1e-6)
    with pytest.raises(ValueError, match="members must predict"):
        make_calibrator("ensemble", members=[torch.nn.Conv2d(3, 5, 1)], progress=False).fit(z, y, im)


# ------------------------------------------------------------------------------------------------ invariants
@pytest.mark.parametrize("name", NLL_MINIMISERS)
def test_fitted_calibrators_never_raise_nll_on_their_calibration_split(name):
    z, y, im = _data()
    cal = _make(name).fit(z, y, im)
    with torch.no_grad():
        assert F.cross_entropy(_apply(cal, z, im), y) <= F.cross_entropy(z, y) + 1e-6


@pytest.mark.parametrize("name", [n for n in ALL if make_calibrator(n, **({"members": _members()} if n == "ensemble"
                                                                           else {})).preserves_argmax])
def test_argmax_is_preserved_where_promised(name):
    z, y, im = _data()
    cal = _make(name).fit(z, y, im)
    z2, _, im2 = _data(seed=5)
    with torch.no_grad():
        assert torch.equal(_apply(cal, z2, im2).argmax(1), z2.argmax(1))


def test_the_argmax_promises_are_the_documented_ones():
    keeps = {n for n in ALL if _make(n).preserves_argmax}
    assert keeps == {"identity", "ts", "ets", "meta_cal", "lts", "lts_image", "selective"}  # selective over ts


@pytest.mark.parametrize("name", [n for n in ALL if n not in ("lts", "lts_image")])
def test_ignore_pixels_never_influence_a_fit(name):
    z, y, im = _data()
    y = y.clone()
    y[:, :, :10] = 255
    z2 = z.clone()
    z2[:, :, :, :10] = torch.randn_like(z2[:, :, :, :10]) * 50
    a = _state(_make(name).fit(z, y, im))
    b = _state(_make(name).fit(z2, y, im))
    assert _same_state(a, b)


def test_lts_ignore_pixels_enter_no_loss():
    # Pixels ignored and farther than the net's receptive radius (2) from any valid pixel change nothing.
    z, y, im = _data()
    y = y.clone()
    y[:, :, :12] = 255
    z2 = z.clone()
    z2[:, :, :, :9] = torch.randn_like(z2[:, :, :, :9]) * 50
    assert _same_state(_state(_make("lts").fit(z, y, im)), _state(_make("lts").fit(z2, y, im)))
    # Images with no valid pixel are left out of lts_image's fit altogether.
    y_all = y.clone()
    y_all[1] = 255
    z3 = z.clone()
    z3[1] = torch.randn_like(z3[1]) * 50
    assert _same_state(_state(_make("lts_image").fit(z, y_all, im)), _state(_make("lts_image").fit(z3, y_all, im)))


@pytest.mark.parametrize("name", ["vs", "dirs", "isotonic", "meta_cal", "lts"])
def test_fitting_from_a_store_equals_fitting_from_tensors(name, tmp_path):
    z, y, im = _data(n=5)
    z = z.half().float()  # the store keeps float16
    store = LogitStore.from_arrays(tmp_path / "s", z, y)
    source = ImageBatches(store, im, batch_size=3) if name == "lts" else store
    a = _state(_make(name, max_pixels=1500).fit(source))
    b = _state(_make(name, max_pixels=1500).fit(z, y, im))
    assert _same_state(a, b)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_for_every_calibrator(name):
    z, y, im = _data()
    cal = _make(name).fit(z, y, im)
    fresh = _make(name)
    fresh.load_state_dict(cal.state_dict())
    assert fresh.num_classes_ == 4
    with torch.no_grad():
        assert torch.equal(_apply(fresh, z, im), _apply(cal, z, im))


@pytest.mark.parametrize("name", ALL)
def test_output_shape_dtype_and_wrong_class_count(name):
    z, y, im = _data()
    cal = _make(name).fit(z, y, im)
    with torch.no_grad():
        out = _apply(cal, z, im)
    assert out.shape == z.shape and out.dtype == z.dtype and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="fitted on 4"):
        cal(torch.randn(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_give_clear_errors():
    z, y, im = _data()
    for name, kw, match in [("vs", {"reg_bias": -1.0}, "reg_bias must be >= 0"),
                            ("ms", {"max_iter": 0}, "max_iter must be a positive int"),
                            ("meta_cal", {"alpha": 1.5}, "alpha must lie in"),
                            ("histogram", {"n_bins": 0}, "n_bins must be a positive int"),
                            ("lts", {"steps": 0}, "steps must be a positive int"),
                            ("ensemble", {"members": [3]}, "members must be"),
                            ("ensemble", {"include_input": False}, "needs members")]:
        with pytest.raises(ValueError, match=match):
            make_calibrator(name, **kw)
    with pytest.raises(ValueError, match="images must have shape"):
        _make("lts").fit(z, y)
    with pytest.raises(ValueError, match="images must be float"):
        _make("lts").fit(z, y, (im * 255).byte())
    lts = _make("lts").fit(z, y, im)
    with pytest.raises(ValueError, match="needs images"):
        lts(z)
    with pytest.raises(ValueError, match="no valid"):
        _make("lts").fit(z, torch.full_like(y, 255), im)


# ------------------------------------------------------------------------------------------------ evaluation
def test_image_batches_refuse_images_of_another_split(tmp_path):
    z, y, im = _data(n=3)
    store = LogitStore.from_arrays(tmp_path / "s", z, y)
    good = [(im[i], y[i]) for i in range(3)]
    assert sum(len(b[0]) for b in ImageBatches(store, good, batch_size=2)) == 3
    with pytest.raises(ValueError, match="differ from the stored"):
        list(ImageBatches(store, [(im[i], (y[i] + 1) % 4) for i in range(3)]))
    with pytest.raises(ValueError, match="one image per stored image"):
        ImageBatches(store, good[:2])


def test_compare_calibrators_fits_on_one_split_and_measures_on_the_other(tmp_path):
    z, y, im = _data(n=4)
    zt, yt, imt = _data(n=3, seed=9)
    cal_src = ImageBatches(LogitStore.from_arrays(tmp_path / "v", z, y), im)
    test_store = LogitStore.from_arrays(tmp_path / "t", zt, yt)
    test_src = ImageBatches(test_store, imt)
    prefit = make_calibrator("ts", progress=False).fit(zt, yt)  # fitted elsewhere: must be used as it is
    table, res = compare_calibrators({"Uncal": "identity", "TempS": "ts", "given": prefit, "LTS": "lts"},
                                     cal_src, test_src, options={"LTS": FAST["lts"]})
    assert list(table.index) == ["Uncal", "TempS", "given", "LTS"]
    assert {"image-wise ECE", "pooled ECE", "NLL", "Brier", "mIoU (%)", "fit (s)"} <= set(table.columns)
    direct = make_calibrator("ts", progress=False).fit(z.half().float(), y)
    assert res["TempS"]["calibrator"].temperature_ == direct.temperature_
    assert res["given"]["calibrator"].temperature_ == prefit.temperature_
    meter = CalibrationMeter(4).update(test_store.iter_batches().__next__()[0], yt)
    assert res["Uncal"]["calibration"]["ece"] == pytest.approx(meter.compute()["ece"], abs=1e-12)
    with pytest.raises(ValueError, match="not rows"):
        compare_calibrators(["ts"], cal_src, test_src, options={"nope": {}})
    with pytest.raises(ValueError, match="registry name or a Calibrator"):
        compare_calibrators({"x": 3}, cal_src, test_src)


# ------------------------------------------------------------------------------------------------ chapter 8 bank
def test_chapter_8_exercises_accept_right_and_reject_wrong_answers():
    import pandas as pd

    from segcal_lib.exercise_bank.ch08 import exercises

    table = pd.DataFrame({"image-wise ECE": [0.12, 0.10, 0.11], "mIoU (%)": [50.0, 50.0, 49.0]},
                         index=["Uncal", "TempS", "LogS"])
    bank = exercises(table, temperature=1.7)
    assert 3 <= len(bank) <= 5
    for ex in bank.values():
        assert ex.checker(ex.right) is None, ex.key
        assert ex.checker(ex.wrong) is not None, ex.key
    with pytest.raises(ValueError, match="rows 'Uncal' and 'TempS'"):
        exercises(table.drop("TempS"), 1.0)


def test_pipeline_with_images_zips_a_store_with_its_data(tmp_path):
    from segcal_lib import pipeline

    spec = {"name": "synthetic", "split": "val", "size": [32, 48], "n": 3, "seed": 0}
    data = pipeline.load_dataset(spec)
    labels = torch.stack([data[i].label for i in range(3)])
    z = torch.randn(3, data.num_classes, 32, 48)
    store = LogitStore.from_arrays(tmp_path / "s", z, labels, meta={"data_spec": spec})
    (lg, lb, im), = list(pipeline.with_images(store, batch_size=3))
    assert torch.equal(im, torch.stack([data[i].image for i in range(3)])) and torch.equal(lb, labels)
    with pytest.raises(ValueError, match="data spec"):
        pipeline.with_images(LogitStore.from_arrays(tmp_path / "t", z, labels))
