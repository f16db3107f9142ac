"""Data sets: procedural street scenes (the embedded default), their domain shifts, and readers of real folders."""

from segcal_lib.data.base import IGNORE_INDEX, Sample

__all__ = ["IGNORE_INDEX", "Sample"]
