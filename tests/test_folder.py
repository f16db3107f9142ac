"""Your own folder as a data set: class list, splits (seeded, grouped, persisted), aspect-keeping resizes, the decoded
image cache, and data identity in the cache keys of models and logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcal_lib import pipeline
from segcal_lib.data import FolderDataset, get_dataset, load_splits, make_splits, split_names, subset
from segcal_lib.models import config_key

CLASSES = ["sky", "road", "car"]


def make_folder(root: Path, n: int = 12, shape=(12, 16), per_seq: int = 3, classes=True) -> Path:
    """``n`` random pairs named ``seq<k>_<i>``; labels in {0, 1, 2, 255}."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k in range(n):
        stem = f"seq{k // per_seq}_{k % per_seq:03d}"
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        lab = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=shape)
        Image.fromarray(lab, "L").save(root / "labels" / f"{stem}.png")
    if classes:
        (root / "classes.txt").write_text("# one per line\n" + "\n".join(CLASSES) + "\n\n")
    return root


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCAL_CACHE", str(tmp_path / "cache"))
    return make_folder(tmp_path / "data")


def test_class_list_gives_num_classes_and_names(folder):
    ds = FolderDataset(folder)
    assert ds.num_classes == 3 and ds.class_names == tuple(CLASSES) and len(ds) == 12
    assert set(np.unique(ds[0].label.numpy())) <= {0, 1, 2, 255}
    (folder / "classes.txt").write_text("sky\nroad\n")  # labels hold 2: outside [0, 2)
    with pytest.raises(ValueError, match="outside"):
        FolderDataset(folder, cache=False)[0]


def test_folder_without_splits_refuses_a_split(folder):
    with pytest.raises(ValueError, match="'train' is not defined.*segcal split"):
        FolderDataset(folder, "train")
    with pytest.raises(ValueError, match="is not defined"):
        get_dataset("folder", "test", root=folder)
    assert len(get_dataset("folder", "all", root=folder)) == 12


def test_splits_are_disjoint_cover_everything_and_persist(folder):
    table = make_splits(folder, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)
    assert load_splits(folder / "splits.json") == table
    names = [n for v in table.values() for n in v]
    assert sorted(names) == sorted(FolderDataset(folder).names) and len(set(names)) == len(names)
    assert [len(v) for v in table.values()] == [6, 3, 3]
    for split, members in table.items():
        ds = FolderDataset(folder, split)
        assert ds.names == members and ds.num_classes == 3
    assert FolderDataset(folder, "cal").names == table["val"]
    with pytest.raises(ValueError, match="'holdout' is not in .* defines"):
        FolderDataset(folder, "holdout")
    # The same request again is a no-op; a different one needs overwrite.
    assert make_splits(folder, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=3) == table
    with pytest.raises(ValueError, match="already holds other splits"):
        make_splits(folder, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=4)
    assert make_splits(folder, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=4, overwrite=True) != table


