"""Seeded train/val/test splits of one folder, persisted to JSON, and subsets that keep their class metadata.

>>> names = [f"seq{i // 10}_{i % 10:03d}" for i in range(40)]
>>> table = split_names(names, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0, group=r"^(seq\\d+)_")
>>> sorted(len(v) for v in table.values())
[10, 10, 20]

With ``group`` the frames of one sequence go to the same split (frames of one video are nearly identical; splitting
them would put near-copies of test images in the training set). The splits file records the seed, fractions, group
pattern and the lists themselves, so a split is reproduced exactly by reading the file, and changing it changes the
data identity that keys trained models and stored logits.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset

from segcal_lib.fileio import atomic_write

__all__ = ["DEFAULT_FRACTIONS", "SplitSubset", "load_splits", "make_splits", "split_names", "subset"]

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
SPLITS_FORMAT = 1
_RESERVED = ("all", "cal")


class SplitSubset(Subset):
    """A :class:`torch.utils.data.Subset` that forwards the data set's metadata: ``num_classes``, ``class_names``,
    ``palette`` and ``ignore_index`` (so class-count checks still run), and ``names`` of the kept items."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], split: str | None = None):
        super().__init__(dataset, list(indices))
        self.split = split

    def __getattr__(self, name):
        if name in ("num_classes", "class_names", "palette", "ignore_index"):
            return getattr(self.dataset, name)
        raise AttributeError(name)

    @property
    def names(self) -> list[str]:
        all_names = _names_of(self.dataset)
        return [all_names[i] for i in self.indices]


