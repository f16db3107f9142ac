"""Segmentation networks: a timm backbone (``features_only``) and a light FPN head, created by name from a registry.

The registry holds configurations as data (:class:`SegNetConfig`); :func:`create_model` builds one, timm style::

    >>> from segcal_lib.models import create_model, list_models
    >>> model = create_model("resnet18_fpn", num_classes=11)   # doctest: +SKIP
    >>> model(images).shape                                    # images (N, 3, H, W) in [0, 1] -> (N, 11, H, W)

Registered models, with parameter counts (backbone + head) measured for ``num_classes=11`` with timm 1.0:

==========================  =====================  =====  ==========
name                        timm backbone          width  parameters
==========================  =====================  =====  ==========
``resnet10t_sixteenth_fpn`` resnet10t, 1/16 width      8      0.02 M
``resnet10t_eighth_fpn``    resnet10t, 1/8 width      16      0.08 M
``convnext_d8_fpn``         convnext_atto, dims 8+    16      0.16 M
``resnet10t_quarter_fpn``   resnet10t, 1/4 width      32      0.33 M
``convnext_d16_fpn``        convnext_atto, dims 16+   32      0.58 M
``mobilenetv3_small_fpn``   mobilenetv3_small_100     64      1.01 M
``convnext_d24_fpn``        convnext_atto, dims 24+   48      1.28 M
``resnet10t_half_fpn``      resnet10t, half width     64      1.30 M
``convnext_d32_fpn``        convnext_atto, dims 32+   64      2.25 M
``convnext_atto_fpn``       convnext_atto             96      3.52 M
``resnet10t_fpn``           resnet10t                 96      5.10 M
``convnext_pico_fpn``       convnext_pico            128      8.80 M
``resnet18_fpn``            resnet18                 128     11.45 M
``resnet34_fpn``            resnet34                 128     21.56 M
``resnet50_fpn``            resnet50                 256     25.09 M
==========================  =====================  =====  ==========

Two families (residual CNNs, ConvNeXt) plus a mobile net span about 0.02 M to 25 M parameters, so a chapter can ask
how calibration changes with capacity ("dims 16+": stage widths 16, 32, 64, 128 at ConvNeXt-Atto's depths).
:func:`count_parameters` prints the live numbers.

Pretrained weights: with ``pretrained=True`` the backbone starts from ImageNet weights when they can be had (the local
Hugging Face cache first, then a download when the hub is reachable and ``HF_HUB_OFFLINE`` is not set); otherwise it
starts from random weights with a warning. It never raises and never waits on a dead network for long. The model records
what happened in ``model.pretrained_loaded``.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FPNHead",
    "SegNet",
    "SegNetConfig",
    "count_parameters",
    "create_model",
    "get_model_config",
    "list_models",
    "register_model",
]

# Seconds to wait for a TCP connection to the weight host before giving up on a download. Without this probe an
# offline machine spends ~50 s in huggingface_hub's retries before timm fails.
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class SegNetConfig:
    """One registry entry: which timm backbone, which of its feature levels, and the head's width.

    Attributes
    ----------
    backbone : timm model name, created with ``features_only=True``.
    out_indices : indices of the backbone feature levels fed to the head, finest first (strides 4, 8, 16, 32).
    width : common channel count of the FPN laterals and the fused 3x3 conv.
    drop_rate : dropout probability before the classifier.
    family : a short tag ("mobilenet", "resnet", "convnext") so chapters can group models.
    backbone_kwargs : extra keyword arguments of ``timm.create_model`` as ``(name, value)`` pairs (a tuple keeps the
        frozen config hashable), e.g. ``(("channels", (32, 64, 128, 256)),)`` for a narrower ResNet.
    """

    backbone: str
    out_indices: tuple[int, ...]
    width: int
    drop_rate: float = 0.0
    family: str = ""
    backbone_kwargs: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The backbone's name with any non-default arguments, e.g. ``"resnet10t channels=32/64/128/256"``."""
        args = [f"{k}={'/'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in self.backbone_kwargs]
        return " ".join([self.backbone, *args])


_REGISTRY: dict[str, SegNetConfig] = {}


def register_model(name: str, cfg: SegNetConfig, overwrite: bool = False) -> None:
    """Add a configuration to the registry under ``name`` (``ValueError`` if taken, unless ``overwrite``)."""
    if not isinstance(cfg, SegNetConfig):
        raise ValueError(f"cfg must be a SegNetConfig, got {type(cfg).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = cfg


# Strides 4..32 for every entry: the stride-2 level of the CNNs costs memory at full resolution for little gain.
_STRIDE4_TO_32_CNN = (1, 2, 3, 4)
_STRIDE4_TO_32_CONVNEXT = (0, 1, 2, 3)
for _name, _cfg in {
    # Narrow variants for the capacity sweep on two CPU cores (chapter 4): the same depths, fewer channels.
    "resnet10t_sixteenth_fpn": SegNetConfig("resnet10t", _STRIDE4_TO_32_CNN, 8, family="resnet", backbone_kwargs=(
        ("channels", (4, 8, 16, 32)), ("stem_width", 4))),
    "resnet10t_eighth_fpn": SegNetConfig("resnet10t", _STRIDE4_TO_32_CNN, 16, family="resnet", backbone_kwargs=(
        ("channels", (8, 16, 32, 64)), ("stem_width", 8))),
    "resnet10t_quarter_fpn": SegNetConfig("resnet10t", _STRIDE4_TO_32_CNN, 32, family="resnet", backbone_kwargs=(
        ("channels", (16, 32, 64, 128)), ("stem_width", 8))),
    "convnext_d8_fpn": SegNetConfig("convnext_atto", _STRIDE4_TO_32_CONVNEXT, 16, family="convnext",
                                    backbone_kwargs=(("dims", (8, 16, 32, 64)),)),
    "convnext_d16_fpn": SegNetConfig("convnext_atto", _STRIDE4_TO_32_CONVNEXT, 32, family="convnext",
                                     backbone_kwargs=(("dims", (16, 32, 64, 128)),)),
    "convnext_d24_fpn": SegNetConfig("convnext_atto", _STRIDE4_TO_32_CONVNEXT, 48, family="convnext",
                                     backbone_kwargs=(("dims", (24, 48, 96, 192)),)),
    "convnext_d32_fpn": SegNetConfig("convnext_atto", _STRIDE4_TO_32_CONVNEXT, 64, family="convnext",
                                     backbone_kwargs=(("dims", (32, 64, 128, 256)),)),
    "mobilenetv3_small_fpn": SegNetConfig("mobilenetv3_small_100", _STRIDE4_TO_32_CNN, 64, family="mobilenet"),
    # ResNet-10-T at half width: on a CPU a step costs 0.4x the full-width one (measured, crop 64, batch 16), and twice
    # the steps in the same time fit the training data better than the wider net does. The fast profile's model.
    "resnet10t_half_fpn": SegNetConfig("resnet10t", _STRIDE4_TO_32_CNN, 64, family="resnet", backbone_kwargs=(
        ("channels", (32, 64, 128, 256)), ("stem_width", 16))),
    "convnext_atto_fpn": SegNetConfig("convnext_atto", _STRIDE4_TO_32_CONVNEXT, 96, family="convnext"),
    "resnet10t_fpn": SegNetConfig("resnet10t", _STRIDE4_TO_32_CNN, 96, family="resnet"),
    "convnext_pico_fpn": SegNetConfig("convnext_pico", _STRIDE4_TO_32_CONVNEXT, 128, family="convnext"),
    "resnet18_fpn": SegNetConfig("resnet18", _STRIDE4_TO_32_CNN, 128, family="resnet"),
    "resnet34_fpn": SegNetConfig("resnet34", _STRIDE4_TO_32_CNN, 128, family="resnet"),
    "resnet50_fpn": SegNetConfig("resnet50", _STRIDE4_TO_32_CNN, 256, family="resnet"),
}.items():
    register_model(_name, _cfg)


def list_models() -> list[str]:
    """Names of the registered segmentation models, in registration order (roughly by size)."""
    return list(_REGISTRY)


def get_model_config(name: str) -> SegNetConfig:
    """The registry entry for ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"model must be one of {list_models()}, got {name!r}")
    return _REGISTRY[name]


class FPNHead(nn.Module):
    """A light FPN decoder: lateral 1x1 convs to ``width``, top-down upsample-add, a fused 3x3 conv, a 1x1 classifier.

    Parameters
    ----------
    in_channels : channels of the feature levels, finest first.
    width : common channel count.
    num_classes : output channels.
    drop_rate : dropout before the classifier.

    Input: a list of feature maps, finest first, ``(N, in_channels[i], H_i, W_i)``. Output: logits ``(N, num_classes,
    H_0, W_0)`` at the finest level's resolution.
    """

    def __init__(self, in_channels: list[int], width: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        x = laterals[-1]
        for lat in reversed(laterals[:-1]):
            # Interpolate to the lateral's exact size: odd inputs give feature maps that are not exact halves.
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(self.fuse(x)))


class SegNet(nn.Module):
    """A timm backbone with an :class:`FPNHead`; takes images in [0, 1] and returns logits at the input size.

    ImageNet normalisation (the backbone's ``mean``/``std``) happens inside, so callers never normalise.

    Parameters
    ----------
    backbone : a timm model created with ``features_only=True``.
    num_classes : number of output classes.
    width, drop_rate : head settings (see :class:`FPNHead`).
    mean, std : per-channel normalisation constants.

    Attributes
    ----------
    model_name : registry name (set by :func:`create_model`).
    pretrained_loaded : True when the backbone started from ImageNet weights.

    Shapes: ``forward(images)`` maps float images ``(N, 3, H, W)`` in [0, 1] to float logits ``(N, num_classes, H, W)``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, width: int = 128, drop_rate: float = 0.0,
                 mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225)):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.backbone = backbone
        self.head = FPNHead(backbone.feature_info.channels(), width, num_classes, drop_rate)
        # Non-persistent: constants, not state; checkpoints then hold learnable weights and BN statistics only.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.num_classes = num_classes
        self.model_name = ""
        self.pretrained_loaded = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _reachable(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds (DNS included, via a thread)."""
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return False
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    # getaddrinfo has no timeout of its own; a daemon thread bounds the whole probe.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result)


def _cached_hub_weights(hf_hub_id: str) -> str | None:
    """Path of ``hf_hub_id``'s weight file in the local Hugging Face cache, or None (never touches the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _create_backbone(cfg: SegNetConfig, pretrained: bool) -> tuple[nn.Module, bool]:
    """Build the timm backbone; returns ``(backbone, pretrained_loaded)``. Falls back to random init with a warning."""
    kwargs = dict(features_only=True, out_indices=cfg.out_indices, **dict(cfg.backbone_kwargs))
    if not pretrained or cfg.backbone_kwargs:
        if pretrained:  # ImageNet weights exist for the standard widths only
            warnings.warn(f"no ImageNet weights for {cfg.backbone!r} with {dict(cfg.backbone_kwargs)}; using random "
                          "initialisation. model.pretrained_loaded is False.", RuntimeWarning, stacklevel=3)
        return timm.create_model(cfg.backbone, pretrained=False, **kwargs), False

    pcfg = timm.models.get_pretrained_cfg(cfg.backbone)
    hf_hub_id = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    reason = ""
    local = _cached_hub_weights(hf_hub_id) if hf_hub_id else None
    try:
        if local:
            model = timm.create_model(cfg.backbone, pretrained=True, pretrained_cfg_overlay={"file": local}, **kwargs)
            return model, True
        if _env_true("HF_HUB_OFFLINE"):
            reason = "HF_HUB_OFFLINE is set and the weights are not in the local Hugging Face cache"
        else:
            host = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hf_hub_id else getattr(pcfg, "url", "")
            if host and _reachable(host):
                return timm.create_model(cfg.backbone, pretrained=True, **kwargs), True
            reason = f"cannot reach {host or 'a weight host'} (offline?)"
    except Exception as exc:  # any failure to fetch or load weights means: fall back to random init
        reason = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"ImageNet weights for {cfg.backbone!r} are unavailable ({reason}); using random initialisation. "
                  "model.pretrained_loaded is False.", RuntimeWarning, stacklevel=3)
    return timm.create_model(cfg.backbone, pretrained=False, **kwargs), False


def create_model(name: str, num_classes: int, pretrained: bool = False) -> SegNet:
    """Create a registered segmentation model.

    Parameters
    ----------
    name : a name from :func:`list_models`, e.g. ``"resnet18_fpn"``.
    num_classes : number of output classes (the head's channels).
    pretrained : start the backbone from ImageNet weights if they can be had (see the module docstring); the head is
        always randomly initialised. ``model.pretrained_loaded`` says whether the weights were loaded.

    Returns
    -------
    SegNet mapping images ``(N, 3, H, W)`` in [0, 1] to logits ``(N, num_classes, H, W)``, in training mode on the CPU.
    """
    cfg = get_model_config(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    backbone, loaded = _create_backbone(cfg, bool(pretrained))
    pcfg = getattr(backbone, "pretrained_cfg", None) or {}
    mean = tuple(pcfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(pcfg.get("std", (0.229, 0.224, 0.225)))
    model = SegNet(backbone, num_classes, width=cfg.width, drop_rate=cfg.drop_rate, mean=mean, std=std)
    model.model_name = name
    model.pretrained_loaded = loaded
    return model
