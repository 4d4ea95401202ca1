"""`pip install .` (not editable) gives a working package: the sdist and the wheel carry every module and the
package data (the filter kernels' source, the default pipeline), and the installed package - not the
repository - runs a tiny pipeline and redraws its figures from a folder outside the repository.

Nothing is downloaded: the wheel is built with the setuptools already installed (no build isolation) and
installed without its dependencies into a folder that is put first on PYTHONPATH of this same interpreter."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ["interp/hmm/kernels.cpp", "interp/pipeline/default.toml"]
# What a build does not need (run outputs, environments, caches): left out of the copy it is built from, so
# the build writes nothing into the repository.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    "runs", "paper_figs", "tests", "docs")

TINY = (REPO / "tests" / "tiny_pipeline.toml").read_text()


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The sdist of the working tree, the wheel built from that sdist, and the wheel installed into site/."""
    root = tmp_path_factory.mktemp("install")
    src, dist, site = root / "src", root / "dist", root / "site"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE)
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    name = run([sys.executable, "-c", "import sys; from setuptools.build_meta import build_sdist; "
                "print(build_sdist(sys.argv[1]))", str(dist)], cwd=src).stdout.strip().splitlines()[-1]
    sdist = dist / name
    # From the sdist, so that the sdist is shown to hold everything a wheel needs.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist),
         str(sdist)], cwd=root, env=pip_env)
    (wheel,) = dist.glob("interp-*.whl")
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        cwd=root, env=pip_env)
    work = root / "work"
    work.mkdir()
    return {"sdist": sdist, "wheel": wheel, "site": site, "work": work}


def test_the_sdist_and_the_wheel_hold_every_module_and_the_package_data(built):
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "interp").rglob("*.py")}
    with tarfile.open(built["sdist"]) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    with zipfile.ZipFile(built["wheel"]) as whl:
        in_wheel = set(whl.namelist())
        (entry_points,) = [n for n in in_wheel if n.endswith(".dist-info/entry_points.txt")]
        scripts = whl.read(entry_points).decode()
    for files in (in_sdist, in_wheel):
        assert set(PACKAGE_DATA) <= files
        assert modules <= files, sorted(modules - files)
    assert {n for n in in_wheel if n.startswith("interp/")} == modules | set(PACKAGE_DATA)
    assert re.search(r"^interp = interp\.cli:main$", scripts, re.M)


# Run by the installed package from outside the repository: where it was imported from, its data, then
# `interp figures` (one interpreter for all of it: starting one costs seconds of imports).
PROBE_AND_REDRAW = """
import json, sys
from importlib.resources import files
import interp
from interp.cli import main
from interp.hmm import native
from interp.pipeline.pipeline import default_pipeline_config
print(json.dumps({"file": interp.__file__, "models": sorted(default_pipeline_config().models),
                  "kernels": str(files("interp.hmm").joinpath("kernels.cpp")),
                  "compiler": native.compiler() is not None, "native": native.library() is not None}))
sys.exit(main(["figures", "pipe", "--out", "redrawn"]))
"""


def test_the_installed_package_runs_a_tiny_pipeline_and_redraws_its_figures_outside_the_repository(built):
    site, work = built["site"], built["work"]
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    (work / "tiny.toml").write_text(TINY)
    assert run([str(site / "bin" / "interp"), "--help"], cwd=work, env=env).stdout.startswith("usage: interp ")
    # the console script (its interpreter is this one; PYTHONPATH puts the installed package ahead of the
    # editable install's finder); the figures are drawn once, by `interp figures`
    run([str(site / "bin" / "interp"), "run", "tiny.toml", "--out", "pipe", "--no-figures", "--workers", "0"],
        cwd=work, env=env)
    out = run([sys.executable, "-c", PROBE_AND_REDRAW], cwd=work, env=env).stdout
    probe = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    for path in (probe["file"], probe["kernels"]):
        assert Path(path).resolve().is_relative_to(site.resolve()), path
        assert not Path(path).resolve().is_relative_to(REPO), path
    assert probe["models"] == ["belief_net", "fixed_attention", "ssm", "transformer"]  # the shipped default.toml
    assert probe["native"] == probe["compiler"]  # the kernels build from the installed source wherever they can
    assert (work / "pipe" / "summary.json").is_file()
    index = (work / "redrawn" / "index.md").read_text()
    for n in range(1, 9):
        (png,) = (work / "redrawn").glob(f"f{n}_*.png")
        assert png.with_suffix(".pdf").is_file() and png.name in index, png


def test_the_package_neither_edits_sys_path_nor_reads_files_outside_itself():
    """Modules, data and figures are found through the package (imports, importlib.resources, a module's
    own folder), never through the repository's layout."""
    problems = []
    climbs = re.compile(r"__file__\)?\.(parents\b|parent\.parent)|__file__.*\.\.")
    for path in sorted((REPO / "interp").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bsys\.path\b|\bsite\.addsitedir\b|\bPYTHONPATH\b", line):
                problems.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
            if "__file__" in line and climbs.search(line):
                problems.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
            if re.search(r"""["'](\.\./|runs/[\w.-]+\.toml|paper_figs/)""", line) and "help=" not in line:
                problems.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not problems, "\n".join(problems)
