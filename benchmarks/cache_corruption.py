"""Corrupt every kind of cache entry in every way issue #8 lists, and show the library reporting and rebuilding it.

For each damage: build the entry (a tiny model in the model cache, a logit store), damage one file, ask for the entry
again, and print the warning the library gives and whether what it returns equals the original. Ends with the cost of
the check: SHA-256 throughput against a plain read of the same file, in one run.

    python benchmarks/cache_corruption.py            # about 20 s on two CPU cores; writes only to a temporary folder
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from segcal_lib.data.base import Sample
from segcal_lib.fileio import CacheCorruptionWarning, file_record
from segcal_lib.logit_store import LogitStore
from segcal_lib.models import TrainConfig, config_key, model_paths, train_or_load


class Toy(Dataset):
    num_classes, class_names = 3, ("a", "b", "c")

    def __init__(self, n: int = 5):
        g = torch.Generator().manual_seed(0)
        self.items = [Sample(torch.rand(3, 16, 20, generator=g), torch.randint(0, 3, (16, 20), generator=g), f"t{i}")
                      for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _meta_without(key: str):
    def damage(path: Path) -> None:
        d = json.loads(path.read_text())
        del d[key]
        path.write_text(json.dumps(d))
    return damage


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _fewer_labels(path: Path) -> None:
    np.save(path, np.load(path)[:3])  # a valid .npy holding 3 images where logits.npy holds 5


DAMAGES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "zero-byte": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(b"\x80\x02garbage" * 50),
    "bit flip": _flip_bit,
}
MODEL_CASES = [("checkpoint .pt", "ckpt", d) for d in DAMAGES] + [
    ("metadata .json", "meta", "truncated"), ("metadata .json", "meta", "missing train_time_s")]
STORE_CASES = [("logits.npy", "truncated"), ("logits.npy", "bit flip"), ("labels.npy", "3 of 5 images"),
               ("meta.json", "truncated"), ("meta.json", "missing build_time_s")]


def _ask(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    msgs = [str(w.message) for w in rec if issubclass(w.category, CacheCorruptionWarning)]
    return out, msgs


def _short(msg: str, root: Path) -> str:
    return msg.replace(str(root) + "/", "")


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = TrainConfig("mobilenetv3_small_fpn", num_classes=3, data={"name": "toy"}, crop_size=16, iters=2,
                          batch_size=2)
        quiet = dict(device="cpu", progress=False, root=root / "models", verbose=False)
        original = train_or_load(cfg, Toy(), **quiet).state_dict()
        paths = model_paths(config_key(cfg), root / "models")
        for what, which, damage in MODEL_CASES:
            fn = _meta_without("train_time_s") if damage == "missing train_time_s" else DAMAGES[damage]
            fn(paths[which])
            model, msgs = _ask(lambda: train_or_load(cfg, Toy(), **quiet))
            same = all(torch.equal(a, b) for a, b in zip(original.values(), model.state_dict().values(), strict=True))
            _, again = _ask(lambda: train_or_load(cfg, Toy(), **quiet))
            rows.append((f"model {what}", damage, msgs, same and not again))

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.conv = nn.Conv2d(3, 3, 1)

            def forward(self, x):
                return self.conv(x)

        def store():
            return LogitStore.build_or_load("toy", {"name": "toy"}, "val", Net(), Toy(), root=root / "logits",
                                            progress=False, verbose=False)

        first = store()
        expected, folder = np.array(first.logits), first.path
        del first
        for name, damage in STORE_CASES:
            fn = {"3 of 5 images": _fewer_labels, "missing build_time_s": _meta_without("build_time_s")}.get(
                damage) or DAMAGES[damage]
            fn(folder / name)
            rebuilt, msgs = _ask(store)
            same = np.array_equal(np.array(rebuilt.logits), expected) and len(rebuilt) == 5
            del rebuilt
            _, again = _ask(store)
            rows.append((f"logit store {name}", damage, msgs, same and not again))

        print(f"{'entry':28s} {'damage':22s} rebuilt & equal  reported as")
        for what, damage, msgs, ok in rows:
            shown = _short(msgs[0], root) if len(msgs) == 1 else f"{len(msgs)} warnings: {msgs}"
            print(f"{what:28s} {damage:22s} {'yes' if ok else 'NO':15s}  {shown}")
        caught = sum(len(m) == 1 and ok for *_, m, ok in rows)
        print(f"\n{caught} of {len(rows)} damaged entries reported once and rebuilt equal to the original")

        big = root / "big.bin"
        big.write_bytes(np.random.default_rng(0).bytes(256 << 20))
        t0 = time.perf_counter()
        with open(big, "rb") as fh:
            while fh.read(1 << 22):
                pass
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        file_record(big)
        t_hash = time.perf_counter() - t0
        gb = big.stat().st_size / 1e9
        print(f"check cost on {gb:.2f} GB (from the page cache): plain read {gb / t_read:.2f} GB/s, "
              f"read + SHA-256 {gb / t_hash:.2f} GB/s ({t_hash / t_read:.1f}x the read)")


if __name__ == "__main__":
    main()