def _names_of(dataset) -> list[str]:
    names = getattr(dataset, "names", None)
    if names is None:
        raise ValueError(f"dataset must have a `names` attribute (one stable name per item), "
                         f"got {type(dataset).__name__}")
    return list(names)


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(fractions, Mapping) or not fractions:
        raise ValueError(f"fractions must be a non-empty dict {{split: fraction}}, got {fractions!r}")
    out = {}
    for k, v in fractions.items():
        if not isinstance(k, str) or not k or k in _RESERVED:
            raise ValueError(f"split names must be non-empty strings other than {_RESERVED}, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"fractions must be positive numbers, got {k}={v!r}")
        out[k] = float(v)
    if abs(sum(out.values()) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {sum(out.values()):.6g} ({out})")
    return out


def _groups(names: Sequence[str], group: str | None) -> dict[str, list[str]]:
    """Names by group key: the pattern's first capture group (or whole match); unmatched names are their own group."""
    if group is None:
        return {n: [n] for n in names}
    try:
        pattern = re.compile(group)
    except re.error as exc:
        raise ValueError(f"group must be a regular expression, got {group!r}: {exc}") from exc
    out: dict[str, list[str]] = {}
    for n in names:
        m = pattern.search(n)
        key = ("g:" + (m.group(1) if m.groups() else m.group(0))) if m else "n:" + n
        out.setdefault(key, []).append(n)
    return out


def split_names(names: Sequence[str], fractions: Mapping[str, float] | None = None, seed: int = 0,
                group: str | None = None) -> dict[str, list[str]]:
    """Assign ``names`` to splits at random (seeded), whole groups at a time.

    Parameters
    ----------
    names : distinct item names (e.g. file stems).
    fractions : ``{split: fraction}`` summing to 1; default :data:`DEFAULT_FRACTIONS` (0.7 / 0.15 / 0.15).
    seed : the assignment depends only on the seed and the set of names (not their order).
    group : optional regular expression; names with the same first capture group (or match) stay together.

    Returns
    -------
    ``{split: sorted names}`` in the order of ``fractions``. Groups are dealt in a seeded random order, each to the
    split furthest below its target count, so counts are within one group of ``fraction * len(names)``. Every split
    gets at least one group when there are at least as many groups as splits.
    """
    fractions = _check_fractions(fractions if fractions is not None else DEFAULT_FRACTIONS)
    names = sorted(str(n) for n in names)
    if len(set(names)) != len(names):
        raise ValueError("names must be distinct")
    groups = _groups(names, group)
    keys = sorted(groups)
    if len(keys) < len(fractions):
        raise ValueError(f"cannot make {len(fractions)} splits from {len(keys)} groups of images "
                         f"({len(names)} names{', group=' + repr(group) if group else ''})")
    order = np.random.default_rng(seed).permutation(len(keys))
    splits = list(fractions)
    target = np.array([fractions[s] * len(names) for s in splits])
    count = np.zeros(len(splits))
    out: dict[str, list[str]] = {s: [] for s in splits}
    for rank, k in enumerate(order):
        members = groups[keys[k]]
        empty = [j for j in range(len(splits)) if count[j] == 0]
        remaining = len(order) - rank
        # Keep one group for each split still empty; otherwise the split most below its target.
        j = empty[0] if empty and remaining <= len(empty) else int(np.argmax(target - count))
        out[splits[j]].extend(members)
        count[j] += len(members)
    return {s: sorted(v) for s, v in out.items()}


def _check_lists(lists: Mapping[str, Sequence[str]], names: Sequence[str]) -> dict[str, list[str]]:
    if not isinstance(lists, Mapping) or not lists:
        raise ValueError("lists must be a non-empty dict {split: list of names}")
    known, seen, out = set(names), {}, {}
    for split, items in lists.items():
        if not isinstance(split, str) or not split or split in _RESERVED:
            raise ValueError(f"split names must be non-empty strings other than {_RESERVED}, got {split!r}")
        items = [str(x) for x in items]
        unknown = sorted(set(items) - known)
        if unknown:
            raise ValueError(f"lists[{split!r}] names {len(unknown)} items not in the data set, e.g. {unknown[:3]}")
        for x in items:
            if x in seen:
                raise ValueError(f"{x!r} is in both split {seen[x]!r} and split {split!r}")
            seen[x] = split
        out[split] = sorted(items)
    return out


def make_splits(source, fractions: Mapping[str, float] | None = None, *, lists: Mapping[str, Sequence[str]] |
                None = None, seed: int = 0, group: str | None = None, path: str | os.PathLike | None = None,
                overwrite: bool = False) -> dict[str, list[str]]:
    """Make (and optionally save) the splits of a data set or of a list of names.

    Parameters
    ----------
    source : a data set with ``names`` (e.g. ``FolderDataset(root)``), a folder path in the default layout
        (``images/`` and ``labels/``), or a sequence of names.
    fractions, seed, group : as in :func:`split_names`; ignored when ``lists`` is given.
    lists : explicit ``{split: names}``; names must exist and be in one split only (others stay unassigned).
    path : write the splits here as JSON (atomically). Default: ``<folder>/splits.json`` when ``source`` is a folder.
    overwrite : replace an existing file that holds different splits (else ``ValueError``; an identical request
        returns the existing splits).

    Returns
    -------
    ``{split: sorted names}``.
    """
    if isinstance(source, (str, os.PathLike)):
        from segcal_lib.data.datasets import ImageFolderSegmentation
        from segcal_lib.data.folder import DEFAULT_SPLITS

        root = Path(source)  # the default layout; pass a FolderDataset for other folder names
        names = ImageFolderSegmentation(root / "images", root / "labels").names
        path = path if path is not None else root / DEFAULT_SPLITS
    elif isinstance(source, Dataset) or hasattr(source, "names"):
        names = _names_of(source)
    else:
        names = [str(n) for n in source]
    if lists is not None:
        table = _check_lists(lists, names)
        request = {"lists": True}
    else:
        table = split_names(names, fractions, seed, group)
        request = {"fractions": _check_fractions(fractions or DEFAULT_FRACTIONS), "seed": seed, "group": group}
    if path is not None:
        path = Path(path)
        doc = {"format": SPLITS_FORMAT, **request, "n_items": len(names), "splits": table}
        if path.is_file() and not overwrite:
            old = load_splits(path)
            if old == table:
                return table
            raise ValueError(f"{str(path)!r} already holds other splits; pass overwrite=True (--overwrite) to replace "
                             f"them (models and logits keyed by the old splits stay in the cache)")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as fh:
            json.dump(doc, fh, indent=1)
    return table


def load_splits(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a splits file written by :func:`make_splits`: ``{split: names}``; checks that no name is in two splits."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"splits file {str(path)!r} is not readable JSON: {exc}") from exc
    table = doc.get("splits") if isinstance(doc, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
        raise ValueError(f"splits file {str(path)!r} must hold {{'splits': {{name: [items]}}}}")
    seen: dict[str, str] = {}
    for split, items in table.items():
        for x in items:
            if x in seen:
                raise ValueError(f"splits file {str(path)!r} puts {x!r} in both {seen[x]!r} and {split!r}")
            seen[x] = split
    return {s: [str(x) for x in v] for s, v in table.items()}


def subset(dataset: Dataset, names: Sequence[str], split: str | None = None) -> SplitSubset:
    """The items of ``dataset`` with these names, in the data set's order, as a :class:`SplitSubset`."""
    all_names = _names_of(dataset)
    wanted = set(names)
    missing = sorted(wanted - set(all_names))
    if missing:
        raise ValueError(f"names not in the data set: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return SplitSubset(dataset, [i for i, n in enumerate(all_names) if n in wanted], split)
