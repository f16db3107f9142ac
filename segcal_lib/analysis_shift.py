"""Calibration under domain shift: calibrators fitted once in-domain, evaluated on shifted test sets.

The paper's Table 2 trains a model and fits every calibrator in one domain and tests in another. :func:`shift_sweep`
does the same over named shifts and corruptions of the test images (:func:`segcal_lib.data.list_shifts`) at several
severities, plus any other test sets (e.g. CamVid's dusk frames), for every registered calibrator, and returns one
tidy DataFrame: a row per test set x calibrator x metric with ``value``, ``low``, ``high`` (95% bootstrap interval
over images where one is defined). :func:`table2` and :func:`paper_table2` turn it into the paper's layout;
:func:`plot_severity_curves` draws ECE against severity; :func:`selector_table` reports selector degradation.
:func:`selective_sweep` follows one fitted selective calibrator over the same test sets (its selector's detection
quality, chapter 9's rule of thumb and the measured gain over its base), :func:`rule_table` sets the rule beside the
measurement and :func:`plot_by_severity` draws such metrics against severity, one line per shift.

Selector quality: a calibrator that flags pixels (selective scaling, or anything with
``mispredicted_proba(logits, images=None) -> (N, H, W)`` probabilities of "mispredicted", a ``threshold`` and
optionally a ``base`` calibrator whose argmax is judged) is scored on each whole test set by
:func:`segcal_lib.calibrators.selective_eval.selector_detection` (``accuracy``, ``precision`` and ``recall`` for
"mispredicted", ``auroc``, ...) when :func:`sweep` is given ``selectors=True``, every entry recorded as metric
``"selector_<key>"``.

>>> df = shift_sweep(model, cfg, ["fog", "blur"], [1, 3, 5])           # doctest: +SKIP
>>> table2(df, severity=3)                                            # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from segcal_lib import paper, pipeline
from segcal_lib.calibrators import Calibrator, list_calibrators, make_calibrator
from segcal_lib.calibrators.evaluate import ImageBatches
from segcal_lib.calibrators.selective import detection_quality, selector_scores
from segcal_lib.calibrators.selective_eval import FlaggedStats, selector_detection
from segcal_lib.config import Profile, get_profile
from segcal_lib.data import SHIFTS
from segcal_lib.data.shifts import SHIFT_KINDS
from segcal_lib.logit_store import LogitStore
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter
from segcal_lib.models import TrainConfig, train_or_load
from segcal_lib.stats import DEFAULT_N_BOOT, bootstrap_ci, paired_bootstrap_ci

__all__ = ["CAMVID_REAL_SHIFT", "DEFAULT_SEVERITIES", "available_calibrators", "camvid_day_model", "camvid_frames",
           "fit_calibrators", "gains_table", "method_label", "paper_table2", "plot_by_severity", "plot_severity_curves",
           "rule_table", "selective_sweep", "selector_table", "selector_vs_gain", "severity_trend", "shift_sweep",
           "shift_test_sets", "sweep", "table2"]

DEFAULT_SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE = "identity"  # the uncalibrated model: every gain is measured against it
IN_DOMAIN = "in-domain"
#: CamVid's real shift: a model trained on the daylight train frames (all but 0001TP), calibrated on val (0016E5,
#: daylight), tested on the daylight test frames (Seq05VD) and on the dusk test frames (0001TP).
CAMVID_REAL_SHIFT = {"train": {"exclude_sequences": ["0001TP"]}, "test": {"domain": "day"},
                     "shifted": {"dusk (0001TP)": {"domain": "dusk"}}}
_LABELS = {v: k for k, v in paper.METHOD_TO_CALIBRATOR.items() if v is not None} | {REFERENCE: "Uncal"}
_METRIC_NAMES = {"image_ece": "image-wise ECE", "ece": "pooled ECE", "delta_image_ece": "image-wise ECE - Uncal"}


def method_label(name: str) -> str:
    """The paper's column name of a calibrator ("TempS" for ``ts``, "Uncal" for ``identity``), else the name."""
    return _LABELS.get(name, name)


def available_calibrators(with_images: bool = False) -> list[str]:
    """Every registered calibrator the sweep can run: ``identity`` first, then the rest in registry order; those
    with ``needs_images`` only when ``with_images``."""
    names = [n for n in list_calibrators() if with_images or not make_calibrator(n).needs_images]
    return [REFERENCE] + [n for n in names if n != REFERENCE]


