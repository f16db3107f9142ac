"""The base of the streaming meters: declared states, and reset / device moves / merge / sync written once.

A meter declares each state once with :meth:`Meter.add_state` (``name``, a default tensor, and how two copies combine:
``"sum"`` or ``"cat"``), as torchmetrics does. :meth:`~Meter.reset`, :meth:`~Meter.to`, :attr:`~Meter.device`,
:meth:`~Meter.merge` and :meth:`~Meter.sync` then work over the declared states, so every meter follows the same device
rules and a new meter only writes ``update`` and ``compute``.

Device rules
------------
- A new meter keeps its states on the CPU. The first ``update`` moves them to the device of its inputs, so a meter fed
  CUDA tensors accumulates on the GPU with no host copy per update (and :meth:`sync` all-reduces GPU tensors, as NCCL
  requires). After that, inputs are moved to the meter's device.
- Apple MPS has no float64, which the meters' sums need for exactness: states stay on the CPU when the inputs are on
  MPS (each update copies its inputs to the CPU).
- ``reset(device)`` zeroes the states on ``device`` (default: where they are); ``to(device)`` moves them.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["Meter", "state_device"]


def state_device(device: torch.device | str) -> torch.device:
    """Where a meter keeps states for inputs on ``device``: the same device, except the CPU for MPS (no float64)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


class Meter:
    """Base class of streaming meters with declared states (see the module docstring).

    Subclasses call :meth:`add_state` in ``__init__`` (then :meth:`reset`), implement ``update``/``compute``, and
    return their hyper-parameters from :meth:`_settings` (two meters merge only when these are equal).
    """

    def add_state(self, name: str, default: torch.Tensor, reduction: Literal["sum", "cat"] = "sum") -> None:
        """Declare a state ``name`` initialised to a copy of ``default``; ``reduction`` says how copies combine."""
        if reduction not in ("sum", "cat"):
            raise ValueError(f"reduction must be 'sum' or 'cat', got {reduction!r}")
        if "_states" not in self.__dict__:
            self._states: dict[str, tuple[torch.Tensor, str]] = {}
        self._states[name] = (default.detach().clone(), reduction)

    # Tensors that are not states but must live with them (e.g. bin edges); subclasses extend this tuple.
    _buffers: tuple[str, ...] = ()

    def reset(self, device: torch.device | str | None = None):
        """Zero every state on ``device`` (default: where the states are now; the CPU for a new meter)."""
        if device is None:
            device = self.device if "_empty" in self.__dict__ else "cpu"
        dev = state_device(device)
        for name, (default, _) in self._states.items():
            setattr(self, name, default.to(dev, copy=True))
        self._empty = True
        return self

    def to(self, device: torch.device | str):
        """Move every state (and buffer) to ``device``; returns self."""
        dev = state_device(device)
        for name in (*self._states, *self._buffers):
            setattr(self, name, getattr(self, name).to(dev))
        return self

    @property
    def device(self) -> torch.device:
        """The device of the states."""
        return getattr(self, next(iter(self._states))).device

    def _follow(self, tensor: torch.Tensor) -> None:
        """Before the first update, move the states to the inputs' device; then mark the meter as used."""
        if self._empty and state_device(tensor.device) != self.device:
            self.to(tensor.device)
        self._empty = False

    def _settings(self) -> tuple:
        raise NotImplementedError

    def merge(self, other):
        """Add the states of ``other`` (same type and settings) into this meter, as if it had seen its batches."""
        if type(other) is not type(self) or other._settings() != self._settings():
            theirs = other._settings() if isinstance(other, Meter) else type(other).__name__
            raise ValueError(f"can only merge a {type(self).__name__} with the same settings {self._settings()}, "
                             f"got {theirs}")
        for name, (_, reduction) in self._states.items():
            theirs = getattr(other, name).to(self.device)
            if reduction == "sum":
                getattr(self, name).add_(theirs)
            else:
                setattr(self, name, torch.cat([getattr(self, name), theirs]))
        self._empty = self._empty and other._empty
        return self

    def sync(self, group=None):
        """Combine the states over all processes of a ``torch.distributed`` group, in place (every rank gets all).

        ``"sum"`` states are all-reduced; ``"cat"`` states are gathered in rank order.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("sync() needs an initialised torch.distributed process group")
        for name, (_, reduction) in self._states.items():
            if reduction == "sum":
                dist.all_reduce(getattr(self, name), group=group)
            else:
                setattr(self, name, _all_gather_variable(getattr(self, name), group))
        return self


def _all_gather_variable(t: torch.Tensor, group=None) -> torch.Tensor:
    """All-gather tensors of different lengths along dim 0, concatenated in rank order."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])
