"""Post-hoc calibrators for dense prediction, behind one API and one registry.

>>> from segcal_lib.calibrators import make_calibrator, list_calibrators
>>> cal = make_calibrator("ts").fit(val_logits, val_labels)   # or .fit(val_store)         # doctest: +SKIP
>>> test_probs = cal(test_logits).softmax(1)                                               # doctest: +SKIP

Every calibrator maps logits (N, C, H, W) to calibrated logits of the same shape (see :mod:`.base`). Importing this
package registers every built-in calibrator.
"""

from segcal_lib.calibrators import selective, temperature  # noqa: F401  (register selective; ts, identity)
from segcal_lib.calibrators.base import Calibrator, NotFittedError
from segcal_lib.calibrators.registry import list_calibrators, make_calibrator, register_calibrator

__all__ = ["Calibrator", "NotFittedError", "list_calibrators", "make_calibrator", "register_calibrator"]
