"""Sphinx extension: serve MathJax 3 from the book itself, so formulas render with no network.

MathJax comes from the PyPI package ``django-static-mathjax`` (MathJax 3.2.2's files, no Python dependencies; in the
``book`` extra). Only the TeX-to-HTML bundle and its fonts (1.6 MB) are copied into the built book's ``_static``;
nothing is committed. The MathJax component finds its fonts relative to its own URL, so the two must stay together.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

SUBDIR = "mathjax"


def _mathjax_root() -> Path:
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("offline math needs MathJax: pip install django-static-mathjax (in segcal_lib[book])")
    root = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    if not (root / "tex-chtml.js").is_file():
        raise RuntimeError(f"MathJax's tex-chtml.js is missing under {root}; reinstall django-static-mathjax")
    return root


def _stage(app) -> None:
    root = _mathjax_root()
    stage = Path(app.doctreedir).parent / "offline_math_static"
    target = stage / SUBDIR
    if not (target / "tex-chtml.js").is_file():
        fonts = Path("output") / "chtml" / "fonts" / "woff-v2"
        shutil.copytree(root / fonts, target / fonts, dirs_exist_ok=True)
        shutil.copy2(root / "tex-chtml.js", target / "tex-chtml.js")
    app.config.html_static_path.append(str(stage))


def _config_inited(app, config) -> None:
    config.mathjax_path = f"{SUBDIR}/tex-chtml.js"  # relative: served from the book's own _static


def setup(app):
    app.connect("config-inited", _config_inited)
    app.connect("builder-inited", _stage)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
