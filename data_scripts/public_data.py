#!/usr/bin/env python
"""Download (where scripted download is allowed) or unpack the paper's public data sets into the layouts that
``segcal_lib.data.public`` reads.

=============  =====================================================================  ===============================
data set       archives                                                               how
=============  =====================================================================  ===============================
ade20k         ADEChallengeData2016.zip (0.9 GB)                                      downloaded (MIT CSAIL)
cocostuff      val2017.zip, stuffthingmaps_trainval2017.zip (``--train``: train2017)  downloaded (COCO, Edinburgh)
cityscapes     leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip                  your own copies (login needed)
bdd100k        bdd100k_images_10k.zip, bdd100k_sem_seg_labels_trainval.zip            your own copies (login needed)
=============  =====================================================================  ===============================

Downloads use ``download_camvid.download``: they resume from a ``.part`` file, show progress, and are checked against
a SHA-256 when one is given (``--sha256 NAME=HEX``; none is pinned here because none could be checked from this
project's machines: the script prints each archive's SHA-256 so you can pin it). Offline, a clear message says which
file to fetch by hand and how to pass it (``--archive FILE``). Extraction is atomic: archives are unpacked into a
temporary folder beside ``--dest``, the layout is verified, and only then are its top-level folders moved into place,
so an interrupted run never leaves a half-filled data set.

Usage::

    python data_scripts/public_data.py ade20k --dest DIR
    python data_scripts/public_data.py cityscapes --archive leftImg8bit_trainvaltest.zip \\
        --archive gtFine_trainvaltest.zip --dest DIR
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import urllib.error
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parent))
from download_camvid import _check_sha, download, install_verified, sha256sum  # noqa: E402  (the one download machinery)


@dataclass(frozen=True)
class Source:
    """One data set: where its archives come from and what a complete unpacked copy holds."""

    name: str
    urls: tuple[str, ...]                       # empty: the reader supplies the archives (login-only downloads)
    keep: tuple[str, ...]                       # archive path prefixes to extract (after stripping ``strip``)
    required: tuple[str, ...]                   # folders that must hold files once unpacked
    strip: tuple[str, ...] = ()                 # leading folders to drop from member paths
    sha256: dict[str, str] = field(default_factory=dict)
    train_urls: tuple[str, ...] = ()


SOURCES = {
    "ade20k": Source(
        "ADE20K", ("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",),
        keep=("images/", "annotations/"), strip=("ADEChallengeData2016/",),
        required=("images/training", "images/validation", "annotations/training", "annotations/validation")),
    "cocostuff": Source(
        "COCO-Stuff-164K", ("http://images.cocodataset.org/zips/val2017.zip",
                            "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                            "stuffthingmaps_trainval2017.zip"),
        keep=("images/", "annotations/"), required=("images/val2017", "annotations/val2017"),
        train_urls=("http://images.cocodataset.org/zips/train2017.zip",)),
    "cityscapes": Source(
        "Cityscapes", (), keep=("leftImg8bit/", "gtFine/"), required=("leftImg8bit/val", "gtFine/val")),
    "bdd100k": Source(
        "BDD100K", (), keep=("images/10k/", "labels/sem_seg/masks/"), strip=("bdd100k/",),
        required=("images/10k/val", "labels/sem_seg/masks/val")),
}


def target_path(source_key: str, member: str, archive_name: str) -> str | None:
    """Where an archive member goes, relative to the data set's root; None to skip it.

    COCO's image zips hold ``val2017/*.jpg`` (-> ``images/val2017``) and the stuffthingmaps zip ``val2017/*.png``
    (-> ``annotations/val2017``); the other archives keep their paths below the stripped prefix.
    """
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts or member.endswith("/"):
        return None  # never write outside the destination
    src = SOURCES[source_key]
    rel = member
    for prefix in src.strip:
        if rel.startswith(prefix):
            rel = rel[len(prefix):]
    if source_key == "cocostuff":
        top = "annotations" if "stuffthingmaps" in archive_name else "images"
        rel = f"{top}/{rel}"
    return rel if rel.startswith(src.keep) else None


def _iter_members(archive: Path):
    """(member name, open file) pairs of a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if not name.endswith("/"):
                    with z.open(name) as fh:
                        yield name, fh
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if m.isfile():
                    with t.extractfile(m) as fh:
                        yield m.name, fh
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive")


def verify(source_key: str, root: Path) -> dict[str, int]:
    """Files per required folder under ``root``; ValueError when one is missing or empty."""
    counts = {}
    for rel in SOURCES[source_key].required:
        folder = root / rel
        n = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
        if not n:
            raise ValueError(f"{SOURCES[source_key].name}: {rel}/ is missing or empty under {root}; were all "
                             f"archives given?")
        counts[rel] = n
    return counts


def extract(source_key: str, archives: list[Path], dest: Path) -> dict[str, int]:
    """Unpack ``archives`` into ``dest`` atomically (temporary folder, verification, then rename); return counts."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for archive in archives:
            for name, fh in _iter_members(Path(archive)):
                rel = target_path(source_key, name, Path(archive).name)
                if rel is None:
                    continue
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(out, "wb") as dst:
                    shutil.copyfileobj(fh, dst)
        if dest.exists():  # earlier parts (e.g. another split) stay; folders unpacked now replace theirs
            for rel in SOURCES[source_key].required:
                if not (tmp / rel).exists() and (dest / rel).exists():
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    (dest / rel).rename(tmp / rel)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return install_verified(tmp, dest, lambda root: verify(source_key, root))


def fetch(url: str, folder: Path, sha256: str | None, quiet: bool = False) -> Path:
    """Download ``url`` into ``folder`` (resumable); an offline failure says what to do instead."""
    name = url.rsplit("/", 1)[-1]
    try:
        path = download(url, folder / name, sha256, quiet=quiet)
    except urllib.error.URLError as exc:
        raise SystemExit(f"could not download {url} ({exc.reason}). Are you offline? Download {name} by hand and "
                         f"pass it with --archive {name}; a partial download resumes on the next run.") from exc
    print(f"{name} SHA-256: {sha256sum(path)}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(SOURCES))
    parser.add_argument("--dest", type=Path, required=True, help="the data set's root folder")
    parser.add_argument("--archive", type=Path, action="append", default=[], help="a local archive (repeatable)")
    parser.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX",
                        help="expected SHA-256 of an archive, by file name (repeatable)")
    parser.add_argument("--train", action="store_true", help="also fetch the training images (COCO-Stuff)")
    parser.add_argument("--keep-archives", action="store_true")
    args = parser.parse_args(argv)
    src = SOURCES[args.dataset]
    sums = dict(src.sha256)
    sums.update(dict(s.split("=", 1) for s in args.sha256))
    archives = list(args.archive)
    for a in archives:
        if not a.is_file():
            raise SystemExit(f"--archive {a}: no such file")
        _check_sha(a, sums.get(a.name))
    downloaded = []
    if not archives:
        if not src.urls:
            raise SystemExit(f"{src.name} cannot be downloaded by a script (its site needs a login). "
                             f"Download the archives yourself and pass each with --archive.")
        urls = src.urls + (src.train_urls if args.train else ())
        args.dest.parent.mkdir(parents=True, exist_ok=True)
        downloaded = [fetch(u, args.dest.parent, sums.get(u.rsplit("/", 1)[-1])) for u in urls]
        archives = downloaded
    counts = extract(args.dataset, archives, args.dest)
    if not args.keep_archives:
        for a in downloaded:
            a.unlink()
    print(f"{src.name} ready in {args.dest}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
