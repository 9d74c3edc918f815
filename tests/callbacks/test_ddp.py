"""Under DDP (2 CPU processes, gloo) the analysis callbacks log the same numbers as one process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsl.tracking import find_offline_runs, read_offline_run
from tests.helpers import CALLBACK_OVERRIDES, synthetic_overrides

ROOT = Path(__file__).resolve().parents[2]  # the repository root


def run_train(tmp: Path, trainer: str, threads: int | None = None) -> dict:
    # lr=0: the weights stay at their (seeded, identical) initialisation, so both runs measure the same model
    args = synthetic_overrides(tmp, epochs=2, extra=[*CALLBACK_OVERRIDES, f"trainer={trainer}", "optimizer.lr=0.0",
                                                     "test_after_fit=false", "scheduler.name=none"])
    args = [a for a in args if not a.startswith("trainer.accelerator")]
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    runs = find_offline_runs(tmp)
    assert len(runs) == 1, runs  # rank zero alone logs to W&B
    return read_offline_run(runs[0]).summary


@pytest.mark.slow
def test_ddp_logs_equal_single_process(tmp_path):
    """One process with 1 and with 2 threads, and 2 DDP ranks (Lightning gives each rank
    cpu_count // 2 threads: 1 on the 2-core machines here): the same numbers. Counts (successes) must
    be identical: a success decided by the last bit of a float would flip between them."""
    runs = {name: run_train(tmp_path / name, trainer, threads) for name, trainer, threads in
            (("single2", "cpu", 2), ("single1", "cpu", 1), ("ddp", "ddp_cpu", None))}
    single = runs["single2"]

    def is_media(k):  # W&B media (tables, images, histograms) are nested records with a "_type"
        return any(k.startswith(p + "/") for p in {m.rsplit("/", 1)[0] for m in single if m.endswith("/_type")})

    keys = [k for k in single if k.startswith(("analysis/", "adv/")) and isinstance(single[k], (int, float))
            and not k.endswith("seconds") and not is_media(k)]  # wall times differ; every measured number must not
    assert len(keys) > 400
    assert "analysis/margin/median" in keys and "adv/deepfool/auroc/margin" in keys and "adv/cw/auroc/fdbd" in keys
    exact = [k for k in keys if k.endswith(("success_rate", "n_success", "n_attacked"))]
    assert len(exact) >= 14
    for name in ("single1", "ddp"):
        other = runs[name]
        for k in keys:
            assert other[k] == pytest.approx(single[k], rel=1e-4, abs=1e-6), (name, k)
        for k in exact:
            assert other[k] == single[k], (name, k)
