"""The demo is a package of its own: the library neither imports it nor its dependencies (gradio,
plotly), and the packaging says so (library dependencies, a `demo` extra, requirements.txt for all)."""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_library_imports_neither_gradio_nor_plotly():
    code = "import memstream, sys; assert 'gradio' not in sys.modules and 'plotly' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


def test_no_library_module_imports_the_demo():
    for path in sorted((ROOT / "memstream").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] in ("memstream_demo", "gradio", "plotly")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_packaging_separates_the_library_from_the_demo():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {d.split(">")[0].split("<")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert deps == {"torch", "torchvision", "transformers", "decord", "av", "pillow", "numpy", "open_clip_torch"}
    assert project["optional-dependencies"]["demo"] == ["gradio>=6,<7", "plotly"]
    assert project["requires-python"] == ">=3.11"
    pinned = {line.split("==")[0] for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line and not line.startswith("#")}
    assert deps | {"gradio", "plotly"} <= pinned  # the Space installs everything from it

    # setuptools' package discovery matches names with fnmatch (setuptools is not in every fresh venv)
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in ("memstream", "memstream_demo"):
        assert any(fnmatch.fnmatchcase(package, pattern) for pattern in include), package
