"""Training curves recorded during training (segcal_lib.models.train.evaluate) and stored by train_or_load."""

import sys

import torch
import torch.nn.functional as F

from segcal_lib.metrics import SegmentationMeter
from segcal_lib.models import train, train_or_load
from segcal_lib.models.train import evaluate
from tests.test_models import Blobs, tiny_cfg


def test_evaluation_during_training_changes_nothing_and_records_curves():
    cfg = tiny_cfg(iters=10)
    data = Blobs()
    _, plain = train(cfg, data, device="cpu", progress=False)
    model, hist = train(cfg, data, device="cpu", progress=False, eval_sets={"val": Blobs(n=3, seed=1)},
                        eval_every=4)
    assert hist["loss"] == plain["loss"]  # evaluating draws no random numbers and leaves BN statistics alone
    assert hist["curves"]["step"] == [0, 4, 8, 10]
    assert len(hist["curves"]["val_loss"]) == len(hist["curves"]["val_miou"]) == 4
    # The last point is the trained model evaluated by a direct computation.
    val = Blobs(n=3, seed=1)
    images = torch.stack([s.image for s in val.items])
    labels = torch.stack([s.label for s in val.items])
    with torch.no_grad():
        logits = model(images)
    ref_loss = F.cross_entropy(logits, labels, ignore_index=255).item()
    ref_miou = SegmentationMeter(3).update(logits.argmax(1), labels).compute()["miou"]
    assert abs(hist["curves"]["val_loss"][-1] - ref_loss) < 1e-5
    assert abs(hist["curves"]["val_miou"][-1] - ref_miou) < 1e-9
    again = evaluate(model, val, "cpu", batch_size=2)  # batching does not change the result
    assert abs(again["loss"] - ref_loss) < 1e-5 and not model.training


def test_evaluation_sets_are_read_once_for_all_the_curve_points(monkeypatch):
    class Counted(Blobs):
        reads = 0

        def __getitem__(self, i):
            Counted.reads += 1
            return super().__getitem__(i)

    cfg = tiny_cfg(iters=12)
    _, hist = train(cfg, Blobs(), device="cpu", progress=False, eval_sets={"val": Counted(n=3, seed=1)},
                    eval_every=2)
    # 7 evaluations; each image read once, and the first once more to size the copy
    assert len(hist["curves"]["step"]) == 7 and Counted.reads == 3 + 1
    training = sys.modules["segcal_lib.models.train"]  # the module (segcal_lib.models.train is also a function)
    monkeypatch.setattr(training, "_kept_in_memory", lambda data: data)  # read at every evaluation
    _, direct = train(cfg, Blobs(), device="cpu", progress=False, eval_sets={"val": Counted(n=3, seed=1)},
                      eval_every=2)
    assert Counted.reads == 4 + 7 * 3 and hist["curves"] == direct["curves"]  # the same curves, exactly


def test_train_or_load_stores_the_curves(tmp_path):
    cfg = tiny_cfg(iters=4)
    model = train_or_load(cfg, Blobs(), root=tmp_path, progress=False, verbose=False,
                          eval_sets=lambda: {"train": Blobs(n=2)})
    curves = model.train_meta["history"]["curves"]
    assert curves["step"][0] == 0 and curves["step"][-1] == 4 and len(curves["train_loss"]) == len(curves["step"])
    loaded = train_or_load(cfg, Blobs(), root=tmp_path, progress=False, verbose=False)
    assert loaded.train_meta["history"]["curves"] == curves
