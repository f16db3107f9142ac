"""The ``segcal`` command line and the logit dump of any model: exact numbers against the meters, refusals of
malformed input with no partial output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segcal_lib.calibrators import make_calibrator
from segcal_lib.cli import main
from segcal_lib.dump import IMAGENET_MEAN, IMAGENET_STD, dump_logits
from segcal_lib.logit_store import LogitStore
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter
from segcal_lib.stats import bootstrap_ci

C, H, W = 4, 8, 10


def overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits 3x sharper than the distribution the labels are drawn from (ignore pixels in one corner)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, C, H, W, generator=g)
    labels = torch.distributions.Categorical(logits=base.permute(0, 2, 3, 1)).sample()
    labels[:, :2, :2] = 255
    return base * 3, labels


@pytest.fixture
def stores(tmp_path):
    cal = LogitStore.from_arrays(tmp_path / "cal", *overconfident(6, 0), class_names=list("abcd"))
    test = LogitStore.from_arrays(tmp_path / "test", *overconfident(5, 1), class_names=list("abcd"))
    return tmp_path, cal, test


def listing(path):
    return sorted(p.name for p in path.iterdir())


def test_calibrate_reports_what_the_meters_measure(stores, capsys):
    tmp, cal, test = stores
    assert main(["calibrate", "--cal", str(cal.path), "--test", str(test.path), "--calibrators", "ts",
                 "--json", str(tmp / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "uncalibrated" in out and "ts" in out and "image-wise ECE" in out
    doc = json.loads((tmp / "out.json").read_text())
    logits, labels = torch.from_numpy(np.asarray(test.logits, np.float32)), torch.from_numpy(
        np.asarray(test.labels, np.int64))
    ref = CalibrationMeter(C).update(logits, labels).compute()
    fitted = make_calibrator("ts").fit(cal)
    ref_ts = CalibrationMeter(C).update(fitted(logits), labels).compute()
    for name, r in (("uncalibrated", ref), ("ts", ref_ts)):
        got = doc["results"][name]
        assert got["ece"] == pytest.approx(r["ece"], abs=1e-9) and got["nll"] == pytest.approx(r["nll"], abs=1e-9)
        np.testing.assert_allclose(got["image_eces"], r["image_eces"], atol=1e-9)
    row = {r["method"]: r for r in doc["table"]}
    lo, hi = bootstrap_ci(ref["image_eces"], seed=0)[1:]
    assert row["uncalibrated"]["95% CI"] == f"[{lo:.3f}, {hi:.3f}]"
    miou = SegmentationMeter(C).update(logits, labels).compute()["miou"]
    assert doc["results"]["ts"]["miou"] == pytest.approx(miou)  # temperature keeps the argmax
    assert ref_ts["nll"] < ref["nll"]  # the stores are over-confident by construction; TS fixes it on test too


def test_apply_writes_calibrated_probabilities_that_evaluate_reads(stores, capsys):
    tmp, cal, test = stores
    assert main(["apply", "--cal", str(cal.path), "--input", str(test.path), "--output", str(tmp / "probs"),
                 "--probs"]) == 0
    out = LogitStore(tmp / "probs")
    assert out.meta["scores"] == "probs" and out.names == test.names and out.class_names == list("abcd")
    fitted = make_calibrator("ts").fit(cal)
    expected = fitted(torch.from_numpy(np.asarray(test.logits, np.float32))).softmax(1).half().float()
    torch.testing.assert_close(torch.from_numpy(np.asarray(out.logits, np.float32)), expected)
    assert main(["evaluate", str(tmp / "probs"), "--json", str(tmp / "ev.json")]) == 0
    probs = expected / expected.sum(1, keepdim=True)
    ref = CalibrationMeter(C, inputs="probs").update(probs, torch.from_numpy(np.asarray(test.labels, np.int64)))
    assert json.loads((tmp / "ev.json").read_text())["ece"] == pytest.approx(ref.compute()["ece"], abs=1e-9)


def _break(path, what):
    if what == "no labels":
        (path / "labels.npy").unlink()
    elif what == "label shape":
        np.save(path / "labels.npy", np.zeros((2, H, W), np.uint8))
    elif what == "not a store":
        for f in path.iterdir():
            f.unlink()


@pytest.mark.parametrize(("what", "message"), [
    ("no labels", "has no labels.npy"), ("label shape", "labels.npy"), ("not a store", "has no meta.json"),
])
def test_malformed_stores_are_refused_without_output(stores, capsys, what, message):
    tmp, cal, test = stores
    _break(test.path, what)
    before = listing(tmp)
    assert main(["calibrate", "--cal", str(cal.path), "--test", str(test.path), "--json", str(tmp / "o.json")]) == 2
    assert message in capsys.readouterr().err
    assert main(["apply", "--cal", str(cal.path), "--input", str(test.path), "--output", str(tmp / "o")]) == 2
    assert listing(tmp) == before


def test_mismatched_classes_unknown_names_and_existing_outputs_are_refused(stores, capsys):
    tmp, cal, test = stores
    other = LogitStore.from_arrays(tmp / "five", torch.randn(2, 5, H, W), torch.zeros(2, H, W, dtype=torch.long))
    before = listing(tmp)
    assert main(["calibrate", "--cal", str(other.path), "--test", str(test.path)]) == 2
    assert "has 5 classes but --test has 4" in capsys.readouterr().err
    assert main(["calibrate", "--cal", str(cal.path), "--test", str(test.path), "--calibrators", "ts,nope"]) == 2
    assert "unknown calibrator 'nope'" in capsys.readouterr().err
    assert main(["apply", "--cal", str(cal.path), "--input", str(test.path), "--output", str(cal.path)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert listing(tmp) == before


def test_apply_failing_midway_leaves_nothing(tmp_path, capsys):
    # Under-confident calibration logits give a temperature < 1, which pushes the huge logits of the test store's
    # last image (second batch) past float16's range: the write fails after a first batch was written.
    logits, labels = overconfident(6, 0)
    cal = LogitStore.from_arrays(tmp_path / "cal", logits / 9, labels)
    test_logits = torch.randn(9, C, H, W)
    test_logits[-1] *= 6e4 / test_logits[-1].abs().max()
    test = LogitStore.from_arrays(tmp_path / "test", test_logits, torch.zeros(9, H, W, dtype=torch.long))
    assert make_calibrator("ts").fit(cal).temperature_ < 1
    before = listing(tmp_path)
    assert main(["apply", "--cal", str(cal.path), "--input", str(test.path), "--output", str(tmp_path / "o")]) == 2
    assert "within +-65504" in capsys.readouterr().err
    assert listing(tmp_path) == before


class Stride4(torch.nn.Module):
    """A model predicting at 1/4 resolution and returning a dict, as torchvision's segmentation models do."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, C, 4, stride=4)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return {"out": self.conv(x)}


def test_dump_upsamples_any_stride_and_normalises(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 20)
    labels = torch.randint(0, C, (3, 16, 20))
    data = [(images[i], labels[i], f"img{i}") for i in range(3)]
    model = Stride4()
    store = dump_logits(model, data, tmp_path / "s", normalize="imagenet", batch_size=2, progress=False)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (images - mean) / std
    torch.testing.assert_close(torch.cat(model.seen), x)
    with torch.no_grad():
        expected = F.interpolate(model.conv(x), size=(16, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(torch.from_numpy(np.asarray(store.logits, np.float32)), expected.half().float())
    assert store.names == ["img0", "img1", "img2"] and np.array_equal(store.labels, labels.numpy())
    with pytest.raises(ValueError, match="must not exist"):
        dump_logits(model, data, tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="normalize must be"):
        dump_logits(model, data, tmp_path / "t", normalize="coco", progress=False)
    assert not (tmp_path / "t").exists()