def _as_calibrators(calibrators, with_images: bool, progress: bool) -> dict[str, Calibrator]:
    """Unfitted calibrators by name: from registry names, or a mapping name -> unfitted calibrator."""
    if calibrators is None:
        calibrators = available_calibrators(with_images)
    if isinstance(calibrators, str):
        raise ValueError(f"calibrators must be a list of names or a dict name -> calibrator, got {calibrators!r}")
    if not isinstance(calibrators, Mapping):
        calibrators = {n: make_calibrator(n, progress=progress) for n in calibrators}
    cals = dict(calibrators)
    if REFERENCE not in cals:
        cals = {REFERENCE: make_calibrator(REFERENCE, progress=progress), **cals}
    for name, cal in cals.items():
        if not isinstance(cal, Calibrator):
            raise ValueError(f"calibrators[{name!r}] must be a Calibrator, got {type(cal).__name__}")
        if cal.needs_images and not with_images:
            raise ValueError(f"calibrator {name!r} needs images: pass with_images=True")
    return cals


def _batches(store: LogitStore, dataset, batch_size: int = 8):
    """``(logits, labels, images or None)`` in store order; images from ``dataset`` (checked against the labels)."""
    if dataset is None:
        return ((logits, labels, None) for logits, labels in store.iter_batches(batch_size))
    return ImageBatches(store, dataset, batch_size=batch_size)


def fit_calibrators(store: LogitStore, calibrators=None, *, dataset=None, progress: bool = False
                    ) -> dict[str, Calibrator]:
    """Fit each calibrator once on a calibration store.

    Parameters
    ----------
    store : the calibration split's logits (e.g. ``pipeline.get_logits(model, cfg, "val")``).
    calibrators : registry names, or a dict name -> unfitted calibrator; default :func:`available_calibrators`.
        ``identity`` (Uncal) is always added, first.
    dataset : the store's data set; required when a calibrator ``needs_images``.
    progress : progress bars while fitting.

    Returns
    -------
    dict name -> fitted calibrator, ``identity`` first. A calibrator that is already fitted is used as it is (so
    a chapter can fit once and pass the same calibrators to :func:`sweep` and :func:`selective_sweep`).
    """
    cals = _as_calibrators(calibrators, dataset is not None, progress)
    for cal in cals.values():  # streamed: one batch in memory at a time
        if not cal.is_fitted:
            cal.fit(_batches(store, dataset) if cal.needs_images else store)
    return cals


def _metric_rows(res: dict, seg: dict, ref_eces: np.ndarray | None, n_boot: int, seed: int) -> list[dict]:
    mean, lo, hi = bootstrap_ci(res["image_eces"], n_boot=n_boot, seed=seed)
    rows = [dict(metric="image_ece", value=mean, low=lo, high=hi), dict(metric="miou", value=seg["miou"])]
    rows += [dict(metric=k, value=res[k]) for k in ("ece", "nll", "brier", "accuracy", "confidence")]
    if ref_eces is not None:
        d, dlo, dhi = paired_bootstrap_ci(ref_eces, res["image_eces"], n_boot=n_boot, seed=seed)
        rows.append(dict(metric="delta_image_ece", value=d, low=dlo, high=dhi))
    return rows


def evaluate(store: LogitStore, calibrators: Mapping[str, Calibrator], *, dataset=None,
             n_boot: int = DEFAULT_N_BOOT, seed: int = 0, selectors: bool = False) -> list[dict]:
    """Metrics of each fitted calibrator on one test store, as tidy rows ``{calibrator, metric, value, low, high}``.

    Metrics: ``image_ece`` (mean over images, 95% bootstrap interval), ``delta_image_ece`` (calibrator minus Uncal on
    the same images, paired interval; negative = better), pooled ``ece``, ``nll``, ``brier``, ``accuracy``,
    ``confidence``, ``miou`` (of the calibrated argmax), and with ``selectors=True`` ``selector_*`` for calibrators
    that flag pixels (``mispredicted_proba``; a second pass over the store for each, hence opt-in).
    ECE uses 10 equal-width bins.
    """
    c = store.num_classes
    # A store's labels and logits were checked when it was written; the calibrated logits are checked here once, so
    # the meters skip their per-update validation (half their time).
    meters = {n: (CalibrationMeter(c, classwise=False, validate=False), SegmentationMeter(c, validate=False))
              for n in calibrators}
    need_images = dataset is not None and any(cal.needs_images for cal in calibrators.values())
    with torch.no_grad():
        for logits, labels, images in _batches(store, dataset if need_images else None):
            for name, cal in calibrators.items():
                out = cal(logits, images)
                if not torch.isfinite(out).all():
                    raise ValueError(f"calibrator {name!r} returned non-finite logits on {store.path.name}")
                meters[name][0].update(out, labels)
                meters[name][1].update(out.argmax(1), labels)
    results = {n: (cm.compute(), sm.compute()) for n, (cm, sm) in meters.items()}
    ref = results[REFERENCE][0]["image_eces"] if REFERENCE in results else None
    rows = []
    for name, cal in calibrators.items():
        res, seg = results[name]
        for row in _metric_rows(res, seg, None if name == REFERENCE else ref, n_boot, seed):
            rows.append(dict(calibrator=name, **row))
        if selectors and hasattr(cal, "mispredicted_proba"):
            quality = selector_detection(cal, _batches(store, dataset if cal.needs_images else None), max_pixels=None)
            rows += [dict(calibrator=name, metric=f"selector_{k}", value=float(v)) for k, v in quality.items()]
    return rows


