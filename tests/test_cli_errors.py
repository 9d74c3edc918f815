"""User-facing errors are one line, ``error: ...``, with the fix (HYDRA_FULL_ERROR=1: the trace),
and a run that fails that way writes nothing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsl.cli import check_overrides
from fsl.config import compose_config
from fsl.errors import ConfigError, FslError
from fsl.training import CheckpointError, read_checkpoint
from fsl.validate import validate_analyze_config, validate_train_config

ROOT = Path(__file__).resolve().parent.parent


def cli(tmp_path, script, *args, full_error=False):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def one_line_error(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(lines) < 5, proc.stderr
    assert lines[-1].startswith("error: "), proc.stderr
    return lines[-1]


@pytest.mark.parametrize("args, expected", [
    (["trainer.max_epoch=5"], "unknown config key 'trainer.max_epoch'; did you mean 'trainer.max_epochs'?"),
    (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
    (["analysis.adversarial.only=[deepfol]"], "unknown name 'deepfol'; did you mean 'deepfool'?"),
])
def test_train_errors_are_one_line_and_leave_nothing(tmp_path, args, expected):
    proc = cli(tmp_path, "train.py", *args, "callbacks=default", "data=synthetic", f"paths.wandb_dir={tmp_path}",
               f"paths.data_dir={tmp_path / 'data'}")
    assert expected in one_line_error(proc)
    assert proc.returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no outputs/, no wandb/, no data/


def test_random_bytes_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "random.ckpt"
    bad.write_bytes(os.urandom(512).replace(b"PK", b"pk").lstrip(b"\x80") or b"x")
    proc = cli(tmp_path, "analyze.py", f"ckpt_path={bad}")
    assert "is not a PyTorch checkpoint" in one_line_error(proc) and proc.returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.ckpt"]  # no outputs/analyze/<run>
    full = cli(tmp_path, "analyze.py", f"ckpt_path={bad}", full_error=True)
    assert full.returncode != 0 and "Traceback" in full.stderr and "CheckpointError" in full.stderr


def test_check_overrides_suggests_the_closest_key_or_option():
    for bad, hint in [("sed=3", "did you mean 'seed'?"), ("trainr.max_epochs=3", "did you mean 'trainer.max_epochs'?"),
                      ("experiment=selu_mlp_mnst5k", "did you mean experiment=selu_mlp_mnist5k?"),
                      ("optimizer.lrr=0.1", "did you mean 'optimizer.lr'?")]:
        with pytest.raises(ConfigError, match=hint.replace("?", r"\?").replace(".", r"\.")):
            check_overrides("train", [bad])
    check_overrides("train", ["trainer.max_epochs=3", "+extra_key=1"])  # valid ones pass


def test_validation_lists_every_problem(tmp_path):
    cfg = compose_config("train", ["data.batch_size=0", "data.eval_batch_size=-1", "optimizer.name=adm",
                                   "scheduler.name=cosin", "analysis.geometry.n_train=0", "model.name=selu_mpl",
                                   "analysis.adversarial.only=[pgd03]"])
    with pytest.raises(ConfigError) as info:
        validate_train_config(cfg)
    msg = str(info.value)
    assert msg.startswith("7 problem(s) in the train config")
    for part in ["data.batch_size=0", "data.eval_batch_size=-1", "did you mean 'adam'?", "did you mean 'cosine'?",
                 "analysis.geometry.n_train=0", "did you mean 'selu_mlp'?", "did you mean 'pgd_03'?"]:
        assert part in msg, part
    validate_train_config(compose_config("train"))  # the default is valid
    for exp in ("fcnn1_mnist5k", "resnet20_cifar10", "resnet20_fashion_mnist", "selu_mlp_mnist"):
        validate_train_config(compose_config("train", [f"experiment={exp}"]))
    acfg = compose_config("analyze", ["ckpt_path=x.ckpt", "batch_size=0", "analysis.adversarial.n_boot=-1",
                                      "+attacks.a={attack: deepfol}"])
    with pytest.raises(ConfigError, match=r"3 problem\(s\).*batch_size=0.*n_boot=-1.*did you mean "
                                          r"'deepfool'\?"):
        validate_analyze_config(acfg)
    with pytest.raises(ConfigError, match=r"did you mean attacks=mnist\?"):
        check_overrides("analyze", ["ckpt_path=x.ckpt", "attacks=mnst"])


def test_checkpoint_errors_say_what_the_file_is(tmp_path):
    rnd = tmp_path / "random.ckpt"
    rnd.write_bytes(b"\x13" * 64)
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        read_checkpoint(rnd)
    obj = tmp_path / "objects.ckpt"
    torch.save({"x": ConfigError("an arbitrary Python object")}, obj)
    with pytest.raises(CheckpointError, match="Unsupported global.*hold only tensors and plain hyperparameters"):
        read_checkpoint(obj)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {"name": "selu_mlp"}}}, good)
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(trunc)
    assert issubclass(CheckpointError, FslError) and "\n" not in str(CheckpointError("x"))