def test_grouped_split_keeps_sequences_together_and_depends_only_on_seed_and_names():
    names = [f"cam{k % 7}_{k:04d}" for k in range(70)]
    table = split_names(names, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0, group=r"^(cam\d)_")
    for members in table.values():
        assert members
    owner = {n: s for s, v in table.items() for n in v}
    for g in range(7):
        assert len({owner[n] for n in names if n.startswith(f"cam{g}_")}) == 1
    assert split_names(names[::-1], {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0, group=r"^(cam\d)_") == table
    ungrouped = split_names(names, seed=1)
    assert [len(v) for v in ungrouped.values()] == [49, 10, 11] or [len(v) for v in ungrouped.values()] == [49, 11, 10]
    with pytest.raises(ValueError, match="cannot make 3 splits from 2 groups"):
        split_names(["a_1", "a_2", "b_1"], seed=0, group=r"^(\w)_")


@pytest.mark.parametrize(("fractions", "match"), [
    ({"train": 0.5, "test": 0.4}, "sum to 1"), ({"train": 1.2, "test": -0.2}, "positive"), ({"all": 1.0}, "other than"),
])
def test_bad_fractions_are_refused(fractions, match):
    with pytest.raises(ValueError, match=match):
        split_names(["a", "b", "c"], fractions)


def test_explicit_lists_are_checked(folder):
    with pytest.raises(ValueError, match="in both split"):
        make_splits(folder, lists={"train": ["seq0_000"], "test": ["seq0_000"]})
    with pytest.raises(ValueError, match="not in the data set"):
        make_splits(folder, lists={"train": ["nope"]})
    table = make_splits(folder, lists={"train": ["seq0_000", "seq0_001"], "test": ["seq3_002"]})
    assert FolderDataset(folder, "test").names == ["seq3_002"] and table["train"] == ["seq0_000", "seq0_001"]


def test_subset_forwards_class_metadata(folder):
    ds = FolderDataset(folder)
    sub = subset(ds, ["seq1_000", "seq0_002"], "val")
    assert sub.num_classes == 3 and sub.class_names == tuple(CLASSES) and sub.names == ["seq0_002", "seq1_000"]
    assert len(sub) == 2 and sub[0].name == "seq0_002"


def test_resize_keeps_the_aspect_ratio(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCAL_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "wide", n=1, shape=(20, 40), classes=False)
    img = Image.open(root / "images" / "seq0_000.png").convert("RGB")
    lab = Image.open(root / "labels" / "seq0_000.png")
    s = FolderDataset(root, resize="short:10", num_classes=3)[0]
    assert s.image.shape == (3, 10, 20)
    np.testing.assert_array_equal(s.label.numpy(), np.asarray(lab.resize((20, 10), Image.NEAREST)))
    p = FolderDataset(root, resize="pad:30x30", num_classes=3)[0]  # 20x40 fits as 15x30, padded below
    assert p.image.shape == (3, 30, 30)
    ref = np.asarray(img.resize((30, 15), Image.BILINEAR), dtype=np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(p.image[:, :15].numpy(), ref, atol=1e-6)
    assert (p.image[:, 15:] == 0).all() and (p.label[15:] == 255).all()
    np.testing.assert_array_equal(p.label[:15].numpy(), np.asarray(lab.resize((30, 15), Image.NEAREST)))
    for bad in ("short:0", "pad:30", "short:3x4", "squash:3x4", (0, 3)):
        with pytest.raises(ValueError, match="resize must be"):
            FolderDataset(root, resize=bad, num_classes=3)


def test_second_pass_reads_the_decoded_cache(folder, monkeypatch):
    first = [FolderDataset(folder, resize="pad:10x10")[i] for i in range(3)]
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    again = [FolderDataset(folder, resize="pad:10x10")[i] for i in range(3)]
    assert opened == []
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.image.numpy(), b.image.numpy()) and np.array_equal(a.label.numpy(), b.label.numpy())
    FolderDataset(folder, resize="pad:12x12")[0]  # another resize is another entry
    assert len(opened) == 2


def test_identity_and_cache_keys_follow_the_data(folder):
    make_splits(folder, seed=0)
    spec = pipeline.data_spec("folder", "train", "fast", root=folder)
    assert spec["resize"] == "pad:96x128" and spec["root"] == str(folder.resolve())
    cfg = pipeline.train_config("folder", "fast", data={"root": folder})
    assert cfg.num_classes == 3 and cfg.data == spec
    assert cfg.crop_size == 64  # the profile's crop-to-image ratio times the 96-pixel side
    # Re-splitting with another seed changes the training data, hence the model's cache key.
    make_splits(folder, seed=1, overwrite=True)
    cfg2 = pipeline.train_config("folder", "fast", data={"root": folder})
    assert cfg2.data["identity"] != spec["identity"] and config_key(cfg2) != config_key(cfg)
    # A file that changes size changes the identity; a spec made before refuses the changed folder.
    spec2 = pipeline.data_spec("folder", "train", "fast", root=folder)
    victim = folder / "images" / f"{FolderDataset(folder, 'train').names[0]}.png"
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="changed since this spec was made"):
        pipeline.load_dataset(spec2)
    assert json.dumps(spec2)  # JSON-serialisable


def test_crop_size_is_relative_to_the_image(folder):
    make_splits(folder, seed=0)
    cfg = pipeline.train_config("folder", "fast", data={"root": folder, "resize": "pad:48x64"})
    assert cfg.crop_size == 32
    assert pipeline.default_crop_size((360, 480), pipeline.get_profile("full")) == 320


def test_pipeline_trains_on_the_train_split_and_stores_other_splits(folder, capsys):
    from segcal_lib.config import get_profile

    tiny = get_profile("fast", image_size=(12, 16), crop_size=32, train_iters=2, batch_size=2,
                       model="mobilenetv3_small_fpn")
    table = make_splits(folder, seed=0)
    model, cfg = pipeline.get_model("folder", tiny, data={"root": folder}, progress=False)
    assert cfg.data["split"] == "train" and cfg.num_classes == 3 and cfg.crop_size == 32
    store = pipeline.get_logits(model, cfg, "test", tiny, progress=False)
    assert store.names == table["test"] and store.class_names == CLASSES
    assert store.logits.shape[1:] == (3, 12, 16)
    assert pipeline.get_logits(model, cfg, "cal", tiny, progress=False).names == table["val"]