def _test_set_info(label: str, spec: Mapping) -> dict:
    shift = spec.get("shift")
    if shift is None:
        return dict(test_set=label, kind="real" if label != IN_DOMAIN else IN_DOMAIN,
                    shift=label if label != IN_DOMAIN else "none", severity=0 if label == IN_DOMAIN else None)
    return dict(test_set=label, kind=SHIFT_KINDS[shift], shift=shift, severity=int(spec.get("severity", 0)))


def sweep(model: nn.Module, cfg: TrainConfig, test_sets: Mapping[str, Mapping], calibrators=None, *,
          profile: Profile | str | None = None, cal_split: str = "val", cal_extra: Mapping | None = None,
          with_images: bool = False, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, selectors: bool = False,
          progress: bool = False, verbose: bool = False) -> pd.DataFrame:
    """Fit calibrators once on the calibration split, evaluate them on each test set; one tidy table.

    Parameters
    ----------
    model, cfg : the segmentation model and its configuration (from :func:`segcal_lib.pipeline.get_model` or
        :func:`camvid_day_model`).
    test_sets : {label: keyword arguments of :func:`segcal_lib.pipeline.get_logits` on the test split}, e.g.
        ``{"in-domain": {}, "fog 3": {"shift": "fog", "severity": 3}, "dusk": {"domain": "dusk"}}``.
    calibrators : registry names or {name: calibrator}; default every registered one that can run
        (:func:`available_calibrators`). ``identity`` (Uncal) is always included. Unfitted ones are fitted on the
        calibration split; fitted ones (e.g. from :func:`fit_calibrators`) are used as they are.
    profile : sizes (default: the active profile).
    cal_split, cal_extra : the calibration split and its data-spec arguments (default: all of ``val``).
    with_images : give images to calibrators that need them (read from the data set again; slower).
    n_boot, seed : bootstrap resamples and seed of every interval.
    selectors : also score the selector of every calibrator that flags pixels (``selector_*`` metrics, see
        :func:`evaluate`); :func:`selective_sweep` does it for one selective calibrator beside its rule of thumb.
    progress : progress bars.
    verbose : print a line per test set saying whether its logits were loaded or computed (default False: a sweep
        over many shifts would print dozens).

    Returns
    -------
    DataFrame with columns ``test_set``, ``kind`` ("in-domain", "shift", "corruption" or "real"), ``shift``,
    ``severity`` (0 in-domain, None for a real shift), ``calibrator``, ``method`` (the paper's name), ``metric``,
    ``value``, ``low``, ``high`` (NaN where no interval is defined), ``n_images``; test sets in the given order.
    """
    if not test_sets:
        raise ValueError("test_sets must name at least one test set")
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    name = cfg.data["name"]
    cal_extra = dict(cal_extra or {})
    cal_store = pipeline.get_logits(model, cfg, cal_split, p, progress=progress, verbose=verbose, **cal_extra)
    cal_data = pipeline.load_dataset(pipeline.data_spec(name, cal_split, p, **cal_extra)) if with_images else None
    cals = fit_calibrators(cal_store, calibrators, dataset=cal_data, progress=progress)
    rows = []
    for label, kw in test_sets.items():
        kw = dict(kw)
        store = pipeline.get_logits(model, cfg, "test", p, progress=progress, verbose=verbose, **kw)
        data = None
        if with_images and any(c.needs_images for c in cals.values()):
            extra = {k: v for k, v in kw.items() if k not in ("shift", "severity", "inference")}
            spec = pipeline.data_spec(name, "test", p, kw.get("shift"), kw.get("severity"), **extra)
            data = pipeline.load_dataset(spec)
        info = dict(_test_set_info(label, kw), n_images=len(store))
        for row in evaluate(store, cals, dataset=data, n_boot=n_boot, seed=seed, selectors=selectors):
            rows.append({**info, "method": method_label(row["calibrator"]), **row})
    df = pd.DataFrame(rows)
    for col in ("low", "high"):
        df[col] = df[col].astype(float) if col in df else math.nan
    cols = ["test_set", "kind", "shift", "severity", "calibrator", "method", "metric", "value", "low", "high",
            "n_images"]
    df["severity"] = df["severity"].astype("Int64")
    return df[cols]


