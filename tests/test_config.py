"""Profiles, device pick, cache folder and seeding."""

import random

import numpy as np
import pytest
import torch

from segcal_lib import config


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "full")
    assert config.profile_name() == "full" and config.get_profile().name == "full"
    monkeypatch.setenv(config.PROFILE_ENV, " FAST ")
    assert config.get_profile().name == "fast"
    monkeypatch.setenv(config.PROFILE_ENV, "medium")
    with pytest.raises(ValueError, match="SEGCAL_PROFILE"):
        config.profile_name()


def test_default_profile_follows_the_device(monkeypatch):
    monkeypatch.delenv(config.PROFILE_ENV, raising=False)
    monkeypatch.setattr(config, "has_gpu", lambda: False)
    assert config.profile_name() == "fast"
    monkeypatch.setattr(config, "has_gpu", lambda: True)
    assert config.profile_name() == "full"


def test_profile_overrides_and_unknown_names():
    original = config.PROFILES["fast"].train_iters
    assert config.get_profile("fast", train_iters=original + 1).train_iters == original + 1
    assert config.get_profile("fast").train_iters == original  # overrides never change the registry
    with pytest.raises(ValueError, match="profile"):
        config.get_profile("huge")
    with pytest.raises(TypeError):
        config.get_profile("fast", no_such_field=1)


def test_cache_dir_is_overridable_and_created(monkeypatch, tmp_path):
    monkeypatch.setenv(config.CACHE_ENV, str(tmp_path / "c"))
    path = config.cache_dir("models", "x")
    assert path == tmp_path / "c" / "models" / "x" and path.is_dir()


def test_device_override(monkeypatch):
    monkeypatch.setenv(config.DEVICE_ENV, "cpu")
    assert config.get_device() == torch.device("cpu")
    assert config.get_device("meta") == torch.device("meta")


def test_seeding_makes_every_rng_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()  # noqa: NPY002 -- the legacy global RNG

    config.seed_everything(3)
    first = draw()
    gen = config.seed_everything(3)
    assert draw() == first
    assert torch.rand(1, generator=gen).item() == torch.rand(1, generator=torch.Generator().manual_seed(3)).item()
