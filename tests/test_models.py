"""Models, training loop and train-or-load cache: registry, shapes, augmentation, determinism, caching, locking."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import time
import warnings

import pytest
import timm
import torch
from torch.utils.data import Dataset

from segcal_lib.data.base import IGNORE_INDEX, Sample
from segcal_lib.models import (
    SegNet,
    TrainConfig,
    config_key,
    count_parameters,
    create_model,
    get_model_config,
    list_models,
    train,
    train_or_load,
)
from segcal_lib.models import cache as cache_mod
from segcal_lib.models import segnet as segnet_mod
from segcal_lib.models.train import augment, poly_lr_factor

torch.set_num_threads(1)

TINY = "mobilenetv3_small_fpn"


class Blobs(Dataset):
    """Disks of class-coloured pixels on a grey background, with a few ignore pixels; deterministic by seed."""

    num_classes = 3
    class_names = ("background", "red", "green")
    ignore_index = IGNORE_INDEX

    def __init__(self, n: int = 8, size: tuple[int, int] = (32, 40), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        h, w = size
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        colours = torch.tensor([[0.5, 0.5, 0.5], [0.9, 0.1, 0.1], [0.1, 0.9, 0.1]])
        self.items = []
        for i in range(n):
            label = torch.zeros(h, w, dtype=torch.long)
            for _ in range(3):
                c = int(torch.randint(1, 3, (), generator=g))
                cy, cx = float(torch.rand((), generator=g)) * h, float(torch.rand((), generator=g)) * w
                label[(yy - cy) ** 2 + (xx - cx) ** 2 < (h / 4) ** 2] = c
            image = (colours[label].permute(2, 0, 1) + 0.1 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
            label[0, :3] = IGNORE_INDEX
            self.items.append(Sample(image.float(), label, f"blobs/{i}"))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(model=TINY, num_classes=3, data={"name": "blobs", "n": 8}, crop_size=32, iters=12, batch_size=4,
                lr=2e-3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------------------------ registry
def test_registry_spans_sizes_and_families():
    names = list_models()
    assert len(names) >= 4
    assert len({get_model_config(n).family for n in names}) >= 2
    counts = {}
    for name in names:
        # Counting parameters on the backbone config alone is slow for big nets; building them is still < 1 s each.
        counts[name] = count_parameters(create_model(name, num_classes=11))
    assert min(counts.values()) < 2e6
    assert 20e6 < max(counts.values()) < 30e6
    assert counts["resnet18_fpn"] < counts["resnet34_fpn"] < counts["resnet50_fpn"]


def test_unknown_model_and_bad_num_classes_raise():
    with pytest.raises(ValueError, match="model must be one of"):
        create_model("no_such_net", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        create_model(TINY, num_classes=0)


def test_half_width_resnet_has_half_the_channels_and_no_imagenet_weights():
    full, half = create_model("resnet10t_fpn", 11), create_model("resnet10t_half_fpn", 11)
    assert half.backbone.feature_info.channels() == [c // 2 for c in full.backbone.feature_info.channels()]
    assert count_parameters(half) < 0.3 * count_parameters(full)
    assert get_model_config("resnet10t_half_fpn").describe() == "resnet10t channels=32/64/128/256 stem_width=16"
    assert get_model_config("resnet10t_fpn").describe() == "resnet10t"
    with pytest.warns(RuntimeWarning, match="no ImageNet weights"):
        assert create_model("resnet10t_half_fpn", 11, pretrained=True).pretrained_loaded is False


@pytest.mark.parametrize("name", ["mobilenetv3_small_fpn", "convnext_atto_fpn", "resnet10t_fpn", "resnet10t_half_fpn"])
def test_forward_shape_on_odd_sizes(name):
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 37, 53))
    assert out.shape == (2, 5, 37, 53) and out.dtype == torch.float32
    assert isinstance(model, SegNet) and model.model_name == name and model.pretrained_loaded is False


def test_normalisation_lives_inside_the_model():
    model = create_model(TINY, num_classes=3)
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(3, 16, 16))


def test_pretrained_unavailable_falls_back_with_warning(monkeypatch):
    monkeypatch.setattr(segnet_mod, "_cached_hub_weights", lambda hub_id: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="random initialisation"):
        model = create_model(TINY, num_classes=3, pretrained=True)
    assert model.pretrained_loaded is False
    assert time.perf_counter() - start < 10  # no network retries


def test_pretrained_loads_from_local_cache(monkeypatch, tmp_path):
    torch.manual_seed(123)
    reference = timm.create_model("mobilenetv3_small_100")
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    monkeypatch.setattr(segnet_mod, "_cached_hub_weights", lambda hub_id: str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model = create_model(TINY, num_classes=3, pretrained=True)
    assert model.pretrained_loaded is True
    assert torch.equal(model.backbone.conv_stem.weight, reference.conv_stem.weight)


# -------------------------------------------------------------------------------------------------------- augmentation
def test_augment_shapes_padding_and_determinism():
    image, label = torch.rand(3, 20, 30), torch.randint(0, 3, (20, 30))
    out_img, out_lab = augment(image, label, crop_size=48, scale_range=(1.0, 1.0), generator=torch.Generator())
    assert out_img.shape == (3, 48, 48) and out_lab.shape == (48, 48) and out_lab.dtype == torch.int64
    # A 20x30 image in a 48x48 crop: everything outside the image is ignore, and no image pixel is.
    assert int((out_lab == IGNORE_INDEX).sum()) == 48 * 48 - 20 * 30
    a = augment(image, label, 16, generator=torch.Generator().manual_seed(5))
    b = augment(image, label, 16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}


def test_augment_flips_image_and_label_together():
    image = torch.rand(3, 8, 8)
    label = torch.arange(64).view(8, 8) % 3
    seen_flip = seen_plain = False
    for seed in range(20):
        img, lab = augment(image, label, 8, scale_range=(1.0, 1.0), generator=torch.Generator().manual_seed(seed))
        if torch.equal(img, image):
            assert torch.equal(lab, label)
            seen_plain = True
        else:
            assert torch.equal(img, image.flip(-1)) and torch.equal(lab, label.flip(-1))
            seen_flip = True
    assert seen_flip and seen_plain


def test_poly_schedule_with_warmup():
    iters, warmup = 100, 10
    f = [poly_lr_factor(s, iters, warmup) for s in range(iters + 1)]
    assert f[0] == pytest.approx(0.01)
    assert max(f) == pytest.approx(f[warmup]) and f[warmup] > 0.85
    assert all(a >= b for a, b in zip(f[warmup:], f[warmup + 1:], strict=False))
    assert f[-1] == 0.0


def test_train_config_validation_and_round_trip():
    cfg = tiny_cfg()
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="crop_size"):
        tiny_cfg(crop_size=0)
    with pytest.raises(ValueError, match="model must be one of"):
        tiny_cfg(model="nope")
    with pytest.raises(ValueError, match="scale_range"):
        tiny_cfg(scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="JSON"):
        tiny_cfg(data={"x": object()})
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**cfg.to_dict(), "colour": 1})


# ------------------------------------------------------------------------------------------------------------ training
def test_training_is_deterministic_and_lowers_the_loss():
    data = Blobs()
    cfg = tiny_cfg(iters=20)
    model_a, hist_a = train(cfg, data, device="cpu", progress=False)
    _, hist_b = train(cfg, data, device="cpu", progress=False)
    assert hist_a["loss"] == hist_b["loss"]  # bitwise on a CPU
    assert len(hist_a["loss"]) == len(hist_a["lr"]) == 20
    assert sum(hist_a["loss"][-5:]) < sum(hist_a["loss"][:5])
    assert not model_a.training and hist_a["num_params"] == count_parameters(model_a)
    assert hist_a["pretrained_loaded"] is False


def test_training_does_not_depend_on_workers_or_memory_cache():
    cfg = tiny_cfg(iters=3)
    _, ref = train(cfg, Blobs(), device="cpu", progress=True)  # the progress bar must not change anything either
    _, lazy = train(cfg, Blobs(), device="cpu", progress=False, cache_in_memory=False)
    _, workers = train(cfg, Blobs(), device="cpu", progress=False, num_workers=1)
    assert ref["loss"] == lazy["loss"] == workers["loss"]


def test_train_rejects_mismatched_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        train(tiny_cfg(num_classes=4), Blobs(n=2), device="cpu", progress=False)


# ------------------------------------------------------------------------------------------------------- train-or-load
def test_train_or_load_trains_once_then_loads(tmp_path, monkeypatch, capsys):
    calls = {"train": 0, "factory": 0}
    real_train = cache_mod.train

    def counting_train(*args, **kwargs):
        calls["train"] += 1
        return real_train(*args, **kwargs)

    def factory():
        calls["factory"] += 1
        return Blobs()

    monkeypatch.setattr(cache_mod, "train", counting_train)
    cfg = tiny_cfg()
    first = train_or_load(cfg, factory, device="cpu", progress=False, root=tmp_path)
    assert "training" in capsys.readouterr().out
    second = train_or_load(cfg, factory, device="cpu", progress=False, root=tmp_path)
    assert "loaded cached model" in capsys.readouterr().out
    assert calls == {"train": 1, "factory": 1}  # the data set is not even built when loading
    assert first.cache_key == second.cache_key == config_key(cfg)
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    meta = json.loads((tmp_path / f"{config_key(cfg)}.json").read_text())
    assert meta["iters"] == 12 and len(meta["history"]["loss"]) == 12
    assert meta["num_params"] == count_parameters(second) and meta["pretrained_loaded"] is False
    assert meta["config"] == cfg.to_dict()
    assert not list(tmp_path.glob("*.tmp"))  # no temporary files left


def test_config_key_depends_on_every_field():
    base = tiny_cfg()
    keys = {config_key(base)}
    for change in [dict(iters=13), dict(seed=1), dict(lr=1e-3), dict(data={"name": "blobs", "n": 9}),
                   dict(crop_size=48), dict(pretrained=True), dict(hflip=False), dict(model="resnet10t_fpn")]:
        keys.add(config_key(base.replace(**change)))
    assert len(keys) == 9
    assert config_key(base) == config_key(tiny_cfg())


def test_config_key_depends_on_the_architecture(monkeypatch):
    cfg = tiny_cfg()
    before = config_key(cfg)
    wider = dataclasses.replace(get_model_config(TINY), width=get_model_config(TINY).width * 2)
    monkeypatch.setitem(segnet_mod._REGISTRY, TINY, wider)
    assert config_key(cfg) != before


def _concurrent_job(root, out_path, barrier):
    torch.set_num_threads(1)
    cfg = tiny_cfg(data={"name": "concurrent"}, iters=20)
    with open(out_path, "w") as fh, contextlib.redirect_stdout(fh):
        barrier.wait(timeout=60)  # both processes ask for the model at the same moment
        model = train_or_load(cfg, Blobs, device="cpu", progress=False, root=root)
        print("KEY", model.cache_key)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_concurrent_processes_train_once(tmp_path):
    # fork, not spawn: the children inherit the imported torch and skip seconds of imports.
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"out{i}.txt" for i in range(2)]
    procs = [ctx.Process(target=_concurrent_job, args=(tmp_path / "cache", out, barrier)) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    stdout = "".join(out.read_text() for out in outs)
    assert stdout.count("training ") == 1
    assert stdout.count("loaded cached model") == 1
    assert len({line for line in stdout.splitlines() if line.startswith("KEY")}) == 1
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