def shift_sweep(model: nn.Module, cfg: TrainConfig, shifts: Sequence[str],
                severities: Sequence[int] = DEFAULT_SEVERITIES, calibrators=None, *, test_extra: Mapping | None = None,
                extra_sets: Mapping[str, Mapping] | None = None, **kw) -> pd.DataFrame:
    """:func:`sweep` over the in-domain test set, each shift x severity of it, and ``extra_sets``.

    Parameters
    ----------
    shifts : names from :func:`segcal_lib.data.list_shifts` (shifts and corruptions).
    severities : ints 1..5 (the in-domain test set is severity 0 of every shift).
    test_extra : data-spec arguments of the in-domain test set, kept for its shifted copies (e.g. CamVid
        ``{"domain": "day"}``).
    extra_sets : more test sets {label: get_logits arguments}, e.g. a real shift ``{"dusk": {"domain": "dusk"}}``.
    kw : passed on to :func:`sweep` (``profile``, ``with_images``, ``n_boot``, ...).

    Test sets are labelled ``"in-domain"``, ``"<shift> <severity>"`` and the keys of ``extra_sets``.
    """
    test_sets = shift_test_sets(shifts, severities, test_extra=test_extra, extra_sets=extra_sets)
    return sweep(model, cfg, test_sets, calibrators, **kw)


def shift_test_sets(shifts: Sequence[str], severities: Sequence[int] = DEFAULT_SEVERITIES, *,
                    test_extra: Mapping | None = None, extra_sets: Mapping[str, Mapping] | None = None
                    ) -> dict[str, dict]:
    """The test sets of :func:`shift_sweep`: {label: keyword arguments of :func:`segcal_lib.pipeline.get_logits`}.

    Labels ``"in-domain"``, ``"<shift> <severity>"`` (shifts in the given order, each at every severity), then the
    keys of ``extra_sets``; arguments as in :func:`shift_sweep`.

    >>> list(shift_test_sets(["fog"], [1, 5], extra_sets={"dusk": {"domain": "dusk"}}))
    ['in-domain', 'fog 1', 'fog 5', 'dusk']
    """
    unknown = [s for s in shifts if s not in SHIFTS]
    if unknown:
        raise ValueError(f"shifts must be names from list_shifts(), got unknown {unknown}")
    bad = [s for s in severities if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5]
    if bad:
        raise ValueError(f"severities must be ints in 1..5 (0 is the in-domain set), got {bad}")
    base = dict(test_extra or {})
    test_sets = {IN_DOMAIN: base}
    test_sets.update({f"{s} {k}": {**base, "shift": s, "severity": k} for s in shifts for k in severities})
    test_sets.update(extra_sets or {})
    return test_sets


# ------------------------------------------------------------------------------------------------------ tables

def _check_frame(df: pd.DataFrame) -> None:
    missing = {"test_set", "calibrator", "method", "metric", "value", "low", "high"} - set(df.columns)
    if missing:
        raise ValueError(f"df must be a frame from shift_sweep/sweep, missing columns {sorted(missing)}")


def table2(df: pd.DataFrame, test_sets: Sequence[str] | None = None, severity: int | None = None,
           digits: int = 3) -> pd.DataFrame:
    """The paper's Table 2 layout: a row per test set, mIoU (%) of the uncalibrated model, then image-wise ECE
    ``"mean [low, high]"`` per method, and the method with the lowest mean.

    Parameters
    ----------
    df : a frame from :func:`shift_sweep` / :func:`sweep`.
    test_sets : rows to keep, in order (default: all, or those of ``severity``).
    severity : keep the in-domain set, every shift at this severity and the real shifts.
    """
    _check_frame(df)
    if test_sets is None:
        sev = df["severity"]
        keep = df if severity is None else df[sev.isna() | (sev.fillna(-1) == severity) | (sev.fillna(-1) == 0)]
        test_sets = list(dict.fromkeys(keep["test_set"]))
    ece = df[df["metric"] == "image_ece"].set_index(["test_set", "method"])
    methods = list(dict.fromkeys(df["method"]))
    rows = {}
    for ts in test_sets:
        miou = df[(df["test_set"] == ts) & (df["metric"] == "miou") & (df["calibrator"] == REFERENCE)]["value"]
        row = {"mIoU (%)": round(float(miou.iloc[0]) * 100, 1)}
        means = {}
        for m in methods:
            if (ts, m) in ece.index:
                r = ece.loc[(ts, m)]
                means[m] = r["value"]
                row[m] = f"{r['value']:.{digits}f} [{r['low']:.{digits}f}, {r['high']:.{digits}f}]"
        row["lowest"] = min(means, key=means.get)
        rows[ts] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "test set (image-wise ECE, 95% CI)"
    return out


