"""The book's wiring: table of contents, clean notebooks, one repository URL, citations, a warning-free build."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def toc_files():
    files = [TOC["root"]]
    for part in TOC["parts"]:
        files += [c["file"] for c in part["chapters"]]
    return files


def cells(nb_path, kind):
    nb = json.loads(nb_path.read_text())
    return [c for c in nb["cells"] if c["cell_type"] == kind]


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_toc_lists_every_chapter_and_every_entry_exists():
    listed = toc_files()
    for f in listed:
        assert any((ROOT / f).with_suffix(s).exists() for s in (".md", ".ipynb")), f
    for ch in CHAPTERS:
        assert f"chapters/{ch.stem}" in listed, f"{ch.name} is not in _toc.yml"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_committed_without_outputs(nb):
    for c in cells(nb, "code"):
        assert not c.get("outputs") and c.get("execution_count") is None, f"{nb.name} carries outputs"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_first_code_cell_installs_from_the_configured_repository(nb):
    first = source(cells(nb, "code")[0])
    assert '"google.colab" in sys.modules' in first
    assert f"git+{CONFIG['repository']['url']}" in first, "install URL differs from _config.yml repository.url"


def test_every_citation_is_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    texts = [p.read_text() for p in (ROOT / "book").glob("*.md")]
    texts += [source(c) for nb in CHAPTERS for c in cells(nb, "markdown")]
    cited = {k.strip() for t in texts for group in re.findall(r"\{cite[^}]*\}`([^`]+)`", t) for k in group.split(",")}
    assert cited, "no citations found: the pattern is broken"
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"


@pytest.mark.skipif(shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) is None,
                    reason="jupyter-book is not installed (extra 'book')")
def test_book_builds_without_warnings(tmp_path):
    # Execution off: the chapters are executed by nbmake; here only the rendering, references and citations are checked.
    config = dict(CONFIG, execute=dict(CONFIG["execute"], execute_notebooks="off"))
    # Local extensions are found relative to the config file: point them at the repository's book/_ext.
    sphinx = dict(CONFIG["sphinx"])
    sphinx["local_extensions"] = {k: str(ROOT / v) for k, v in sphinx["local_extensions"].items()}
    config["sphinx"] = sphinx
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    exe = Path(sys.executable).parent / "jupyter-book"
    run = subprocess.run([str(exe), "build", str(ROOT), "--config", str(tmp_path / "_config.yml"),
                          "--path-output", str(tmp_path), "--warningiserror", "--keep-going"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    html = tmp_path / "_build" / "html"
    assert (html / "index.html").exists() or (html / "book" / "intro.html").exists()
    bib = (html / "book" / "bibliography.html").read_text()
    assert "Guo et al. 2017" in bib, "author-year labels (book/_ext/bib_labels.py) are not used"
    notation = (html / "book" / "notation.html").read_text()
    assert "_static/mathjax/tex-chtml.js" in notation and (html / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert (html / "chapters" / "01_calibration_basics.html").exists()


def test_every_clone_instruction_names_the_repository():
    url = CONFIG["repository"]["url"]
    for page in [ROOT / "README.md", *(ROOT / "book").glob("*.md")]:
        for line in page.read_text().splitlines():
            if "git clone" in line:
                assert url in line, f"{page.name}: a clone instruction without the repository URL: {line.strip()}"
    assert "git clone" in (ROOT / "book" / "how_to_run.md").read_text()


def test_no_page_points_readers_to_files_they_do_not_have():
    texts = [p.read_text() for p in (ROOT / "book").glob("*.md")]
    texts += [source(c) for nb in CHAPTERS for c in json.loads(nb.read_text())["cells"]]
    assert not [t for t in texts if "shared/reference" in t], "the book links to ../shared/reference (not shipped)"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_chapter_code_lines_fit_the_column(nb):
    long = [line for c in cells(nb, "code") for line in source(c).splitlines() if len(line) > 88]
    assert not long, f"{nb.name}: code lines over 88 characters: {long[:3]}"
