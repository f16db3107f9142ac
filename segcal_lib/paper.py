"""The paper's published numbers, each with the table or figure it comes from.

Wang, Gong, Wang. *On Calibrating Semantic Segmentation Models: Analyses and An Algorithm.* CVPR 2023
(arXiv 2212.12053). Values marked ``approx=True`` were read off plots (≈); the rest are transcribed from tables.
Chapters read the paper's side of every "we vs the paper" comparison from here, never from prose.

This module imports nothing: it is data, plus small accessors that return plain lists and dicts.
ECE here is always the paper's metric: 10 equal-width bins, computed per image and averaged over images
("image-wise ECE"); mIoU in percent in the tables, as a fraction in Figure 2.
"""

from __future__ import annotations

CITATION = "Wang, Gong, Wang (CVPR 2023)"

METHODS = ("Uncal", "TempS", "LogS", "DirS", "Meta-Cal*", "LTS", "Ens.", "Selective")
# Our calibrator registry names for the paper's columns (``None``: the uncalibrated model).
METHOD_TO_CALIBRATOR = {"Uncal": None, "TempS": "ts", "LogS": "vs", "DirS": "dirs", "Meta-Cal*": "meta_cal",
                        "LTS": "lts", "Ens.": "ensemble", "Selective": "selective"}


def _rows(source: str, text: str) -> list[dict]:
    rows = []
    for line in text.strip().splitlines():
        first, model, miou, *eces = (c.strip() for c in line.split("|"))
        rows.append({"source": source, "data": first, "model": model, "miou": float(miou),
                     **{m: float(e) for m, e in zip(METHODS, eces, strict=True)}})
    return rows


# Table 1 — in-domain: dataset | model | mIoU (%) | image-wise ECE per method.
TABLE1 = _rows("Table 1", """
ADE20K | SegFormer-B5 | 49.13 | .111 | .109 | .110 | .110 | .103 | .105 | .109 | .086
ADE20K | Segmenter-L | 51.65 | .087 | .086 | .086 | .087 | .081 | .094 | .086 | .069
ADE20K | Knet-DeepLab | 45.06 | .111 | .105 | .107 | .106 | .102 | .118 | .110 | .095
ADE20K | Knet-Swin-L | 52.46 | .098 | .094 | .093 | .097 | .089 | .134 | .096 | .078
ADE20K | ConvNeXt-L | 53.16 | .097 | .092 | .094 | .091 | .088 | .133 | .094 | .082
COCO-164K | SegFormer-B5 | 45.78 | .151 | .149 | .141 | .151 | .132 | .151 | .149 | .113
COCO-164K | Segmenter-L | 47.09 | .152 | .149 | .149 | .151 | .130 | .155 | .150 | .109
COCO-164K | Knet-DeepLab | 37.24 | .170 | .170 | .168 | .171 | .149 | .172 | .169 | .093
COCO-164K | Knet-Swin-L | 46.49 | .161 | .159 | .161 | .160 | .142 | .162 | .160 | .102
COCO-164K | ConvNeXt-L | 46.48 | .160 | .157 | .158 | .159 | .141 | .162 | .159 | .108
BDD100K | SegFormer-B5 | 65.08 | .064 | .055 | .054 | .053 | .049 | .069 | .059 | .040
BDD100K | Segmenter-L | 61.33 | .055 | .045 | .043 | .042 | .037 | .071 | .052 | .031
BDD100K | Knet-DeepLab | 62.89 | .060 | .049 | .047 | .048 | .041 | .063 | .057 | .035
BDD100K | Knet-Swin-L | 67.59 | .065 | .055 | .054 | .054 | .049 | .067 | .063 | .040
BDD100K | ConvNeXt-L | 67.26 | .064 | .054 | .053 | .056 | .049 | .065 | .063 | .038
""")

# Table 2 — domain shift: "in-domain → shifted" | model | mIoU (%) on the shifted data | image-wise ECE per method.
TABLE2 = _rows("Table 2", """
ADE20K → COCO-164K | SegFormer-B5 | 8.20 | .467 | .466 | .468 | .469 | .415 | .420 | .465 | .331
ADE20K → COCO-164K | Segmenter-L | 9.60 | .395 | .394 | .395 | .394 | .322 | .331 | .393 | .259
ADE20K → COCO-164K | ConvNeXt-L | 8.99 | .461 | .458 | .459 | .460 | .377 | .460 | .459 | .320
BDD100K → Cityscapes | SegFormer-B5 | 63.05 | .087 | .083 | .082 | .084 | .076 | .085 | .087 | .069
BDD100K → Cityscapes | Segmenter-L | 60.26 | .062 | .058 | .059 | .057 | .055 | .067 | .060 | .048
BDD100K → Cityscapes | ConvNeXt-L | 67.18 | .081 | .079 | .079 | .077 | .070 | .080 | .079 | .065
DAVIS train → test | SegFormer-B4 | 89.33 | .033 | .031 | .031 | .031 | .055 | .098 | .032 | .024
SpaceNet-7 SP train → test | Knet-Swin-B | 59.42 | .609 | .576 | .559 | .563 | .631 | .618 | .605 | .504
SpaceNet-7 TS train → test | ConvNeXt-B | 62.14 | .623 | .578 | .571 | .573 | .647 | .638 | .620 | .549
BraTS train → test | SegFormer-B4 | 45.81 | .155 | .137 | .135 | .135 | .129 | .150 | .151 | .120
SYNTHIA → Cityscapes | SegFormer-B5 | 33.12 | .286 | .264 | .262 | .263 | .230 | .288 | .284 | .218
SYNTHIA → Cityscapes | ConvNeXt-L | 34.79 | .287 | .267 | .263 | .264 | .230 | .299 | .284 | .211
""")