def paper_table2(data: str | None = None, digits: int = 3) -> pd.DataFrame:
    """The paper's Table 2 rows in the layout of :func:`table2`: index "in-domain → shifted (model)"."""
    rows = {}
    for r in paper.table_rows(2, data=data):
        row = {"mIoU (%)": r["miou"], **{m: f"{r[m]:.{digits}f}" for m in paper.METHODS}}
        row["lowest"] = min(paper.METHODS, key=lambda m: r[m])
        rows[f"{r['data']} ({r['model']})"] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = f"paper, {paper.TABLE2[0]['source']} (image-wise ECE)"
    return out


def selector_table(df: pd.DataFrame) -> pd.DataFrame:
    """Selector quality per test set: a row per (test set, calibrator), a column per ``selector_*`` metric;
    empty when no calibrator reports one."""
    _check_frame(df)
    sel = df[df["metric"].str.startswith("selector_")]
    if sel.empty:
        return pd.DataFrame()
    out = sel.pivot_table(index=["test_set", "method"], columns="metric", values="value", sort=False)
    out.columns = [c.removeprefix("selector_") for c in out.columns]
    return out


def _verdict(low: float, high: float, reference_low: float, reference_high: float) -> str:
    if low > reference_high:
        return "higher"
    if high < reference_low:
        return "lower"
    return "within noise"


def gains_table(df: pd.DataFrame) -> pd.DataFrame:
    """Each calibrator against Uncal on each test set: image-wise ECE difference (calibrator minus Uncal, paired 95%
    interval over images) and a verdict, "lower" / "higher" when the interval excludes 0, else "within noise"."""
    _check_frame(df)
    d = df[df["metric"] == "delta_image_ece"]
    out = d[["test_set", "method", "value", "low", "high"]].rename(columns={"value": "delta image-wise ECE"})
    out["verdict"] = [_verdict(lo, hi, 0.0, 0.0) for lo, hi in zip(out["low"], out["high"], strict=True)]
    return out.reset_index(drop=True)


def severity_trend(df: pd.DataFrame, calibrator: str = REFERENCE, metric: str = "image_ece") -> pd.DataFrame:
    """Per shift: ``metric`` of one calibrator in-domain and at the highest severity swept, their ratio, and whether
    the highest-severity value is "higher" or "lower" beyond both 95% intervals (else "within noise")."""
    _check_frame(df)
    d = df[(df["calibrator"] == calibrator) & (df["metric"] == metric)]
    base = d[d["test_set"] == IN_DOMAIN]
    if base.empty:
        raise ValueError(f"df has no in-domain {metric} for calibrator {calibrator!r}")
    b = base.iloc[0]
    rows = []
    for shift, part in d[d["kind"].isin(["shift", "corruption"])].groupby("shift", sort=False):
        top = part.loc[part["severity"].astype(float).idxmax()]
        rows.append({"shift": shift, "severity": int(top["severity"]), "in-domain": b["value"],
                     "shifted": top["value"], "ratio": top["value"] / b["value"],
                     "verdict": _verdict(top["low"], top["high"], b["low"], b["high"])})
    return pd.DataFrame(rows)


def selector_vs_gain(df: pd.DataFrame) -> pd.DataFrame:
    """For calibrators that report selector quality: one row per (test set, method) with the ``selector_*``
    metrics and the image-wise ECE change against Uncal (``delta image-wise ECE``); empty when none reports."""
    sel = selector_table(df)
    if sel.empty:
        return sel
    gains = gains_table(df).set_index(["test_set", "method"])["delta image-wise ECE"]
    return sel.join(gains, how="left")


# ------------------------------------------------------------------------------------------------------ selective

