"""Runs are never lost or mixed: one unique, locked folder per run (also the W&B id), nothing left
behind by a run that fails at setup, and a run killed with SIGKILL mid-epoch resumes bit-identically."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fsl.data.files import download
from fsl.tracking import find_offline_runs, read_offline_run
from fsl.tracking.rundir import (FAILED_MARKER, RUN_MARKER, RunDirError, claim_run_dir, new_run_id, read_marker,
                                 release_run_dir)
from fsl.training import read_checkpoint, train
from fsl.config import compose_config
from tests.helpers import synthetic_config, synthetic_overrides

ROOT = Path(__file__).resolve().parents[2]  # the repository root
# synthetic data with augmentation (crop + flip), 8 steps per epoch, no analyses
BASE = ["data=synthetic", "callbacks=default", "trainer.enable_progress_bar=false", "+data.crop_padding=2",
        "+data.hflip=true", "test_after_fit=false"]


def run_train(cwd: Path, *args: str, wait: bool = True, env: dict | None = None):
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(ckpt)["state_dict"]


def test_kill9_mid_epoch_then_resume_is_bit_identical(tmp_path):
    args = [*BASE, "trainer.max_epochs=4", "logger=none", f"paths.data_dir={tmp_path / 'data'}"]
    whole = run_train(tmp_path, *args, f"paths.output_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    # SIGKILL at step 19: in the third epoch (8 steps each), after last.ckpt of the second
    killed = run_train(tmp_path, *args, f"paths.output_dir={tmp_path / 'killed'}",
                       "+callbacks.crash._target_=tests.helpers.CrashAtStep", "+callbacks.crash.step=19")
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["epoch"] == 1
    resumed = run_train(tmp_path, *args, f"ckpt_path={last}")  # continues in the killed run's folder
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(tmp_path / "whole" / "checkpoints" / "last.ckpt"), weights(last)
    assert read_checkpoint(last)["epoch"] == 3
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical, not close
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert ckpts == sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir())  # same best epoch


def test_two_runs_started_at_once_get_their_own_folders(tmp_path):
    args = [*BASE, "trainer.max_epochs=1", f"paths.data_dir={tmp_path / 'data'}", f"paths.wandb_dir={tmp_path}"]
    procs = [run_train(tmp_path, *args, wait=False) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    folders = sorted((tmp_path / "outputs" / "train").iterdir())
    assert len(folders) == 2
    wandb_ids = {read_offline_run(r).run_id for r in find_offline_runs(tmp_path)}
    assert len(wandb_ids) == 2
    for folder in folders:
        run_id = read_marker(folder)["run_id"]
        assert folder.name.endswith("_" + run_id) and run_id in wandb_ids  # folder = run id = W&B id
        assert read_checkpoint(folder / "checkpoints" / "last.ckpt")["fsl_wandb_run_id"] == run_id
        assert (folder / ".hydra" / "config.yaml").is_file() and (folder / "train.log").is_file()


def test_a_folder_of_another_run_is_refused_untouched(tmp_path):
    folder = tmp_path / "run"
    args = [*BASE, "trainer.max_epochs=1", "logger=none", f"paths.data_dir={tmp_path / 'data'}",
            f"paths.output_dir={folder}"]
    assert run_train(tmp_path, *args).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    again = run_train(tmp_path, *args)
    assert again.returncode != 0
    assert "belongs to run" in again.stderr and "pick another paths.output_dir" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before  # not a byte written


def test_a_locked_folder_is_refused_while_its_process_lives(tmp_path):
    folder, run_id = tmp_path / "run", new_run_id()
    holder = subprocess.Popen([sys.executable, "-c", f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); "
                               f"from fsl.tracking.rundir import claim_run_dir; "
                               f"claim_run_dir({str(folder)!r}, {run_id!r}); print('ok', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(RunDirError, match="in use by another process"):
            claim_run_dir(folder, run_id)  # the same run, resumed twice at once
        with pytest.raises(RunDirError, match="belongs to run"):
            claim_run_dir(folder, new_run_id())
    finally:
        holder.kill()
        holder.wait()
    claim_run_dir(folder, run_id)  # the lock died with its process (as on SIGKILL)
    release_run_dir(folder)
    assert json.loads((folder / RUN_MARKER).read_text())["run_id"] == run_id


def test_hydra_run_dir_puts_everything_in_one_place(tmp_path):
    where = tmp_path / "here"
    proc = run_train(tmp_path, *BASE, "trainer.max_epochs=1", "logger=csv", f"paths.data_dir={tmp_path / 'data'}",
                     f"hydra.run.dir={where}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in where.iterdir()} >= {".hydra", "train.log", "checkpoints", "csv", RUN_MARKER}
    assert not (tmp_path / "outputs" / "train").exists()


def test_failed_setup_leaves_nothing_behind(tmp_path):
    proc = run_train(tmp_path, "data=mnist", "callbacks=default", f"paths.data_dir={tmp_path / 'data'}",
                     f"paths.wandb_dir={tmp_path}", env={"FSL_OFFLINE": "1"})
    assert proc.returncode != 0 and "missing file(s)" in proc.stderr
    assert not (tmp_path / "outputs").exists()
    assert not (tmp_path / "data").exists()
    assert not find_offline_runs(tmp_path)  # no W&B run was started


def test_failed_download_removes_the_folders_it_made(tmp_path):
    dest = tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz"
    with pytest.raises(OSError):
        download((tmp_path / "no-such-file").as_uri(), dest)
    assert not (tmp_path / "data").exists()


def test_a_run_that_fails_after_a_checkpoint_keeps_it_and_says_so(tmp_path):
    cfg = synthetic_config(tmp_path, epochs=3, extra=["logger=none", "test_after_fit=false",
                                                      "+callbacks.crash._target_=tests.helpers.CrashAtStep",
                                                      "+callbacks.crash.step=10", "+callbacks.crash.how=raise"])
    folder = Path(cfg.paths.output_dir)
    with pytest.raises(RuntimeError, match="crash at step 10"):
        train(cfg)
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert "crash at step 10" in (folder / FAILED_MARKER).read_text()
    resume = [a for a in synthetic_overrides(tmp_path, 3, ["logger=none", "test_after_fit=false"])
              if not a.startswith("paths.output_dir=")]  # the folder comes from the checkpoint
    cfg = compose_config("train", [*resume, f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"])
    assert cfg.paths.output_dir == str(folder) and cfg.run_id == read_marker(folder)["run_id"]
    train(cfg)
    assert not (folder / FAILED_MARKER).exists()
    assert read_checkpoint(folder / "checkpoints" / "last.ckpt")["epoch"] == 2


def test_failed_setup_in_process_removes_the_folder(tmp_path):
    cfg = synthetic_config(tmp_path, epochs=1, extra=["data.batch_size=0", "logger=none"])
    with pytest.raises(Exception):
        train(cfg)
    assert not Path(cfg.paths.output_dir).exists()


@pytest.mark.parametrize("env, rank", [({}, 0), ({"RANK": "3"}, 3), ({"SLURM_PROCID": "5"}, 5),
                                       ({"LOCAL_RANK": "1"}, 1), ({"RANK": "2", "SLURM_PROCID": "7"}, 2)])
def test_process_rank_reads_torchrun_and_slurm(monkeypatch, env, rank):
    from fsl.tracking.rundir import process_rank

    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert process_rank() == rank
