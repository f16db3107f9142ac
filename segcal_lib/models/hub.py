"""Pretrained segmentation models behind the ``hub`` extra: the paper's SegFormer B0-B5 through ``transformers``.

Every model here follows the library's model interface: it takes images (N, 3, H, W) in [0, 1] (it normalises
them itself, with ImageNet's mean and std as SegFormer was trained) and returns logits (N, C, H, W) at the input's
resolution (SegFormer predicts at 1/4; the logits are upsampled bilinearly), so whole-image, sliding-window and
multi-scale inference (:mod:`segcal_lib.inference`) and :class:`~segcal_lib.logit_store.LogitStore` apply unchanged.
Each has a ``cache_key`` naming its weights, so stored logits are keyed by it.

>>> model = create_hub_model("segformer-b0-ade20k")  # needs segcal_lib[hub]; downloads once  # doctest: +SKIP
>>> model(torch.rand(1, 3, 512, 512)).shape                                                  # doctest: +SKIP
torch.Size([1, 150, 512, 512])

Offline (CI) the same adapter wraps a SegFormer built from a small random configuration
(:func:`random_segformer`), so everything but the weights is tested without a network.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HUB_MODELS", "SegFormer", "create_hub_model", "list_hub_models", "random_segformer"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Hugging Face checkpoints of the paper's models (NVIDIA's SegFormer releases), by library name.
HUB_MODELS: dict[str, str] = {
    **{f"segformer-{b}-ade20k": f"nvidia/segformer-{b}-finetuned-ade-{640 if b == 'b5' else 512}-"
       f"{640 if b == 'b5' else 512}" for b in ("b0", "b1", "b2", "b3", "b4", "b5")},
    **{f"segformer-{b}-cityscapes": f"nvidia/segformer-{b}-finetuned-cityscapes-1024-1024"
       for b in ("b0", "b1", "b2", "b3", "b4", "b5")},
}

_OFFLINE_HINT = ("The weights could not be loaded: this needs the `hub` extra (pip install 'segcal_lib[hub]') and, "
                 "once, network access to huggingface.co (they are cached afterwards in ~/.cache/huggingface). "
                 "Offline, set HF_HUB_OFFLINE=1 after a first download, or use random_segformer() to test the wiring.")


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("SegFormer needs the `transformers` package: pip install 'segcal_lib[hub]'") from exc
    return transformers


class SegFormer(nn.Module):
    """A Hugging Face ``SegformerForSemanticSegmentation`` behind the library's model interface.

    Parameters
    ----------
    net : the ``transformers`` model.
    cache_key : names the weights in cache keys (e.g. the checkpoint id).

    Attributes
    ----------
    num_classes : int.
    class_names : tuple of str, from the model's ``id2label``.
    """

    def __init__(self, net: nn.Module, cache_key: str):
        super().__init__()
        self.net = net
        self.cache_key = cache_key
        cfg = net.config
        self.num_classes = int(cfg.num_labels)
        self.class_names = tuple(str(cfg.id2label.get(i, cfg.id2label.get(str(i), f"class_{i}")))
                                 for i in range(self.num_classes))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W) of images (N, 3, H, W) in [0, 1]."""
        logits = self.net(pixel_values=(images - self.mean) / self.std).logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def list_hub_models(pattern: str = "*") -> list[str]:
    """Names of the pretrained models matching a shell-style pattern, e.g. ``list_hub_models("*ade20k")``."""
    return sorted(n for n in HUB_MODELS if fnmatch.fnmatch(n, pattern))


def create_hub_model(name: str, *, revision: str | None = None, local_files_only: bool = False) -> SegFormer:
    """A pretrained model by name (see :data:`HUB_MODELS`), in eval mode on the CPU.

    Raises
    ------
    ValueError : unknown name.
    ImportError : ``transformers`` is not installed.
    OSError : the weights could not be had (offline, no cached copy), with a message saying what to do.
    """
    if name not in HUB_MODELS:
        raise ValueError(f"unknown hub model {name!r}; choose one of {list_hub_models()}")
    transformers = _transformers()
    try:
        net = transformers.SegformerForSemanticSegmentation.from_pretrained(
            HUB_MODELS[name], revision=revision, local_files_only=local_files_only)
    except OSError as exc:
        raise OSError(f"{name} ({HUB_MODELS[name]}): {_OFFLINE_HINT} ({exc})") from exc
    key = f"{name}@{revision or 'main'}"
    return SegFormer(net, key).eval()


def random_segformer(num_classes: int = 11, *, hidden_sizes=(16, 32, 64, 128), depths=(1, 1, 1, 1),
                     decoder_hidden_size: int = 64, seed: int = 0) -> SegFormer:
    """A SegFormer with a small random configuration (no download): B0's layout at a fraction of its width.

    The ``cache_key`` hashes the configuration and the seed, so its stored logits never mix with another's.
    """
    transformers = _transformers()
    cfg = transformers.SegformerConfig(
        num_labels=num_classes, hidden_sizes=list(hidden_sizes), depths=list(depths),
        decoder_hidden_size=decoder_hidden_size, num_attention_heads=[1, 2, 4, 8][:len(depths)],
        id2label={i: f"class_{i}" for i in range(num_classes)}, label2id={f"class_{i}": i for i in range(num_classes)})
    torch.manual_seed(seed)
    net = transformers.SegformerForSemanticSegmentation(cfg)
    blob = json.dumps({"config": cfg.to_diff_dict(), "seed": seed}, sort_keys=True, default=str)
    return SegFormer(net, f"segformer-random-{hashlib.sha256(blob.encode()).hexdigest()[:12]}").eval()
