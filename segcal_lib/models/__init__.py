"""Segmentation networks from timm backbones, their training loop and train-or-load cache.

>>> from segcal_lib.models import TrainConfig, list_models, train_or_load
>>> cfg = TrainConfig("resnet10t_fpn", num_classes=11, data={"name": "synthetic", "n": 192})   # doctest: +SKIP
>>> model = train_or_load(cfg, lambda: SyntheticScenes("train", n=192))                        # doctest: +SKIP
"""

from segcal_lib.models.cache import config_key, load_metadata, model_paths, train_or_load
from segcal_lib.models.segnet import (
    FPNHead,
    SegNet,
    SegNetConfig,
    count_parameters,
    create_model,
    get_model_config,
    list_models,
    register_model,
)
from segcal_lib.models.train import TrainConfig, augment, poly_lr_factor, train, train_model

__all__ = [
    "FPNHead",
    "SegNet",
    "SegNetConfig",
    "TrainConfig",
    "augment",
    "config_key",
    "count_parameters",
    "create_model",
    "get_model_config",
    "list_models",
    "load_metadata",
    "model_paths",
    "poly_lr_factor",
    "register_model",
    "train",
    "train_model",
    "train_or_load",
]
