"""Regression tests of issue #8: every failure seen when the library was fed bad input or damaged caches.

Each test reproduces one item of the issue's "Seen" list; it failed before the fix and passes after.
"""

from __future__ import annotations

import ast
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from segcal_lib import config, pipeline
from segcal_lib.data.base import IGNORE_INDEX, Sample
from segcal_lib.data.datasets import ImageFolderSegmentation, find_camvid
from segcal_lib.fileio import CacheCorruptionWarning, CorruptCacheError
from segcal_lib.inference import predict_logits, window_starts
from segcal_lib.logit_store import LogitStore, store_key
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter, segmentation_metrics
from segcal_lib.models import TrainConfig, config_key, model_paths, train_or_load
from segcal_lib.models.train import train_model
from segcal_lib.plots import prediction_panels

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TINY = "mobilenetv3_small_fpn"


class Toy(Dataset):
    """``n`` random (image, label) pairs; ``image_scale``/``label_fn`` let a test break them on purpose."""

    num_classes = 3
    class_names = ("a", "b", "c")

    def __init__(self, n=4, size=(16, 20), image_scale=1.0, label_fn=None):
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(n):
            image = torch.rand(3, *size, generator=g) * image_scale
            label = torch.randint(0, 3, size, generator=g)
            if label_fn is not None:
                label = label_fn(label)
            self.items.append(Sample(image, label, f"toy{i}"))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tiny_cfg(**kw):
    base = dict(model=TINY, num_classes=3, data={"name": "toy"}, crop_size=16, iters=2, batch_size=2)
    base.update(kw)
    return TrainConfig(**base)


def _caught(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in rec if issubclass(w.category, CacheCorruptionWarning)]


# ------------------------------------------------------------------------------------ corrupt cache entries
CKPT_DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "zero-byte": lambda b: b"",
    "garbage": lambda b: b"\x80\x02not a checkpoint" * 10,
}


@pytest.mark.parametrize("damage", sorted(CKPT_DAMAGE))
def test_damaged_checkpoint_is_reported_and_rebuilt(tmp_path, damage, capsys):
    cfg = tiny_cfg()
    first = train_or_load(cfg, Toy(), device="cpu", progress=False, root=tmp_path)
    ckpt = model_paths(config_key(cfg), tmp_path)["ckpt"]
    ckpt.write_bytes(CKPT_DAMAGE[damage](ckpt.read_bytes()))
    capsys.readouterr()
    again, caught = _caught(lambda: train_or_load(cfg, Toy(), device="cpu", progress=False, root=tmp_path))
    assert len(caught) == 1 and str(ckpt) in str(caught[0].message)
    assert "training" in capsys.readouterr().out
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the rebuilt model is the same model (CPU training is deterministic)
    _, caught = _caught(lambda: train_or_load(cfg, Toy(), device="cpu", progress=False, root=tmp_path))
    assert not caught and "loaded cached model" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "missing train_time_s"])
def test_damaged_model_metadata_is_reported_and_rebuilt(tmp_path, damage, capsys):
    cfg = tiny_cfg()
    train_or_load(cfg, Toy(), device="cpu", progress=False, root=tmp_path)
    meta = model_paths(config_key(cfg), tmp_path)["meta"]
    if damage == "truncated":
        meta.write_text(meta.read_text()[:40])
    else:
        d = json.loads(meta.read_text())
        del d["train_time_s"]
        meta.write_text(json.dumps(d))
    capsys.readouterr()
    _, caught = _caught(lambda: train_or_load(cfg, Toy(), device="cpu", progress=False, root=tmp_path))
    assert len(caught) == 1 and str(meta) in str(caught[0].message)
    assert "training" in capsys.readouterr().out
    assert json.loads(meta.read_text())["train_time_s"] >= 0


class ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


def _store(root, **kw):
    return LogitStore.build_or_load("toy", {"name": "toy"}, "val", ToyModel(), Toy(n=5), root=root, progress=False,
                                    **kw)


def test_truncated_logits_are_reported_with_their_path_and_rebuilt(tmp_path, capsys):
    store = _store(tmp_path)
    path = store.path / "logits.npy"
    expected = np.array(store.logits)
    del store
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptCacheError, match="logits.npy"):
        LogitStore(path.parent)
    rebuilt, caught = _caught(lambda: _store(tmp_path))
    assert len(caught) == 1 and str(path) in str(caught[0].message)
    assert np.array_equal(np.array(rebuilt.logits), expected)


