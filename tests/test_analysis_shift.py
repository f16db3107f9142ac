"""The domain-shift sweep on a tiny model: numbers against brute-force float64 references, calibrators fitted once
in-domain, the selector protocol, images for calibrators that need them, and the Table-2 layout."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from segcal_lib import analysis_shift as ash
from segcal_lib import paper, pipeline
from segcal_lib.calibrators import make_calibrator
from segcal_lib.calibrators.base import Calibrator
from segcal_lib.config import get_profile

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
    df = ash.shift_sweep(model, cfg, SHIFTS, SEVERITIES, cals, profile=p, n_boot=200)
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


CAMVID = Path(__file__).resolve().parents[2] / "shared/data/camvid"


@pytest.mark.skipif(not (CAMVID / "train").is_dir(), reason="CamVid not on disk")
def test_camvid_real_shift_frames(monkeypatch):
    monkeypatch.setenv("SEGCAL_CAMVID", str(CAMVID))
    f = ash.camvid_frames("fast")
    assert f["frames"].tolist() == [305, 101, 171, 62]
    assert f.loc["model training (daylight)", "sequences"] == "0006R0 (101), 0016E5 (204)"
    assert f["sequences"].iloc[2:].tolist() == ["Seq05VD (171)", "0001TP (62)"]
    assert "0001TP" not in f.loc["model training (daylight)", "sequences"]
