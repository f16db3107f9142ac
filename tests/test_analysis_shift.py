"""The domain-shift sweep on a tiny model: numbers against brute-force float64 references, calibrators fitted once
in-domain, the selector protocol, images for calibrators that need them, and the Table-2 layout."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from segcal_lib import analysis_shift as ash
from segcal_lib import paper, pipeline
from segcal_lib.calibrators import make_calibrator
from segcal_lib.calibrators.base import Calibrator, NotFittedError
from segcal_lib.config import get_profile
from segcal_lib.data import CamVid
from segcal_lib.data.datasets import find_camvid

SHIFTS, SEVERITIES = ["fog", "blur"], [1, 4]
QUALITY = ["accuracy", "precision", "recall", "auroc", "flagged_share", "mispredicted_share", "n_pixels"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SEGCAL_CACHE", str(tmp_path_factory.mktemp("cache")))
    p = get_profile("fast", image_size=(32, 48), n_train=4, n_val=3, n_test=4, crop_size=32, train_iters=2,
                    batch_size=2, model="mobilenetv3_small_fpn")
    model, cfg = pipeline.get_model("synthetic", p, progress=False)
    yield p, model, cfg
    mp.undo()


class ConfidenceSelector(Calibrator):
    """A toy selective calibrator: flags pixels with top probability below 0.6 as mispredicted and flattens them."""

    def _fit_pixels(self, logits, labels):
        pass

    def _flags(self, logits):
        return logits.softmax(1).amax(1) < 0.6

    def _calibrate(self, logits, images):
        return torch.where(self._flags(logits)[:, None], logits * 0.01, logits)

    threshold = 0.4  # flagged when 1 - top probability > 0.4

    def mispredicted_proba(self, logits, images=None):
        return 1 - logits.softmax(1).amax(1)


class BrightnessTemperature(Calibrator):
    """Needs images: divides the logits by (1 + the image's mean brightness)."""

    needs_images = True

    def _fit_batches(self, batches):
        for logits, _, images in batches:
            assert images is not None and images.shape[1] == 3
            c = logits.shape[1]
        return c

    def _calibrate(self, logits, images):
        return logits / (1 + images.mean(dim=(1, 2, 3)))[:, None, None, None]


def _image_eces(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Brute force, float64: per-image top-label ECE, 10 equal-width bins [l, r), the last closed."""
    out = []
    for lg, lb in zip(logits.astype(np.float64), labels, strict=True):
        p = np.exp(lg - lg.max(0))
        p /= p.sum(0)
        valid = lb != 255
        conf, hit = p.max(0)[valid], (p.argmax(0) == lb)[valid]
        b = np.minimum((conf * 10).astype(int), 9)
        out.append(sum(abs(conf[b == k].sum() - hit[b == k].sum()) for k in range(10)) / valid.sum())
    return np.array(out)


def _miou(pred: np.ndarray, labels: np.ndarray, c: int) -> float:
    valid = labels != 255
    ious = []
    for k in range(c):
        inter = ((pred == k) & (labels == k) & valid).sum()
        union = (((pred == k) | (labels == k)) & valid).sum()
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


@pytest.fixture(scope="module")
def swept(tiny):
    p, model, cfg = tiny
    cals = {"identity": make_calibrator("identity", progress=False), "ts": make_calibrator("ts", progress=False),
            "toy_selective": ConfidenceSelector(progress=False)}
    df = ash.shift_sweep(model, cfg, SHIFTS, SEVERITIES, cals, profile=p, n_boot=200, selectors=True)
    return df, cals


def test_tidy_frame_has_every_test_set_calibrator_and_metric(swept):
    df, _ = swept
    sets = ["in-domain"] + [f"{s} {k}" for s in SHIFTS for k in SEVERITIES]
    assert list(dict.fromkeys(df["test_set"])) == sets
    assert set(df["calibrator"]) == {"identity", "ts", "toy_selective"}
    assert set(df["method"]) == {"Uncal", "TempS", "toy_selective"}
    per = df.groupby(["test_set", "calibrator"])["metric"].apply(set)
    core = {"image_ece", "miou", "ece", "nll", "brier", "accuracy", "confidence"}
    assert all(core <= m for m in per)
    assert "delta_image_ece" not in per[("in-domain", "identity")] and "delta_image_ece" in per[("fog 4", "ts")]
    ind = df[df["test_set"] == "in-domain"].iloc[0]
    assert ind["kind"] == "in-domain" and ind["severity"] == 0 and ind["n_images"] == 4
    fog = df[df["test_set"] == "fog 4"].iloc[0]
    assert (fog["kind"], fog["shift"], fog["severity"]) == ("shift", "fog", 4)
    assert df[df["test_set"] == "blur 1"].iloc[0]["kind"] == "corruption"


def test_numbers_match_brute_force_references(tiny, swept):
    p, model, cfg = tiny
    df, cals = swept
    val = pipeline.get_logits(model, cfg, "val", p, progress=False)
    # Fitted once, on the in-domain calibration split.
    assert cals["ts"].temperature_ == pytest.approx(make_calibrator("ts", progress=False).fit(val).temperature_)
    beta = 1 / cals["ts"].temperature_
    for test_set, kw in (("in-domain", {}), ("blur 4", {"shift": "blur", "severity": 4})):
        store = pipeline.get_logits(model, cfg, "test", p, progress=False, **kw)
        logits, labels = np.asarray(store.logits, np.float32), np.asarray(store.labels)
        got = df[df["test_set"] == test_set].set_index(["calibrator", "metric"])
        uncal, temp = _image_eces(logits, labels), _image_eces(logits * beta, labels)
        assert got.loc[("identity", "image_ece"), "value"] == pytest.approx(uncal.mean(), abs=1e-9)
        assert got.loc[("ts", "image_ece"), "value"] == pytest.approx(temp.mean(), abs=1e-9)
        assert got.loc[("ts", "delta_image_ece"), "value"] == pytest.approx((temp - uncal).mean(), abs=1e-9)
        lo, hi = got.loc[("ts", "image_ece"), ["low", "high"]]
        assert temp.min() <= lo <= temp.mean() <= hi <= temp.max()
        assert got.loc[("identity", "miou"), "value"] == pytest.approx(_miou(logits.argmax(1), labels, 11))


def test_selector_protocol_is_reported_per_test_set(tiny, swept):
    p, model, cfg = tiny
    df, cals = swept
    sel = ash.selector_table(df)
    assert list(sel.columns) == QUALITY
    assert sel.index.get_level_values("method").unique().tolist() == ["toy_selective"]
    store = pipeline.get_logits(model, cfg, "test", p, progress=False, shift="fog", severity=4)
    logits, labels = torch.from_numpy(np.asarray(store.logits, np.float32)), torch.from_numpy(
        np.asarray(store.labels).astype(np.int64))
    # Brute force: the toy flags pixels whose top probability is below 0.6.
    valid = labels != 255
    wrong = (logits.argmax(1) != labels)[valid]
    flags = cals["toy_selective"]._flags(logits)[valid]
    got = sel.loc[("fog 4", "toy_selective")]
    assert got["accuracy"] == pytest.approx((flags == wrong).double().mean().item())
    assert got["precision"] == pytest.approx((flags & wrong).sum().item() / flags.sum().item())
    assert got["recall"] == pytest.approx((flags & wrong).sum().item() / wrong.sum().item())
    assert sel.loc[("fog 4", "toy_selective"), "n_pixels"] == (labels != 255).sum().item()
    assert ash.selector_table(df[~df["metric"].str.startswith("selector_")]).empty
    # Opt-in: without selectors=True the same store gives no selector rows.
    plain = ash.evaluate(store, {"toy_selective": cals["toy_selective"]}, n_boot=20)
    assert not any(r["metric"].startswith("selector_") for r in plain)


def test_sweep_is_quiet_unless_asked(tiny, capsys):
    p, model, cfg = tiny
    sets = {"in-domain": {}, "fog 1": {"shift": "fog", "severity": 1}}
    ash.sweep(model, cfg, sets, ["ts"], profile=p, n_boot=10)
    assert capsys.readouterr().out == ""
    ash.sweep(model, cfg, sets, ["ts"], profile=p, n_boot=10, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("logits" in line for line in lines)  # val + two test sets, one line each


def test_calibrators_that_need_images_get_them(tiny):
    p, model, cfg = tiny
    with pytest.raises(ValueError, match="needs images"):
        ash.sweep(model, cfg, {"in-domain": {}}, {"bright": BrightnessTemperature(progress=False)}, profile=p)
    df = ash.sweep(model, cfg, {"contrast 5": {"shift": "contrast", "severity": 5}},
                   {"bright": BrightnessTemperature(progress=False)}, profile=p, with_images=True, n_boot=50)
    spec = pipeline.data_spec("synthetic", "test", p, "contrast", 5)
    data = pipeline.load_dataset(spec)
    images = torch.stack([data[i].image for i in range(len(data))])
    store = pipeline.get_logits(model, cfg, "test", p, progress=False, shift="contrast", severity=5)
    logits = np.asarray(store.logits, np.float32) / (1 + images.mean(dim=(1, 2, 3)).numpy())[:, None, None, None]
    got = df.set_index(["calibrator", "metric"]).loc[("bright", "image_ece"), "value"]
    assert got == pytest.approx(_image_eces(logits, np.asarray(store.labels)).mean(), abs=1e-6)


def test_default_calibrators_are_the_registry_without_image_ones():
    names = ash.available_calibrators()
    assert names[0] == "identity" and "ts" in names and len(names) == len(set(names))
    assert all(not make_calibrator(n).needs_images for n in names)


def test_tables_in_the_papers_layout(swept):
    df, _ = swept
    t = ash.table2(df, severity=4)
    assert list(t.index) == ["in-domain", "fog 4", "blur 4"]
    assert list(t.columns) == ["mIoU (%)", "Uncal", "TempS", "toy_selective", "lowest"]
    row = df[(df["test_set"] == "fog 4") & (df["calibrator"] == "ts") & (df["metric"] == "image_ece")].iloc[0]
    assert t.loc["fog 4", "TempS"] == f"{row['value']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"
    means = df[(df["test_set"] == "fog 4") & (df["metric"] == "image_ece")].set_index("method")["value"]
    assert t.loc["fog 4", "lowest"] == means.idxmin()
    pt = ash.paper_table2()
    assert len(pt) == len(paper.TABLE2) and list(pt.columns) == ["mIoU (%)", *paper.METHODS, "lowest"]
    assert pt.iloc[0]["Selective"] == "0.331" and pt.iloc[0]["mIoU (%)"] == 8.20
    assert (pt["lowest"] == "Selective").all()  # the paper: Selective best in every row of Table 2


def test_severity_curves_figure(swept):
    df, _ = swept
    fig = ash.plot_severity_curves(df)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == SHIFTS
    assert len(visible[0].get_lines()) == 3  # one per method
    with pytest.raises(ValueError, match="metric"):
        ash.plot_severity_curves(df, metric="brightness")


@pytest.mark.parametrize(("kw", "match"), [
    (dict(shifts=["snow"]), "shifts"), (dict(severities=[0]), "severities"), (dict(severities=[6]), "severities"),
    (dict(calibrators="ts"), "calibrators"),
])
def test_bad_requests_are_rejected(tiny, kw, match):
    p, model, cfg = tiny
    args = dict(shifts=["fog"], severities=[1], calibrators=["ts"]) | kw
    with pytest.raises(ValueError, match=match):
        ash.shift_sweep(model, cfg, args.pop("shifts"), args.pop("severities"), args.pop("calibrators"), profile=p)
    with pytest.raises(ValueError, match="test_sets"):
        ash.sweep(model, cfg, {}, profile=p)
    with pytest.raises(ValueError, match="df must be"):
        ash.table2(pd.DataFrame({"value": [1.0]}))


def test_gains_trends_and_selector_joins_follow_the_frame(swept):
    df, _ = swept
    g = ash.gains_table(df)
    assert set(g["method"]) == {"TempS", "toy_selective"} and len(g) == 2 * 5
    for _, r in g.iterrows():
        assert r["low"] <= r["delta image-wise ECE"] <= r["high"]
        assert r["verdict"] == ("lower" if r["high"] < 0 else "higher" if r["low"] > 0 else "within noise")
    t = ash.severity_trend(df)
    assert list(t["shift"]) == SHIFTS and (t["severity"] == max(SEVERITIES)).all()
    ece = df[(df["calibrator"] == "identity") & (df["metric"] == "image_ece")].set_index("test_set")
    fog = t.set_index("shift").loc["fog"]
    assert fog["shifted"] == ece.loc["fog 4", "value"] and fog["in-domain"] == ece.loc["in-domain", "value"]
    assert fog["ratio"] == pytest.approx(fog["shifted"] / fog["in-domain"])
    disjoint = ece.loc["fog 4", "low"] > ece.loc["in-domain", "high"] or ece.loc["fog 4", "high"] < ece.loc[
        "in-domain", "low"]
    assert (fog["verdict"] != "within noise") == disjoint
    sv = ash.selector_vs_gain(df)
    assert list(sv.columns) == [*QUALITY, "delta image-wise ECE"] and len(sv) == 5
    with pytest.raises(ValueError, match="in-domain"):
        ash.severity_trend(df[df["test_set"] != "in-domain"])


CAMVID = find_camvid()  # $SEGCAL_CAMVID or ../shared/data/camvid (also from a git worktree); None when absent
camvid = pytest.mark.skipif(CAMVID is None, reason="CamVid not found (set SEGCAL_CAMVID)")


@pytest.mark.camvid
@camvid
def test_camvid_real_shift_frames(monkeypatch):
    monkeypatch.setenv("SEGCAL_CAMVID", str(CAMVID))
    f = ash.camvid_frames("fast")
    assert f["frames"].tolist() == [305, 101, 171, 62]
    assert f.loc["model training (daylight)", "sequences"] == "0006R0 (101), 0016E5 (204)"
    assert f["sequences"].iloc[2:].tolist() == ["Seq05VD (171)", "0001TP (62)"]
    assert "0001TP" not in f.loc["model training (daylight)", "sequences"]


@pytest.mark.camvid
@camvid
def test_camvid_day_model_never_sees_the_dusk_sequence(monkeypatch):
    """The real shift's model is trained on daylight frames only: no 0001TP frame (the dusk test sequence, and the
    dusk frames of the train split) in its training data, and calibration and in-domain test frames in daylight."""
    monkeypatch.setenv("SEGCAL_CAMVID", str(CAMVID))
    seen = {}

    def fake_train_or_load(cfg, data_fn, **kw):  # record what would be trained on, train nothing
        seen["cfg"], seen["data"] = cfg, data_fn()
        return torch.nn.Identity()

    monkeypatch.setattr(ash, "train_or_load", fake_train_or_load)
    _, cfg = ash.camvid_day_model("fast", progress=False)
    train = seen["data"]
    assert cfg.data == pipeline.data_spec("camvid", "train", "fast", **ash.CAMVID_REAL_SHIFT["train"])
    # The raw file names, not the reader's own bookkeeping: no training frame is from 0001TP.
    everything = CamVid(CAMVID, "train")
    assert len(train) == len(everything) - sum(n.startswith("0001TP_") for n in everything.names) > 0
    assert not [n for n in train.names if n.startswith("0001TP")]
    dusk = pipeline.load_dataset(pipeline.data_spec("camvid", "test", "fast", domain="dusk"))
    assert dusk.names and all(n.startswith("0001TP_") for n in dusk.names)
    assert not set(dusk.names) & set(train.names)
    for split, extra in (("val", {}), ("test", ash.CAMVID_REAL_SHIFT["test"])):
        names = pipeline.load_dataset(pipeline.data_spec("camvid", split, "fast", **extra)).names
        assert names and not [n for n in names if n.startswith("0001TP")]


# ------------------------------------------------------------------------------------------------ selective under shift

def test_shift_test_sets_labels_and_arguments():
    sets = ash.shift_test_sets(["fog", "jpeg"], [2, 5], test_extra={"n": 3}, extra_sets={"dusk": {"domain": "dusk"}})
    assert list(sets) == ["in-domain", "fog 2", "fog 5", "jpeg 2", "jpeg 5", "dusk"]
    assert sets["in-domain"] == {"n": 3} and sets["jpeg 5"] == {"n": 3, "shift": "jpeg", "severity": 5}
    assert sets["dusk"] == {"domain": "dusk"}
    with pytest.raises(ValueError, match="severities"):
        ash.shift_test_sets(["fog"], [0])


def test_fitted_calibrators_are_used_as_they_are(tiny):
    p, model, cfg = tiny
    val = pipeline.get_logits(model, cfg, "val", p, progress=False)
    test = pipeline.get_logits(model, cfg, "test", p, progress=False)
    on_test = make_calibrator("ts", progress=False).fit(test)
    t = on_test.temperature_
    cals = ash.fit_calibrators(val, {"ts": on_test, "fresh": make_calibrator("ts", progress=False)})
    assert cals["ts"] is on_test and cals["ts"].temperature_ == t
    assert cals["fresh"].temperature_ == pytest.approx(make_calibrator("ts", progress=False).fit(val).temperature_)
    assert list(cals) == ["identity", "ts", "fresh"]


@pytest.fixture(scope="module")
def selective(tiny):
    p, model, cfg = tiny
    val = pipeline.get_logits(model, cfg, "val", p, progress=False)
    cal = make_calibrator("selective", steps=20, checks=2, progress=False).fit(val)
    sets = ash.shift_test_sets(["fog"], [1, 4])
    return cal, sets, ash.selective_sweep(model, cfg, sets, cal, profile=p, name="sel", n_boot=200)


def test_selective_sweep_against_brute_force(tiny, selective):
    p, model, cfg = tiny
    cal, sets, df = selective
    assert list(dict.fromkeys(df["test_set"])) == list(sets) and set(df["calibrator"]) == {"sel"}
    for label, kw in sets.items():
        store = pipeline.get_logits(model, cfg, "test", p, progress=False, **kw)
        logits = torch.from_numpy(np.asarray(store.logits, np.float32))
        labels = torch.from_numpy(np.asarray(store.labels).astype(np.int64))
        with torch.no_grad():
            z, q, out = cal.base(logits), cal.mispredicted_proba(logits), cal(logits)
        valid = (labels != 255).numpy()
        flag, wrong = (q > cal.threshold).numpy(), (z.argmax(1) != labels).numpy()
        f, w = flag[valid], wrong[valid]
        got = df[df["test_set"] == label].set_index("metric")
        assert got.loc["selector_accuracy", "value"] == pytest.approx(np.mean(f == w))
        if f.any():
            assert got.loc["selector_precision", "value"] == pytest.approx(np.sum(f & w) / np.sum(f))
        assert got.loc["selector_mispredicted_share", "value"] == pytest.approx(np.mean(w))
        # AUROC by brute force over all (wrong, right) pixel pairs, ties counted one half.
        s = q.double().numpy()[valid]
        pos, neg = s[w], s[~w]
        if len(pos) and len(neg):
            pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
            assert got.loc["selector_auroc", "value"] == pytest.approx(pairs)
        # The rule of thumb from the flagged pixels, in float64.
        fm = flag & valid
        if fm.any():
            pz = z.double().softmax(1).amax(1).numpy()[fm]
            po = out.double().softmax(1).amax(1).numpy()[fm]
            acc = 1 - wrong[fm].mean()
            share = fm.sum() / valid.sum()
            expect = share * (abs(pz.mean() - acc) - abs(po.mean() - acc))
            assert got.loc["predicted_gain", "value"] == pytest.approx(expect, abs=1e-6)
            assert got.loc["break_even_precision", "value"] == pytest.approx(1 - (pz.mean() + po.mean()) / 2,
                                                                              abs=1e-6)
        base_e = _image_eces(z.numpy(), labels.numpy())
        sel_e = _image_eces(out.numpy(), labels.numpy())
        assert got.loc["gain", "value"] == pytest.approx((base_e - sel_e).mean(), abs=1e-9)
        lo, hi = got.loc["gain", ["low", "high"]]
        assert lo <= got.loc["gain", "value"] <= hi


def test_rule_table_follows_the_frame(selective):
    _, sets, df = selective
    r = ash.rule_table(df)
    assert list(r.index) == list(sets) and r.loc["fog 4", "severity"] == 4
    for _, row in r.iterrows():
        g = row["predicted gain"]
        assert row["rule says"] == ("helps" if g > 0 else "hurts" if g < 0 else "no change")
        assert row["measured"] == ("helps" if row["low"] > 0 else "hurts" if row["high"] < 0 else "within noise")
        assert row["same sign"] == (np.sign(row["predicted gain"]) == np.sign(row["gain"]))
    with pytest.raises(ValueError, match="selective_sweep"):
        ash.rule_table(df[df["metric"] != "gain"])
    # Nothing flagged (a selector that never fires): the rule predicts no change.
    quiet = df.copy()
    quiet.loc[quiet["metric"] == "predicted_gain", "value"] = 0.0
    assert (ash.rule_table(quiet)["rule says"] == "no change").all()


def test_selective_sweep_rejects_what_it_cannot_run(tiny):
    p, model, cfg = tiny
    with pytest.raises(ValueError, match="selective calibrator"):
        ash.selective_sweep(model, cfg, {"in-domain": {}}, make_calibrator("ts", progress=False), profile=p)
    with pytest.raises(NotFittedError):
        ash.selective_sweep(model, cfg, {"in-domain": {}}, make_calibrator("selective", progress=False), profile=p)


def test_curves_for_chosen_methods_and_metrics(swept, selective):
    df, _ = swept
    fig = ash.plot_severity_curves(df, methods=["TempS", "Uncal"])
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["TempS", "Uncal"]
    with pytest.raises(ValueError, match="methods"):
        ash.plot_severity_curves(df, methods=["LTS"])
    fig = ash.plot_by_severity(selective[2], {"selector_auroc": "AUROC", "gain": "gain"})
    assert [ax.get_title() for ax in fig.axes] == ["AUROC", "gain"]
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["fog"]
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [0, 1, 4]
    with pytest.raises(ValueError, match="metrics"):
        ash.plot_by_severity(selective[2], {"image_ece": "x"})
