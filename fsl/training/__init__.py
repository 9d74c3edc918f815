from fsl.training.checkpoint import CheckpointError, load_model, read_checkpoint
from fsl.training.module import ClassifierModule
from fsl.training.run import TrainResult, train

__all__ = ["ClassifierModule", "CheckpointError", "load_model", "read_checkpoint", "train", "TrainResult"]
