"""LogitStore: float16 round trip, lazy batches, pixel sampling (ignore, seed, stratification), build-once caching."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from segcal_lib.data.base import IGNORE_INDEX, Sample
from segcal_lib.logit_store import LogitStore, store_key

torch.set_num_threads(1)

N, C, H, W = 5, 4, 12, 16


@pytest.fixture()
def arrays():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, C, H, W, generator=g) * 5
    labels = torch.randint(0, C, (N, H, W), generator=g)
    labels[:, :4] = IGNORE_INDEX  # the top third of every image is ignored
    labels[2] = IGNORE_INDEX  # and one image entirely
    return logits, labels


@pytest.fixture()
def store(tmp_path, arrays):
    logits, labels = arrays
    return LogitStore.from_arrays(tmp_path / "s", logits, labels, names=[f"im{i}" for i in range(N)],
                                  class_names=["a", "b", "c", "d"])


def test_round_trip_is_float16_rounding(store, arrays, tmp_path):
    logits, labels = arrays
    assert len(store) == N and store.num_classes == C
    assert store.logits.dtype == np.float16 and store.labels.dtype == np.uint8
    assert isinstance(store.logits, np.memmap)
    assert store.names == [f"im{i}" for i in range(N)] and store.class_names == ["a", "b", "c", "d"]
    got_logits = torch.cat([lg for lg, _ in store.iter_batches(batch_size=2)])
    got_labels = torch.cat([lb for _, lb in store.iter_batches(batch_size=2)])
    assert got_logits.dtype == torch.float32 and got_labels.dtype == torch.int64
    assert torch.equal(got_logits, logits.half().float())
    assert torch.equal(got_labels, labels)
    reopened = LogitStore(tmp_path / "s")
    assert torch.equal(reopened[3][0], logits[3].half().float())
    assert reopened.meta["shape"] == [N, C, H, W]


def test_sampling_excludes_ignored_pixels_and_matches_the_store(store):
    logits, labels, index = store.sample_pixels(300, seed=0, return_index=True)
    assert logits.shape == (300, C) and logits.dtype == torch.float32 and labels.dtype == torch.int64
    assert (labels != IGNORE_INDEX).all()
    assert len({tuple(r) for r in index.tolist()}) == 300  # without replacement
    i, y, x = index.T
    assert (y >= 4).all() and (i != 2).all()
    assert torch.equal(labels, torch.from_numpy(store.labels[i.numpy(), y.numpy(), x.numpy()].astype(np.int64)))
    stored = torch.from_numpy(store.logits[i.numpy(), :, y.numpy(), x.numpy()].astype(np.float32))
    assert torch.equal(logits, stored)


def test_sampling_is_deterministic_by_seed(store):
    a, la = store.sample_pixels(100, seed=7)
    b, lb = store.sample_pixels(100, seed=7)
    c, _ = store.sample_pixels(100, seed=8)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


def test_sampling_covers_the_valid_pixels_uniformly(store):
    valid = int((store.labels != IGNORE_INDEX).sum())
    _, _, index = store.sample_pixels(valid // 2, seed=1, return_index=True)
    per_image = torch.bincount(index[:, 0], minlength=N).float()
    # four images with 8x16 valid pixels each, one with none: about 64 each
    assert per_image[2] == 0 and (per_image[[0, 1, 3, 4]] - 64).abs().max() < 25


@pytest.mark.parametrize("n,fraction", [(200, 0.5), (101, 0.3)])
def test_stratified_sampling_gives_the_requested_split(store, n, fraction):
    logits, labels = store.sample_pixels(n, seed=3, stratify_by_correctness=True, wrong_fraction=fraction)
    wrong = int((logits.argmax(1) != labels).sum())
    assert len(labels) == n and wrong == round(n * fraction)
    assert (labels != IGNORE_INDEX).all()


def test_stratified_sampling_short_of_one_group_warns(tmp_path):
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 0] = 1.0  # predicts class 0 everywhere
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, :2] = 1  # two mispredicted pixels
    st = LogitStore.from_arrays(tmp_path / "s", logits, labels)
    with pytest.warns(UserWarning, match="only 2 mispredicted"):
        lg, lb = st.sample_pixels(10, seed=0, stratify_by_correctness=True)
    assert len(lb) == 10 and int((lg.argmax(1) != lb).sum()) == 2


def test_asking_for_too_many_pixels_returns_all_with_a_warning(store):
    valid = int((store.labels != IGNORE_INDEX).sum())
    with pytest.warns(UserWarning, match="exceeds"):
        _, labels = store.sample_pixels(10 * valid, seed=0)
    assert len(labels) == valid
    with pytest.raises(ValueError, match="n must be"):
        store.sample_pixels(0)


def test_write_validates_and_leaves_no_partial_store(tmp_path, arrays):
    logits, labels = arrays
    bad = labels.clone()
    bad[0, 5, 5] = C  # out of range, not ignore
    with pytest.raises(ValueError, match="labels must lie in"):
        LogitStore.from_arrays(tmp_path / "bad", logits, bad)
    with pytest.raises(ValueError, match="float16"):
        LogitStore.from_arrays(tmp_path / "big", logits * 1e5, labels)
    with pytest.raises(ValueError, match="logits"):
        LogitStore.from_arrays(tmp_path / "shape", logits[0], labels[0])
    assert list(tmp_path.iterdir()) == []  # temporary folders removed
    LogitStore.from_arrays(tmp_path / "ok", logits, labels)
    with pytest.raises(ValueError, match="must not exist"):
        LogitStore.from_arrays(tmp_path / "ok", logits, labels)


# ------------------------------------------------------------------------------------------------------- build-or-load
class Tiny(Dataset):
    num_classes = 3
    class_names = ("x", "y", "z")

    def __len__(self):
        return 6

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return Sample(torch.rand(3, 10, 14, generator=g), torch.randint(0, 3, (10, 14), generator=g), f"t{i}")


class CountingModel(nn.Module):
    def __init__(self, delay: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.calls, self.delay = 0, delay

    def forward(self, x):
        self.calls += 1
        time.sleep(self.delay)
        return self.conv(x)


def test_build_or_load_builds_once(tmp_path, capsys):
    model = CountingModel()
    kw = dict(model_key="toy", data_spec={"name": "tiny"}, split="val", root=tmp_path, progress=False)
    first = LogitStore.build_or_load(model=model, dataset=Tiny(), inference_kwargs={"mode": "whole"}, **kw)
    assert "computing logits" in capsys.readouterr().out and model.calls > 0
    calls = model.calls
    # Defaults filled in: {} and {"mode": "whole"} name the same store; the factories are not called when it exists.
    second = LogitStore.build_or_load(model=lambda: pytest.fail("model built"),
                                      dataset=lambda: pytest.fail("data built"), inference_kwargs={}, **kw)
    assert "loaded cached logits" in capsys.readouterr().out and model.calls == calls
    assert second.path == first.path and second.names == [f"t{i}" for i in range(6)]
    assert second.class_names == ["x", "y", "z"] and second.meta["settings"]["mode"] == "whole"
    expected = model.eval()(torch.stack([Tiny()[i].image for i in range(6)])).detach()
    assert torch.equal(torch.cat([lg for lg, _ in second.iter_batches(4)]), expected.half().float())


def test_store_key_separates_settings_models_data_and_splits():
    base = store_key("m", {"d": 1}, "val", {})
    assert base == store_key("m", {"d": 1}, "val", {"mode": "whole", "flip": False, "batch_size": 99})
    others = {store_key("m2", {"d": 1}, "val", {}), store_key("m", {"d": 2}, "val", {}),
              store_key("m", {"d": 1}, "test", {}), store_key("m", {"d": 1}, "val", {"flip": True}),
              store_key("m", {"d": 1}, "val", {"mode": "slide", "crop_size": 8})}
    assert base not in others and len(others) == 5
    with pytest.raises(ValueError, match="unknown keys"):
        store_key("m", {}, "val", {"flipp": True})


def test_concurrent_builders_compute_once(tmp_path):
    # fcntl locks conflict between separate open() calls even within one process, so threads exercise the lock.
    models = [CountingModel(delay=0.05), CountingModel(delay=0.05)]
    stores = [None, None]

    def job(k):
        stores[k] = LogitStore.build_or_load("toy", {"name": "tiny"}, "val", models[k], Tiny(), root=tmp_path,
                                             progress=False, verbose=False)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(m.calls > 0 for m in models) == [False, True]
    assert stores[0].path == stores[1].path and len(stores[0]) == 6