# Figure 2 — the four factors (all read off plots). ECE image-wise; mIoU as a fraction.
CAPACITY = {"source": "Figure 2a", "approx": True, "data": "ADE20K", "family": "SegFormer",
            "models": ["B0", "B1", "B2", "B3", "B4", "B5"],
            # Parameter counts of the SegFormer variants (millions, from the SegFormer paper's model table).
            "params_m": [3.8, 13.7, 27.5, 47.3, 64.1, 84.7],
            "ece": [0.0965, 0.0998, 0.1002, 0.107, 0.1057, 0.109],
            "miou_range": (0.375, 0.491)}
CROP_SIZE = {"source": "Figure 2b", "approx": True, "data": "ADE20K", "model": "Segmenter",
             "crop": [416, 448, 480, 512, 640], "ece": [0.0917, 0.090, 0.0907, 0.087, 0.085],
             "miou_range": (0.478, 0.509)}
MULTISCALE = {"source": "Figure 2c", "approx": True, "data": "ADE20K", "model": "Segmenter",
              "single_scale": {"ece": 0.086, "miou": 0.516}, "multi_scale": {"ece": 0.078, "miou": 0.535}}
CORRECTNESS = {"source": "Figure 2d", "approx": True, "data": "ADE20K",
               "ece": {"SegFormer": {"mispredicted": 0.76, "correct": 0.045},
                       "Segmenter": {"mispredicted": 0.71, "correct": 0.055}}}

# Ablations (image-wise ECE). Boundary: (Uncal, TempS, Selective) on boundary and non-boundary pixels.
BOUNDARY = {"source": "boundary ablation", "approx": False, "data": "ADE20K",
            "rows": {"Segmenter-L16": {"boundary": (0.322, 0.285, 0.241), "non_boundary": (0.087, 0.082, 0.068)},
                     "SegFormer-B5": {"boundary": (0.331, 0.294, 0.253), "non_boundary": (0.110, 0.099, 0.082)},
                     "Knet-DeepLab": {"boundary": (0.360, 0.337, 0.305), "non_boundary": (0.107, 0.101, 0.091)}},
            "methods": ("Uncal", "TempS", "Selective")}
SELECTOR_SENSITIVITY = {"source": "selector-accuracy ablation", "approx": True, "data": "ADE20K",
                        "model": "SegFormer-B5", "ece_at_0": 0.111, "ece_at_60": 0.087,
                        "converged_above_detection": 0.30, "oracle_ece": 0.054}
RELIABILITY_EXAMPLE = {"source": "reliability-diagram figure", "approx": False,
                       "ece": {"Uncal": 0.1208, "TempS": 0.1369, "Ens.": 0.1198, "Selective": 0.0631}}
SELECTOR_QUALITY = {"source": "released selectors (ADE20K)", "approx": False,
                    "accuracy_auroc": {"SegFormer": (0.770, 0.923), "Segmenter": (0.785, 0.926),
                                       "Knet-DeepLab": (0.790, 0.907)}}
SELECTIVE_DEFAULTS = {"source": "method section / release", "T_mis_accurate": 1e10, "T_mis_moderate": 2.0,
                      "T_cor": 1.0, "optimizer": "AdamW lr 1e-3 wd 1e-6, 40 epochs", "mispredicted_duplication": 2}


def table_rows(table: int, data: str | None = None, model: str | None = None) -> list[dict]:
    """Rows of Table 1 or 2 (``table=1`` or ``2``), optionally filtered by data set (substring) and model."""
    if table not in (1, 2):
        raise ValueError(f"table must be 1 or 2, got {table!r}")
    rows = TABLE1 if table == 1 else TABLE2
    return [r for r in rows if (data is None or data in r["data"]) and (model is None or r["model"] == model)]


def relative_reduction(table: int = 1) -> list[float]:
    """Relative image-wise ECE reduction of Selective over Uncal, one value per row of the table."""
    return [1 - r["Selective"] / r["Uncal"] for r in table_rows(table)]