def _selective_metrics(cal, store: LogitStore, dataset, n_boot: int, seed: int) -> list[dict]:
    """One pass over a test store: the selector's detection quality, the flagged pixels' calibration (chapter 9's
    rule of thumb) and the measured image-wise ECE gain of ``cal`` over its base, as tidy metric rows."""
    c = store.num_classes
    flagged = FlaggedStats()
    meters = {k: CalibrationMeter(c, classwise=False, validate=False) for k in ("base", "selective")}
    scores, wrong = [], []
    with torch.no_grad():
        for logits, labels, images in _batches(store, dataset if cal.needs_images else None):
            z, q, out = cal.base(logits, images), cal.mispredicted_proba(logits, images), cal(logits, images)
            flagged.update(z, out, q > cal.threshold, labels)
            meters["base"].update(z, labels)
            meters["selective"].update(out, labels)
            # The scores already computed, judged against the base's argmax: the library's one mechanism for both.
            q_valid, wrong_valid = selector_scores(z, labels, q, ignore_index=cal.ignore_index)
            scores.append(q_valid)
            wrong.append(wrong_valid)
    det = detection_quality(torch.cat(scores), torch.cat(wrong), cal.threshold)
    fl = flagged.compute()
    base_eces, sel_eces = (meters[k].compute()["image_eces"] for k in ("base", "selective"))
    gain, lo, hi = paired_bootstrap_ci(sel_eces, base_eces, n_boot=n_boot, seed=seed)
    rows = [dict(metric=f"selector_{k}", value=float(det[k]))
            for k in ("accuracy", "precision", "recall", "auroc", "flagged_share", "mispredicted_share")]
    rows += [dict(metric="flagged_confidence", value=fl["confidence_before"]),
             dict(metric="flagged_confidence_after", value=fl["confidence_after"]),
             # Flattening the flagged pixels lowers their gap |confidence - accuracy| exactly when their accuracy is
             # below the midpoint of the two confidences, i.e. when the precision exceeds this break-even value.
             dict(metric="break_even_precision", value=1 - (fl["confidence_before"] + fl["confidence_after"]) / 2),
             dict(metric="predicted_gain", value=fl["predicted_gain"]),
             dict(metric="gain", value=gain, low=lo, high=hi)]
    return rows


def selective_sweep(model: nn.Module, cfg: TrainConfig, test_sets: Mapping[str, Mapping], cal: Calibrator, *,
                    profile: Profile | str | None = None, name: str = "selective", n_boot: int = DEFAULT_N_BOOT,
                    seed: int = 0, progress: bool = False, verbose: bool = False) -> pd.DataFrame:
    """A fitted selective calibrator on each test set: how its selector degrades, and whether chapter 9's rule of
    thumb predicts its gain over its base.

    Parameters
    ----------
    model, cfg : as in :func:`sweep`.
    test_sets : {label: get_logits arguments}, e.g. from :func:`shift_test_sets`.
    cal : a fitted :class:`~segcal_lib.calibrators.selective.SelectiveScaling` (fitted in-domain, e.g. by
        :func:`fit_calibrators`); it is not refitted.
    name : its label in the ``calibrator`` column; ``method`` is :func:`method_label` of it.
    profile, n_boot, seed, progress, verbose : as in :func:`sweep`.

    Returns
    -------
    Tidy DataFrame with the columns of :func:`sweep` and metrics, per test set:

    - ``selector_accuracy``, ``selector_precision`` (for "mispredicted"), ``selector_recall``, ``selector_auroc``,
      ``selector_flagged_share``, ``selector_mispredicted_share``: detection quality of the selector (flag:
      P(mispredicted) > threshold) against the base calibrator's errors, on every valid pixel;
    - ``flagged_confidence`` / ``flagged_confidence_after``: mean top probability of the flagged pixels before and
      after the scaling; ``break_even_precision`` = 1 - (before + after) / 2, the precision above which flattening
      the flagged pixels brings them closer to their accuracy;
    - ``predicted_gain``: chapter 9's rule of thumb (:class:`~segcal_lib.calibrators.selective_eval.FlaggedStats`),
      the drop of the flagged pixels' share of pooled ECE if they shared no bin with the others;
    - ``gain``: measured image-wise ECE of the base minus that of ``cal`` (positive: selective scaling helps), with a
      paired 95% bootstrap interval over images in ``low`` / ``high``.
    """
    for attr in ("base", "mispredicted_proba", "threshold"):
        if not hasattr(cal, attr):
            raise ValueError(f"cal must be a selective calibrator (with .{attr}), got {type(cal).__name__}")
    cal.check_fitted()
    if not test_sets:
        raise ValueError("test_sets must name at least one test set")
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    data_name = cfg.data["name"]
    rows = []
    for label, kw in test_sets.items():
        kw = dict(kw)
        store = pipeline.get_logits(model, cfg, "test", p, progress=progress, verbose=verbose, **kw)
        data = None
        if cal.needs_images:
            extra = {k: v for k, v in kw.items() if k not in ("shift", "severity", "inference")}
            data = pipeline.load_dataset(pipeline.data_spec(data_name, "test", p, kw.get("shift"),
                                                            kw.get("severity"), **extra))
        info = dict(_test_set_info(label, kw), n_images=len(store), calibrator=name, method=method_label(name))
        rows += [{**info, "low": math.nan, "high": math.nan, **r}
                 for r in _selective_metrics(cal, store, data, n_boot, seed)]
    df = pd.DataFrame(rows)
    df["severity"] = df["severity"].astype("Int64")
    return df[["test_set", "kind", "shift", "severity", "calibrator", "method", "metric", "value", "low", "high",
               "n_images"]]


