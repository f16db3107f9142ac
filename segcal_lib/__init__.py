"""segcal_lib: the companion library of the book *Calibrating Semantic Segmentation Models*.

The data flow is one-directional (see DESIGN.md): data -> models -> inference -> logit store -> calibrators ->
metrics -> plots. The ground floor (``config``, ``data``, ``inference``, ``metrics``) imports nothing of the library
above it.
"""

from segcal_lib.config import cache_dir, describe, get_device, get_profile, profile_name, seed_everything

__version__ = "0.1.0"

__all__ = ["__version__", "cache_dir", "describe", "get_device", "get_profile", "profile_name", "seed_everything"]
