"""Post-hoc calibrators for dense prediction, behind one API and one registry.

>>> from segcal_lib.calibrators import make_calibrator, list_calibrators
>>> cal = make_calibrator("ts").fit(val_logits, val_labels)   # or .fit(val_store)         # doctest: +SKIP
>>> test_probs = cal(test_logits).softmax(1)                                               # doctest: +SKIP

Every calibrator maps logits (N, C, H, W) to calibrated logits of the same shape (see :mod:`.base`). Importing this
package registers every built-in calibrator:

=============  ==========================================================  ================
name           method                                                      keeps arg-max
=============  ==========================================================  ================
identity       the uncalibrated model                                      yes
ts             temperature scaling (:mod:`.temperature`)                   yes
vs / logs      vector scaling (:mod:`.vector`)                             no
ms             matrix scaling with ODIR (:mod:`.vector`)                   no
dirs           Dirichlet calibration with ODIR (:mod:`.dirichlet`)         no
ets            ensemble temperature scaling (:mod:`.ets`)                  yes
meta_cal       Meta-Cal* (:mod:`.meta_cal`)                                yes
lts            local temperature scaling, needs images (:mod:`.lts`)       yes
lts_image      its image-level variant (:mod:`.lts`)                       yes
ensemble       mean probabilities of several models (:mod:`.ensemble`)     no
histogram      histogram binning of the confidence (:mod:`.binning`)       no
isotonic       isotonic regression of the confidence (:mod:`.binning`)     no
selective      selective scaling over any base (:mod:`.selective`)         yes
=============  ==========================================================  ================

:func:`~segcal_lib.calibrators.evaluate.compare_calibrators` fits several on a calibration split and measures them on
a test split.
"""

# Importing the modules registers their calibrators.
from segcal_lib.calibrators import (  # noqa: F401
    binning,
    dirichlet,
    ensemble,
    ets,
    lts,
    meta_cal,
    selective,
    temperature,
    vector,
)
from segcal_lib.calibrators.base import Calibrator, NotFittedError
from segcal_lib.calibrators.registry import list_calibrators, make_calibrator, register_calibrator

__all__ = ["Calibrator", "NotFittedError", "list_calibrators", "make_calibrator", "register_calibrator"]