def rule_table(df: pd.DataFrame) -> pd.DataFrame:
    """Chapter 9's rule of thumb against the measured gain, a row per test set of a :func:`selective_sweep` frame.

    Columns: ``severity``, ``precision`` (selector, for mispredicted), ``break-even precision``, ``predicted gain``
    (rule of thumb), ``gain`` / ``low`` / ``high`` (measured, base minus selective image-wise ECE, paired 95%
    interval), ``rule says`` ("helps" / "hurts" when the predicted gain is positive / negative, "no change" when
    it is 0, i.e. nothing was flagged), ``measured``
    ("helps" / "hurts" when the interval excludes 0, else "within noise") and ``same sign`` (the signs of the
    predicted and the measured mean gain agree).
    """
    _check_frame(df)
    need = {"selector_precision", "break_even_precision", "predicted_gain", "gain"}
    missing = need - set(df["metric"])
    if missing:
        raise ValueError(f"df must be a frame from selective_sweep, missing metrics {sorted(missing)}")
    d = df[df["metric"].isin(need)]
    wide = d.pivot_table(index="test_set", columns="metric", values="value", sort=False)
    ci = d[d["metric"] == "gain"].set_index("test_set")[["low", "high", "severity"]]
    out = pd.DataFrame({"severity": ci["severity"], "precision": wide["selector_precision"],
                        "break-even precision": wide["break_even_precision"],
                        "predicted gain": wide["predicted_gain"], "gain": wide["gain"], "low": ci["low"],
                        "high": ci["high"]})
    g = out["predicted gain"]
    out["rule says"] = np.where(g > 0, "helps", np.where(g < 0, "hurts", "no change"))  # 0: nothing flagged
    out["measured"] = ["helps" if lo > 0 else "hurts" if hi < 0 else "within noise"
                       for lo, hi in zip(out["low"], out["high"], strict=True)]
    out["same sign"] = np.sign(out["predicted gain"]) == np.sign(out["gain"])
    out.index.name = "test set"
    return out


# ------------------------------------------------------------------------------------------------------ figures