def test_labels_of_another_length_are_detected(tmp_path):
    store = _store(tmp_path)
    labels = np.array(store.labels[:3])
    path = store.path / "labels.npy"
    del store
    np.save(path, labels)
    with pytest.raises(CorruptCacheError, match="labels.npy"):
        LogitStore(path.parent)
    rebuilt, caught = _caught(lambda: _store(tmp_path))
    assert len(caught) == 1 and rebuilt.labels.shape[0] == 5


# ------------------------------------------------------------------------------------ silent wrong numbers
def test_segmentation_meter_rejects_float_labels_and_nan_scores():
    y = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        SegmentationMeter(3).update(y, y.float() + 0.7)
    with pytest.raises(ValueError, match="NaN"):
        SegmentationMeter(3).update(torch.full((2, 3, 4, 4), math.nan), y)


def test_store_from_arrays_rejects_float_labels(tmp_path):
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        LogitStore.from_arrays(tmp_path / "s", torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 1.6))


@pytest.mark.parametrize(("kw", "match"), [
    (dict(image_scale=255.0), r"must have values in \[0, 1\]"),
    (dict(label_fn=lambda y: y.masked_fill(y == 1, 256)), "must lie in"),
    (dict(label_fn=lambda y: y.masked_fill(y == 1, -1)), "must lie in"),
    (dict(label_fn=lambda y: y.masked_fill(y == 1, 5)), "must lie in"),
])
def test_training_rejects_bad_images_and_labels(kw, match):
    cfg = tiny_cfg(num_classes=3)
    with pytest.raises(ValueError, match=match):
        train_model(torch.nn.Conv2d(3, 3, 1), Toy(**kw), cfg, device="cpu", progress=False)


def test_nan_images_are_rejected_by_inference():
    images = torch.rand(1, 3, 8, 8)
    images[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="finite"):
        predict_logits(ToyModel(), images)


def test_16_bit_grey_image_is_scaled_by_its_range(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    grey = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "lbl" / "a.png")
    image = ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl", num_classes=2)[0].image
    np.testing.assert_allclose(image[0].numpy(), grey / 65535, rtol=1e-6)
    assert torch.equal(image[0], image[2])


@pytest.mark.parametrize(("args", "match"), [((10, 4, 7), "stride"), ((10, 4, 0), "stride")])
def test_window_starts_rejects_gapping_or_zero_strides(args, match):
    with pytest.raises(ValueError, match=match):
        window_starts(*args)


# ------------------------------------------------------------------------------------ obscure crashes
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4)])
def test_probs_meter_accepts_empty_batches_and_reports_nan(shape):
    scores = torch.full(shape, 1 / 3)
    labels = torch.zeros(shape[0], *shape[2:], dtype=torch.long)
    res = CalibrationMeter(3, inputs="probs").update(scores, labels).compute()
    assert math.isnan(res["ece"]) and res["n_pixels"] == 0


@pytest.mark.parametrize("bad", [None, 1.5, "255", True])
def test_meters_reject_a_bad_ignore_index(bad):
    for meter in (CalibrationMeter, SegmentationMeter):
        with pytest.raises(ValueError, match="ignore_index"):
            meter(3, ignore_index=bad)


