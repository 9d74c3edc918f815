"""``python study.py name=<study> [ckpt_path=<.ckpt>] [only=[stage,...]] [output_dir=<dir>]``."""
from __future__ import annotations

import os
import sys

USAGE = ("usage: python study.py name=<study> [ckpt_path=<classifier .ckpt>] [only=[stage,...]] [output_dir=<dir>]"
         "\n  (make study NAME=<study> ARGS=\"ckpt_path=...\")")
KEYS = ("name", "ckpt_path", "only", "output_dir")


def parse_args(argv: list[str]) -> dict:
    """``key=value`` arguments; ``only`` takes ``[a,b]`` or ``a,b``."""
    out: dict = {}
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"argument {arg!r} is not key=value\n{USAGE}")
        key, value = arg.split("=", 1)
        if key not in KEYS:
            from fsl.registry import closest

            raise ValueError(f"unknown argument {key!r}{closest(key, KEYS)}; valid: {', '.join(KEYS)}")
        if key == "only":
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        out[key] = value or None
    if not out.get("name"):
        from fsl.publish.study import study_names

        raise ValueError(f"name= is required; studies: {', '.join(study_names())}\n{USAGE}")
    return out


def main(argv: list[str]) -> int:
    from fsl.errors import ConfigError, FslError
    from fsl.publish.study import run_study

    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        args = parse_args(argv)
        result = run_study(args["name"], ckpt_path=args.get("ckpt_path"), only=args.get("only"),
                           output_dir=args.get("output_dir"))
    except (FslError, ValueError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, FslError) and not isinstance(e, ConfigError) else 2
    print(f"study written: {result.output_dir}")
    for stage, s in result.seconds.items():
        print(f"  {stage}: {s:.0f} s")
    return 0
