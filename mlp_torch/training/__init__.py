"""Training, evaluation, checkpoints and TensorBoard logging: the layer above models and data.

from mlp_torch.training import TrainConfig, train, evaluate
metrics = train(TrainConfig(data=DataOptions(dataset="synthetic"), epochs=5))

More behaviour per step or epoch: subclass :class:`Callback` (it reads a :class:`TrainState`) and
pass it as ``train(config, callbacks=[...])``.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluation import EvalResult, evaluate
from .loop import Callback, CallbackList
from .state import TrainState
from .trainer import fit, load_run_config, start_run, train

__all__ = [
    "Callback",
    "CallbackList",
    "EvalResult",
    "TrainConfig",
    "TrainState",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_run_config",
    "save_checkpoint",
    "start_run",
    "train",
]