def test_store_of_an_empty_dataset_raises_clearly(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        LogitStore.build_or_load("toy", {"name": "none"}, "val", ToyModel(), Toy(n=0), root=tmp_path,
                                 progress=False)


@pytest.mark.parametrize("which", ["img", "lbl"])
def test_truncated_png_error_names_the_file(tmp_path, which):
    for d in ("img", "lbl"):
        (tmp_path / d).mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
        tmp_path / "img" / "a.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 2, (40, 40), dtype=np.uint8)).save(tmp_path / "lbl" / "a.png")
    path = tmp_path / which / "a.png"
    path.write_bytes(path.read_bytes()[:-200])
    ds = ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl", num_classes=2)
    with pytest.raises(OSError, match=str(path)):
        ds[0]


def test_hidden_and_sidecar_files_are_skipped(tmp_path):
    for d in ("img", "lbl"):
        (tmp_path / d).mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "lbl" / "a.png")
    for d in ("img", "lbl"):
        (tmp_path / d / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        (tmp_path / d / ".hidden.png").write_bytes(b"")
    ds = ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl", num_classes=2)
    assert ds.names == ["a"] and ds[0].image.shape == (3, 4, 4)


@pytest.mark.parametrize("scales", [[math.inf], 1.0, "1", [], [0.0], [-1.0], [True]])
def test_bad_scales_raise_value_error(scales):
    with pytest.raises(ValueError, match="scales"):
        predict_logits(ToyModel(), torch.rand(1, 3, 8, 8), scales=scales)
    with pytest.raises(ValueError, match="scales"):
        store_key("m", {}, "val", {"scales": scales})


def test_segmentation_metrics_rejects_non_tensors():
    with pytest.raises(ValueError, match="preds must be a torch tensor"):
        segmentation_metrics([1, 2], torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------------ cache keys that lie
def test_shift_without_severity_is_an_error():
    with pytest.raises(ValueError, match="severity"):
        pipeline.data_spec("synthetic", "val", "fast", shift="fog")
    with pytest.raises(ValueError, match="shift"):
        pipeline.data_spec("synthetic", "val", "fast", severity=2)


def test_split_aliases_and_window_pairs_are_canonical():
    assert pipeline.data_spec("synthetic", "cal", "fast") == pipeline.data_spec("synthetic", "val", "fast")
    a = store_key("m", {}, "cal", {"mode": "slide", "crop_size": 64})
    assert a == store_key("m", {}, "val", {"mode": "slide", "crop_size": (64, 64), "stride": [42, 42]})
    assert store_key("m", {}, "val", {"mode": "whole", "crop_size": None}) == store_key("m", {}, "val", {})
    assert store_key("m", {}, "val", {"scales": [1]}) == store_key("m", {}, "val", {"scales": (1.0,)})


def _folder(root: Path, stems):
    for d in ("img", "lbl"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for k, s in enumerate(stems):
        Image.fromarray(np.full((16, 16, 3), 20 * k, np.uint8)).save(root / "img" / f"{s}.png")
        Image.fromarray(np.full((16, 16), k % 3, np.uint8)).save(root / "lbl" / f"{s}.png")
    return ImageFolderSegmentation(root / "img", root / "lbl", num_classes=3)


def test_resplit_folder_with_the_same_description_is_retrained(tmp_path, capsys):
    cfg = tiny_cfg(data={"name": "my folder", "split": "train"})
    first = train_or_load(cfg, _folder(tmp_path / "d", ["a", "b"]), device="cpu", progress=False,
                          root=tmp_path / "c")
    assert "training" in capsys.readouterr().out
    second = train_or_load(cfg, _folder(tmp_path / "d", ["a", "b", "c"]), device="cpu", progress=False,
                           root=tmp_path / "c")
    assert "training" in capsys.readouterr().out and second.cache_key != first.cache_key
    (tmp_path / "d" / "img" / "c.png").unlink()
    (tmp_path / "d" / "lbl" / "c.png").unlink()
    third = train_or_load(cfg, ImageFolderSegmentation(tmp_path / "d" / "img", tmp_path / "d" / "lbl", num_classes=3),
                          device="cpu", progress=False, root=tmp_path / "c")
    assert "loaded cached model" in capsys.readouterr().out and third.cache_key == first.cache_key


def test_store_of_a_resplit_folder_is_recomputed(tmp_path):
    kw = dict(model_key="toy", data_spec={"name": "my folder"}, split="val", model=ToyModel(), root=tmp_path / "c",
              progress=False, verbose=False)
    first = LogitStore.build_or_load(dataset=_folder(tmp_path / "d", ["a", "b"]), **kw)
    second = LogitStore.build_or_load(dataset=_folder(tmp_path / "d", ["a", "b", "c"]), **kw)
    assert first.path != second.path and (len(first), len(second)) == (2, 3)


def test_camvid_spec_names_the_data_root_and_files(tmp_path, monkeypatch):
    from test_data_datasets import make_camvid  # the fixture CamVid writer

    a, b = make_camvid(tmp_path / "a"), make_camvid(tmp_path / "b")
    monkeypatch.setenv("SEGCAL_CAMVID", str(a))
    spec_a = pipeline.data_spec("camvid", "val", "fast")
    assert spec_a["root"] == str(a.resolve())
    monkeypatch.setenv("SEGCAL_CAMVID", str(b))
    spec_b = pipeline.data_spec("camvid", "val", "fast")
    assert spec_b["root"] == str(b.resolve()) and spec_a != spec_b
    (b / "val" / "0016E5_07961.png").write_bytes((b / "val" / "0016E5_07961.png").read_bytes() + b"\0")
    assert pipeline.data_spec("camvid", "val", "fast")["files"] != spec_b["files"]
    assert len(pipeline.load_dataset(spec_b)) == 2


# ------------------------------------------------------------------------------------ devices
def _numpy_calls_without_cpu(source: str) -> list[int]:
    """Lines calling ``x.numpy()`` where ``x`` is not ``y.cpu()`` (a GPU tensor cannot be viewed as NumPy)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "numpy":
            recv = node.func.value
            while isinstance(recv, ast.Call) and isinstance(recv.func, ast.Attribute) and recv.func.attr in (
                    "float", "double", "detach", "contiguous", "copy"):
                recv = recv.func.value
            if not (isinstance(recv, ast.Call) and isinstance(recv.func, ast.Attribute) and recv.func.attr == "cpu"):
                bad.append(node.lineno)
    return bad


def test_no_numpy_without_cpu_in_the_library():
    offenders = {str(p.relative_to(REPO)): _numpy_calls_without_cpu(p.read_text())
                 for p in (REPO / "segcal_lib").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_prediction_panels_move_to_the_cpu(monkeypatch):
    # A CUDA tensor refuses .numpy(); emulate one on this CPU machine by refusing it on any tensor not copied by .cpu().
    logits, label = torch.randn(3, 4, 4), torch.randint(0, 3, (4, 4))
    panels = prediction_panels(torch.rand(3, 4, 4), label, logits, np.eye(3, dtype=np.uint8) * 255)
    assert [t for t, _ in panels] == ["image", "label", "prediction", "confidence", "error"]
    np.testing.assert_allclose(panels[3][1], logits.softmax(0).amax(0).numpy())


def test_segmentation_meter_has_the_calibration_meters_device_api():
    for meter in (SegmentationMeter(3), CalibrationMeter(3)):
        assert meter.device == torch.device("cpu")
        assert meter.reset("cpu").to("cpu") is meter and meter.device.type == "cpu"
        assert hasattr(meter, "merge") and hasattr(meter, "sync")
    a, b = SegmentationMeter(3), SegmentationMeter(3)
    y = torch.randint(0, 3, (2, 4, 4))
    a.update(y, y)
    b.update(y, (y + 1) % 3)
    merged = SegmentationMeter(3).merge(a).merge(b)
    assert torch.equal(merged.confusion, a.confusion + b.confusion)


def test_meter_states_for_mps_inputs_stay_on_the_cpu():
    # MPS has no float64: states requested there are kept on the CPU (inputs are copied per update).
    for meter in (CalibrationMeter(3), SegmentationMeter(3)):
        assert meter.reset("mps").device == torch.device("cpu")
        assert meter.to("mps").device == torch.device("cpu")


def test_mps_does_not_choose_the_full_profile(monkeypatch):
    monkeypatch.delenv(config.PROFILE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert config.profile_name() == "fast"
    assert not config.has_gpu()


def test_training_does_not_sync_the_host_every_step(monkeypatch):
    # Count the reads of tensor values by the host made by the training loop itself (each waits for the device).
    calls = {"n": 0}

    def counting(real):
        def wrapper(self, *args):
            if sys._getframe(1).f_code.co_name == "train_model":
                calls["n"] += 1
            return real(self, *args)
        return wrapper

    for name in ("item", "tolist", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    counts = {}
    for iters in (40, 80):
        calls["n"] = 0
        history = train_model(torch.nn.Conv2d(3, 3, 1), Toy(n=2, size=(8, 8)), tiny_cfg(iters=iters, crop_size=8),
                              device="cpu", progress=False)
        assert len(history["loss"]) == iters and all(math.isfinite(v) for v in history["loss"])
        counts[iters] = calls["n"]
    # Before the fix: two reads per step (the all-ignore test and loss.item()); now one per 10 steps.
    assert counts[80] - counts[40] <= 40 / 10, counts


# ------------------------------------------------------------------------------------ CamVid look-up
def test_find_camvid_honours_the_environment(tmp_path, monkeypatch):
    from test_data_datasets import make_camvid

    root = make_camvid(tmp_path / "cv")
    monkeypatch.setenv("SEGCAL_CAMVID", str(root))
    assert find_camvid() == root
    monkeypatch.setenv("SEGCAL_CAMVID", str(tmp_path / "missing"))
    assert find_camvid() is None


def test_model_report_uses_the_one_look_up():
    source = (REPO / "benchmarks" / "model_report.py").read_text()
    assert "find_camvid" in source and "shared_camvid_root" not in source


def test_labels_float_store_and_ignore_are_consistent():
    # ignore_index outside the class range is fine; inside it would silently drop a class.
    with pytest.raises(ValueError, match="ignore_index"):
        CalibrationMeter(3, ignore_index=1)
    assert IGNORE_INDEX == 255
