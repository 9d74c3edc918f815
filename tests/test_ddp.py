"""Under DDP (2 CPU processes, gloo) the analysis callbacks log the same numbers as one process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsl.tracking import find_offline_runs, read_offline_run
from tests.helpers import synthetic_overrides
from tests.test_callbacks import CALLBACK_OVERRIDES

ROOT = Path(__file__).resolve().parent.parent


def run_train(tmp: Path, trainer: str) -> dict:
    # lr=0: the weights stay at their (seeded, identical) initialisation, so both runs measure the same model
    args = synthetic_overrides(tmp, epochs=2, extra=[*CALLBACK_OVERRIDES, f"trainer={trainer}", "optimizer.lr=0.0",
                                                     "test_after_fit=false", "scheduler.name=none"])
    args = [a for a in args if not a.startswith("trainer.accelerator")]
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    runs = find_offline_runs(tmp)
    assert len(runs) == 1, runs  # rank zero alone logs to W&B
    return read_offline_run(runs[0]).summary


@pytest.mark.slow
def test_ddp_logs_equal_single_process(tmp_path):
    single = run_train(tmp_path / "single", "cpu")
    ddp = run_train(tmp_path / "ddp", "ddp_cpu")
    def is_media(k):  # W&B media (tables, images, histograms) are nested records with a "_type"
        return any(k.startswith(p + "/") for p in {m.rsplit("/", 1)[0] for m in single if m.endswith("/_type")})

    keys = [k for k in single if k.startswith(("analysis/", "adv/")) and isinstance(single[k], (int, float))
            and not k.endswith("seconds") and not is_media(k)]  # wall times differ; every measured number must not
    assert len(keys) > 40
    assert "analysis/margin/median" in keys and "adv/deepfool/auroc/margin" in keys
    for k in keys:
        assert ddp[k] == pytest.approx(single[k], rel=1e-4, abs=1e-6), k
