"""Training, evaluation, checkpoints and TensorBoard logging: the layer above models and data.

from mlp_torch.training import TrainConfig, train, evaluate
metrics = train(TrainConfig(data=DataOptions(dataset="synthetic"), epochs=5))
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluation import EvalResult, evaluate
from .trainer import load_run_config, train

__all__ = ["EvalResult", "TrainConfig", "evaluate", "load_checkpoint", "load_run_config", "save_checkpoint", "train"]