def plot_severity_curves(df: pd.DataFrame, metric: str = "image_ece", shifts: Sequence[str] | None = None,
                         ncols: int = 5, height: float = 2.3, methods: Sequence[str] | None = None):
    """``metric`` against severity (0 = in-domain) per shift, one line per method with its 95% interval band.

    ``methods`` (paper names, e.g. ``["Uncal", "TempS"]``) keeps those, in that order; default every method of the
    frame. Returns the matplotlib figure; colours from seaborn's colour-blind palette (line styles tell apart methods
    beyond its ten colours).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    _check_frame(df)
    d = df[df["metric"] == metric]
    if d.empty:
        raise ValueError(f"metric {metric!r} is not in the frame; it has {sorted(df['metric'].unique())}")
    shifts = list(shifts) if shifts is not None else list(dict.fromkeys(d.loc[d["kind"].isin(
        ["shift", "corruption"]), "shift"]))
    if not shifts:
        raise ValueError("the frame holds no shifted test sets with a severity")
    if methods is not None:
        unknown = sorted(set(methods) - set(d["method"]))
        if unknown:
            raise ValueError(f"methods must be methods of the frame, got unknown {unknown}")
        d = d[d["method"].isin(methods)]
    base = d[d["test_set"] == IN_DOMAIN]
    methods = list(methods) if methods is not None else list(dict.fromkeys(d["method"]))
    palette = sns.color_palette("colorblind", 10)
    colours = {m: palette[i % 10] for i, m in enumerate(methods)}
    styles = {m: ("-", "--", ":")[(i // 10) % 3] for i, m in enumerate(methods)}
    nrows = -(-len(shifts) // ncols)
    fig, axes = plt.subplots(nrows, min(ncols, len(shifts)), figsize=(min(7.0, 1.45 * min(ncols, len(shifts)) + 0.4),
                                                                        height * nrows), sharey=True, squeeze=False)
    for ax, shift in zip(axes.flat, shifts, strict=False):
        part = pd.concat([base, d[d["shift"] == shift]]).sort_values("severity")
        for m in methods:
            line = part[part["method"] == m]
            sev = line["severity"].astype(float).to_numpy()
            ax.plot(sev, line["value"], marker="o", ms=3, lw=1.2, color=colours[m], ls=styles[m], label=m)
            if line["low"].notna().all():
                ax.fill_between(sev, line["low"], line["high"], color=colours[m], alpha=0.15, lw=0)
        ax.set_title(shift, fontsize=9)
        ax.set_xticks(range(0, 6))
        ax.tick_params(labelsize=8)
        ax.set_xlabel("severity", fontsize=9)
    for ax in axes.flat[len(shifts):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(_METRIC_NAMES.get(metric, metric.replace("_", " ")), fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(methods), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.08 if nrows > 1 else 0.12, 1, 1))
    return fig


def plot_by_severity(df: pd.DataFrame, metrics: Mapping[str, str], height: float = 2.6):
    """One panel per metric, against severity (0 = in-domain), one line per shift: e.g. how a selector's detection
    quality degrades. ``metrics`` is {metric name in ``df``: panel title}; a frame with one method (e.g. from
    :func:`selective_sweep`). Returns the matplotlib figure (seaborn's colour-blind palette, line styles beyond it).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    _check_frame(df)
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    missing = sorted(set(metrics) - set(df["metric"]))
    if missing:
        raise ValueError(f"metrics must be metrics of the frame, got unknown {missing}")
    shifts = list(dict.fromkeys(df.loc[df["kind"].isin(["shift", "corruption"]), "shift"]))
    if not shifts:
        raise ValueError("the frame holds no shifted test sets with a severity")
    palette = sns.color_palette("colorblind", 10)
    fig, axes = plt.subplots(1, len(metrics), figsize=(7.0, height), squeeze=False)
    for ax, (metric, title) in zip(axes.flat, metrics.items(), strict=True):
        d = df[df["metric"] == metric]
        base = d[d["test_set"] == IN_DOMAIN]
        for i, shift in enumerate(shifts):
            part = pd.concat([base, d[d["shift"] == shift]]).sort_values("severity")
            ax.plot(part["severity"].astype(float), part["value"], marker="o", ms=3, lw=1.2, color=palette[i % 10],
                    ls=("-", "--")[(i // 10) % 2], label=shift)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(0, 6))
        ax.tick_params(labelsize=8)
        ax.set_xlabel("severity", fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    rows = -(-len(shifts) // 5)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(shifts), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.07 * rows, 1, 1))
    return fig


# ------------------------------------------------------------------------------------------------------ CamVid

def camvid_frames(profile: Profile | str | None = None) -> pd.DataFrame:
    """The exact CamVid frames of the real-shift experiment: role, split, count, frames per sequence, first and
    last frame name (needs CamVid on disk)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    roles = {"model training (daylight)": ("train", CAMVID_REAL_SHIFT["train"]),
             "calibration (daylight)": ("val", {}), "test, in-domain (daylight)": ("test", CAMVID_REAL_SHIFT["test"])}
    roles.update({f"test, shifted: {k}": ("test", v) for k, v in CAMVID_REAL_SHIFT["shifted"].items()})
    rows = []
    for role, (split, extra) in roles.items():
        ds = pipeline.load_dataset(pipeline.data_spec("camvid", split, p, **extra))
        seqs = pd.Series(ds.sequences).value_counts(sort=False).to_dict()
        rows.append({"role": role, "split": split, "frames": len(ds),
                     "sequences": ", ".join(f"{k} ({v})" for k, v in seqs.items()),
                     "first": ds.names[0], "last": ds.names[-1]})
    return pd.DataFrame(rows).set_index("role")


def camvid_day_model(profile: Profile | str | None = None, *, progress: bool = True) -> tuple[nn.Module, TrainConfig]:
    """The profile's CamVid model trained on the daylight train frames only (all but the dusk sequence 0001TP),
    trained once and cached like every model; returns (model, config).

    With :data:`CAMVID_REAL_SHIFT`: calibrate on ``val`` (0016E5, daylight), test on ``domain="day"`` (Seq05VD)
    and on ``domain="dusk"`` (0001TP), frames the model has never seen in either light.
    """
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    spec = pipeline.data_spec("camvid", "train", p, **CAMVID_REAL_SHIFT["train"])
    cfg = pipeline.train_config("camvid", p).replace(data=spec)
    model = train_or_load(cfg, lambda: pipeline.load_dataset(spec), progress=progress)
    return model, cfg
