"""Readers of ADE20K, Cityscapes, COCO-Stuff-164K and BDD100K on fixtures in each exact layout, and the data script's
archive layouts, checksum, interrupted and resumed downloads, atomic extraction and offline message."""

from __future__ import annotations

import importlib.util
import io
import sys
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcal_lib.data import ADE20K, BDD100K, Cityscapes, COCOStuff, get_dataset

REPO = Path(__file__).resolve().parents[1]
H, W = 6, 8


def _load_script(name: str):
    sys.path.insert(0, str(REPO / "data_scripts"))
    spec = importlib.util.spec_from_file_location(name, REPO / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


def _png(values) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.resize(np.asarray(values, np.uint8), (H, W)), "L").save(buf, "PNG")
    return buf.getvalue()


def _image(fmt: str = "PNG", seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


# Raw label values written per data set, and the train ids they must become.
CASES = {
    "ade20k": ([0, 1, 2, 150], [255, 0, 1, 149]),
    "cityscapes": ([0, 7, 26, 33, 9], [255, 0, 13, 18, 255]),
    "cocostuff": ([0, 11, 12, 181, 255], [0, 255, 11, 170, 255]),
    "bdd100k": ([0, 18, 255, 5], [0, 18, 255, 5]),
}

# Archive members of each data set, in the layout its real archives use (name -> bytes), for split "val".
def archive_members(key: str) -> dict[str, dict[str, bytes]]:
    raw = _png(CASES[key][0])
    if key == "ade20k":
        return {"ADEChallengeData2016.zip": {
            "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg": _image("JPEG"),
            "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png": raw,
            "ADEChallengeData2016/images/training/ADE_train_00000001.jpg": _image("JPEG", 1),
            "ADEChallengeData2016/annotations/training/ADE_train_00000001.png": raw,
            "ADEChallengeData2016/sceneCategories.txt": b"ADE_val_00000001 street\n"}}
    if key == "cityscapes":
        return {"leftImg8bit_trainvaltest.zip": {
                    "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png": _image(),
                    "README": b"x", "license.txt": b"x"},
                "gtFine_trainvaltest.zip": {
                    "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png": raw,
                    "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_color.png": _image(),
                    "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_instanceIds.png": raw,
                    "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_polygons.json": b"{}"}}
    if key == "cocostuff":
        return {"val2017.zip": {"val2017/000000000139.jpg": _image("JPEG")},
                "stuffthingmaps_trainval2017.zip": {"val2017/000000000139.png": raw,
                                                    "train2017/000000000009.png": raw}}
    return {"bdd100k_images_10k.zip": {"bdd100k/images/10k/val/7d2f7975-e0c1c5a7.jpg": _image("JPEG")},
            "bdd100k_sem_seg_labels_trainval.zip": {
                "bdd100k/labels/sem_seg/masks/val/7d2f7975-e0c1c5a7.png": raw,
                "bdd100k/labels/sem_seg/colormaps/val/7d2f7975-e0c1c5a7.png": _image()}}


def write_zips(key: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, members in archive_members(key).items():
        with zipfile.ZipFile(folder / name, "w") as z:
            for member, data in members.items():
                z.writestr(member, data)
        paths.append(folder / name)
    return paths


READERS = {"ade20k": ADE20K, "cityscapes": Cityscapes, "cocostuff": COCOStuff, "bdd100k": BDD100K}


@pytest.fixture
def script():
    return _load_script("public_data")


@pytest.mark.parametrize("key", sorted(READERS))
def test_unpacked_archives_read_with_train_ids(key, script, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCAL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / key
    counts = script.extract(key, write_zips(key, tmp_path / "zips"), root)
    assert all(counts.values())
    ds = get_dataset(key, "val", root=root)
    assert isinstance(ds, READERS[key]) and len(ds) == 1
    expected = np.resize(np.asarray(CASES[key][1], np.int64), (H, W))
    np.testing.assert_array_equal(ds[0].label.numpy(), expected)
    assert ds[0].image.shape == (3, H, W) and ds.num_classes == len(ds.class_names)
    assert ds.num_classes == {"ade20k": 150, "cityscapes": 19, "cocostuff": 171, "bdd100k": 19}[key]
    assert not (tmp_path / f"{key}.extracting").exists()


def test_reader_errors_say_how_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="public_data.py ade20k"):
        ADE20K(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="cityscapes-dataset.com"):
        Cityscapes(tmp_path, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        BDD100K(tmp_path, "test")


def test_incomplete_or_broken_archives_leave_the_destination_alone(script, tmp_path):
    zips = write_zips("cityscapes", tmp_path / "zips")
    dest = tmp_path / "cityscapes"
    dest.mkdir()
    (dest / "keep.txt").write_text("old")
    with pytest.raises(ValueError, match="gtFine/val/ is missing"):
        script.extract("cityscapes", zips[:1], dest)  # the labels' zip is missing
    broken = tmp_path / "broken.zip"
    broken.write_bytes(zips[1].read_bytes()[:200])
    with pytest.raises((ValueError, zipfile.BadZipFile, EOFError)):
        script.extract("cityscapes", [zips[0], broken], dest)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    assert not (tmp_path / "cityscapes.extracting").exists()


def test_members_cannot_escape_the_destination(script):
    assert script.target_path("bdd100k", "bdd100k/../../etc/passwd", "x.zip") is None
    assert script.target_path("bdd100k", "/abs/images/10k/val/a.jpg", "x.zip") is None
    assert script.target_path("ade20k", "ADEChallengeData2016/objectInfo150.csv", "x.zip") is None


class FakeResponse:
    """An HTTP response serving ``data`` from ``start``; fails after ``fail_after`` bytes when set."""

    def __init__(self, data: bytes, start: int, fail_after: int | None = None):
        self.data, self.pos, self.fail_after, self.sent = data, start, fail_after, 0
        self.status = 206 if start else 200
        self.headers = {"Content-Length": str(len(data) - start)}

    def read(self, n):
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise urllib.error.URLError("connection reset")
        block = self.data[self.pos:self.pos + min(n, 7)]
        self.pos += len(block)
        self.sent += len(block)
        return block

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_interrupted_download_resumes_and_is_checksummed(script, tmp_path, monkeypatch):
    camvid = sys.modules["download_camvid"]
    data = bytes(range(256)) * 4
    requests, fail = [], [True]

    def fake_urlopen(req, timeout=None):
        rng = req.headers.get("Range")
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        requests.append(start)
        failing, fail[0] = fail[0], False  # only the first connection breaks
        return FakeResponse(data, start, fail_after=100 if failing else None)

    monkeypatch.setattr(camvid, "urlopen", fake_urlopen)
    dest = tmp_path / "a.zip"
    sha = script.sha256sum.__globals__["hashlib"].sha256(data).hexdigest()
    with pytest.raises(urllib.error.URLError):
        camvid.download("http://x/a.zip", dest, sha, quiet=True)
    part = tmp_path / "a.zip.part"
    assert 0 < part.stat().st_size < len(data) and not dest.exists()
    camvid.download("http://x/a.zip", dest, sha, quiet=True)
    assert requests == [0, part_size := requests[1]] and part_size > 0
    assert dest.read_bytes() == data and not part.exists()
    requests.clear()
    with pytest.raises(ValueError, match="SHA-256"):
        camvid.download("http://x/b.zip", tmp_path / "b.zip", "0" * 64, quiet=True)
    assert requests == [0] and not (tmp_path / "b.zip.part").exists() and not (tmp_path / "b.zip").exists()


def test_offline_download_says_what_to_do(script, tmp_path, monkeypatch, capsys):
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(sys.modules["download_camvid"], "urlopen", offline)
    with pytest.raises(SystemExit, match="Are you offline.*--archive ADEChallengeData2016.zip"):
        script.main(["ade20k", "--dest", str(tmp_path / "ade")])
    with pytest.raises(SystemExit, match="needs a login"):
        script.main(["cityscapes", "--dest", str(tmp_path / "cs")])
    zips = write_zips("bdd100k", tmp_path / "zips")
    with pytest.raises(ValueError, match="SHA-256"):
        script.main(["bdd100k", "--dest", str(tmp_path / "b"), *sum([["--archive", str(z)] for z in zips], []),
                     "--sha256", f"{zips[0].name}={'0' * 64}"])
    assert script.main(["bdd100k", "--dest", str(tmp_path / "b"), *sum([["--archive", str(z)] for z in zips], [])]) == 0
    assert "BDD100K ready" in capsys.readouterr().out


def test_chapter_11_fixture_is_read_as_ade20k(tmp_path, monkeypatch):
    from segcal_lib.data import SyntheticScenes
    from segcal_lib.reproduce import choose_setting, write_ade20k_fixture

    monkeypatch.setenv("SEGCAL_CACHE", str(tmp_path / "cache"))
    root = write_ade20k_fixture(tmp_path / "ade", n=3, size=(32, 48))
    ds, scenes = ADE20K(root, "val"), SyntheticScenes("test", n=3, size=(32, 48))
    for k in range(3):  # scene ids are shifted by one in the files (0 = "other") and back by the reader
        assert np.array_equal(ds[k].label.numpy(), scenes[k].label.numpy())
    setting = choose_setting(5, prefer_real=False)
    assert not setting.real and "stand-in" in setting.describe() and setting.max_images == 5
