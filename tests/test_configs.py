"""Config lookup and ``_base_`` overlays of the `lightning` command (lightning_run.configs), and the layering
rule of the packages (the run layer imports no method; the two methods never import each other)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from lightning_run.configs import expand_config, expand_config_args, find_config
from tests.conftest import EXPERIMENTS, REPO


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_find_config_prefers_the_working_directory_then_the_shipped_experiments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ here
    assert find_config("experiments/sgmae.yaml") == EXPERIMENTS / "sgmae.yaml"
    assert find_config("sgmae.yaml") == EXPERIMENTS / "sgmae.yaml"
    assert find_config("sgmae") == EXPERIMENTS / "sgmae.yaml"
    local = _write(tmp_path / "sgmae.yaml", {"seed_everything": 3})
    assert find_config("sgmae.yaml").resolve() == local  # a file of the user's wins over the shipped one


def test_find_config_names_the_missing_file_and_the_known_experiments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"config experiments/nope.yaml: no such file.*sgmae_fmnist"):
        find_config("experiments/nope.yaml")


def test_overlay_expands_to_its_bases_then_itself(tmp_path):
    base = _write(tmp_path / "base.yaml", {"seed_everything": 1, "trainer": {"max_epochs": 5}})
    mid = _write(tmp_path / "mid.yaml", {"_base_": "base.yaml", "trainer": {"max_epochs": 6}})
    top = _write(tmp_path / "top.yaml", {"_base_": ["mid.yaml"], "seed_everything": 2})
    values = expand_config(top)
    assert values[0] == str(base.resolve())
    assert yaml.safe_load(values[1]) == {"trainer": {"max_epochs": 6}}
    assert yaml.safe_load(values[2]) == {"seed_everything": 2}
    assert "_base_" not in "".join(values[1:])
    args = expand_config_args(["fit", "--config", str(mid), "--trainer.max_epochs", "9"])
    assert args == ["fit", "--config", str(base.resolve()), "--config", values[1], "--trainer.max_epochs", "9"]
    del mid


def test_overlay_errors_name_the_file(tmp_path):
    _write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    _write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ValueError, match="cycle"):
        expand_config(tmp_path / "a.yaml")
    _write(tmp_path / "c.yaml", {"_base_": "missing.yaml"})
    with pytest.raises(FileNotFoundError, match=r"c.yaml: its _base_ missing.yaml does not exist"):
        expand_config(tmp_path / "c.yaml")
    (tmp_path / "bad.yaml").write_text("trainer: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad.yaml: not valid YAML"):
        expand_config(tmp_path / "bad.yaml")


def test_every_shipped_overlay_resolves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for config in sorted(EXPERIMENTS.glob("*.yaml")):
        for value in expand_config(find_config(f"experiments/{config.name}")):
            assert value.endswith(".yaml") or yaml.safe_load(value), config


# ----------------------------------------------------------------------------- layering

PACKAGES = ("lightning_run", "datamodules", "lightning_mae", "lightning_inr")
# What each package may import from the project: the run layer nothing, data the run layer, each method
# the layers below it and never the other method. Scripts (benchmarks/) are outside the library.
ALLOWED = {
    "lightning_run": set(),
    "datamodules": {"lightning_run"},
    "lightning_mae": {"lightning_run", "datamodules"},
    "lightning_inr": {"lightning_run", "datamodules"},
}


def _project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & {*PACKAGES, "benchmarks", "tests"}


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_point_one_way(package):
    bad = {}
    for path in sorted((REPO / package).rglob("*.py")):
        upward = _project_imports(path) - ALLOWED[package] - {package}
        if upward:
            bad[str(path.relative_to(REPO))] = sorted(upward)
    assert not bad, f"imports against the layering (allowed for {package}: {sorted(ALLOWED[package])}): {bad}"


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_finds_them_without_the_source_tree(tmp_path):
    """Build the wheel (no editable install), unpack it away from the repository, and look a config up from
    another working directory: the run layer must find the copy inside the package, and its overlays."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheel_dir.glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(site)
    assert {f"lightning_run/experiments/{p.name}" for p in EXPERIMENTS.glob("*.yaml")} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "experiments/")) for n in names)
    code = ("import lightning_run.configs as c, sys; p = c.find_config('experiments/mae.yaml'); "
            "print(p); print(len(c.expand_config(p)))")
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env={"PYTHONPATH": str(site), "PATH": ""},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found, parts = out.stdout.split()
    assert Path(found) == site / "lightning_run" / "experiments" / "mae.yaml"
    assert int(parts) >= 1
