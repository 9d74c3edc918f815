"""fsl installs as a package and works outside the repository: the wheel (built from the sdist, as
``python -m build`` does) carries the Hydra configs as ``fsl/configs``, and in a fresh virtual
environment, from a folder outside the checkout, ``fsl.wrap`` and ``fsl.analyze`` run on the
packaged configs. Also: where ``fsl.configfiles`` looks for the configs."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from fsl import configfiles

ROOT = Path(__file__).resolve().parents[1]

# what the build needs from the checkout; the top-level folders below (docs, tests, runs) stay behind
_TOP_SKIP = {".git", ".venv", "build", "dist", ".pytest_cache", "docs", "tests", "benchmarks", "outputs", "results",
             "wandb", "data", "multirun", "lightning_logs", "checkpoints"}


def _skip(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {n for n in names if (top and n in _TOP_SKIP) or n == "__pycache__" or n.endswith(".egg-info")}


SCRIPT = r'''
import json, sysconfig
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

import fsl
import fsl.configfiles
from fsl.config import compose_config

site = Path(sysconfig.get_paths()["purelib"]).resolve()
config_dir = Path(fsl.configfiles.CONFIG_DIR).resolve()
out = {"fsl_file": str(Path(fsl.__file__).resolve()), "site": str(site), "version": fsl.__version__,
       "dist_version": metadata.version("fsl"), "config_dir": str(config_dir),
       "geometry_yaml": (config_dir / "analysis" / "geometry.yaml").is_file(),
       "train_data": compose_config("train").data.name}

torch.manual_seed(0)
n, classes = 90, 3
y = torch.arange(n) % classes
x = (0.2 * torch.rand(n, 1, 8, 8) + 0.35 * y.view(-1, 1, 1, 1).float()).clamp(0, 1)
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, classes))
opt = torch.optim.Adam(model.parameters(), 1e-2)
for _ in range(60):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
model.eval()
wrapped = fsl.wrap(model, data=x)
report = fsl.analyze(wrapped, (x[:60], y[:60]), (x[60:], y[60:]), analyses=["geometry"], progress=False,
                     geometry={"figures": []})
key = "analysis/margin/mean"
if key not in report.metrics:
    key = sorted(k for k, v in report.metrics.items() if "margin" in k and isinstance(v, (int, float)))[0]
out["metric"], out["value"] = key, float(report.metrics[key])
print(key, out["value"])
print("FSL_RESULT " + json.dumps(out))
'''


def test_checkout_reads_the_repository_configs():
    """A checkout (and an editable install) has no fsl/configs: the top-level configs/ is used."""
    assert not (ROOT / "fsl" / "configs").exists(), "fsl/configs is made by the build only, never committed"
    assert configfiles.find_config_dir(ROOT / "fsl") == ROOT / "configs"


def test_packaged_configs_come_first(tmp_path):
    package, checkout = tmp_path / "site" / "fsl", tmp_path / "site" / "configs"
    for folder in (package / "configs", checkout):
        folder.mkdir(parents=True)
        (folder / "train.yaml").write_text("{}\n")
    assert configfiles.find_config_dir(package) == package / "configs"
    shutil.rmtree(package / "configs")
    assert configfiles.find_config_dir(package) == checkout


def test_missing_configs_name_the_fix(tmp_path):
    (tmp_path / "fsl").mkdir()
    with pytest.raises(FileNotFoundError, match=r"pip install \."):
        configfiles.find_config_dir(tmp_path / "fsl")


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_works_outside_the_repository(tmp_path):
    # 1. sdist from a copy of the source tree, then the wheel from the sdist (no network, the
    #    current setuptools: --no-build-isolation)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_skip)
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(tmp_path / 'dist')!r})"],
         cwd=src)
    (sdist,) = (tmp_path / "dist").glob("fsl-*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp_path / "dist", sdist], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("fsl-*.whl")

    configs = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    packaged = sorted(n.removeprefix("fsl/configs/") for n in names if n.startswith("fsl/configs/"))
    assert packaged == configs
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE is not in the wheel"

    # 2. a fresh environment holding only the wheel's fsl; torch and the other dependencies come from
    #    this interpreter's site-packages as a plain path (.pth path line: the editable fsl install's
    #    own .pth hook there is not run), after the new environment's own site-packages
    env_dir = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    py = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel])
    new_site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (new_site / "zz_fsl_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # 3. run from a folder outside the checkout, isolated from PYTHONPATH and the user's site
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "use_fsl.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(MPLBACKEND="Agg", WANDB_MODE="offline")
    proc = _run([py, "-I", "use_fsl.py"], cwd=work, env=env)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("FSL_RESULT "))
    out = json.loads(line.removeprefix("FSL_RESULT "))

    site = Path(out["site"])
    assert Path(out["fsl_file"]).is_relative_to(site), out
    assert not Path(out["fsl_file"]).is_relative_to(ROOT), out
    import fsl

    assert out["version"] == out["dist_version"] == fsl.__version__
    assert Path(out["config_dir"]) == site / "fsl" / "configs"
    assert out["geometry_yaml"] and out["train_data"] == "mnist5k"
    assert math.isfinite(out["value"]), out
