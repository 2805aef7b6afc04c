"""Project wiring: pins agree between pyproject and environment.yml, CI runs the README's test command."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import ROOT


def _pins_pyproject() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["dev"]
    return dict(r.split("==") for r in reqs)


def _pins_environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return dict(r.split("==") for r in pip)


def test_every_dependency_is_pinned_exactly():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for r in data["project"]["dependencies"]:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9A-Za-z.+]+", r), r


def test_environment_yml_mirrors_pyproject():
    assert _pins_pyproject() == _pins_environment()
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_known_critical_pins():
    pins = _pins_pyproject()
    assert pins["torch"] == "2.13.0"
    assert pins["transformer-lens"] == "4.3.0"
    assert pins["transformers"] == "5.23.0"
    assert pins["jupyter-book"].startswith("1.")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make book" in readme
    assert "set -euo pipefail" in ci


def test_installed_versions_match_pins():
    from importlib.metadata import version

    for name in ("torch", "transformer-lens", "transformers", "jupyter-book", "papermill"):
        installed = version(name).split("+")[0]
        assert installed == _pins_pyproject()[name], name


def test_committed_runs_are_complete():
    """What a fresh clone needs to rebuild the book and to rerun any chapter from the committed runs:
    every run's metrics, executed notebooks and emotion vectors (both halves) are tracked in git."""
    import subprocess

    tracked = set(subprocess.run(["git", "ls-files", "book/runs"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    runs = {p.split("/")[2] for p in tracked}
    assert {"gemma-3-270m", "smollm2-135m-instruct"} <= runs
    for run in runs:
        for name in ("metrics.json", "vectors.json", "vectors.safetensors", "01_capture.ipynb"):
            assert f"book/runs/{run}/{name}" in tracked, f"{run}: {name} is not committed"
    toc = (ROOT / "_toc.yml").read_text()
    for line in toc.splitlines():
        if "file: book/runs/" in line:
            path = line.split("file:")[1].strip() + ".ipynb"
            assert path in tracked, f"_toc.yml lists {path}, which is not committed"
