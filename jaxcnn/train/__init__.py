"""The training engine: pure steps, optax, orbax checkpoints, one device to many hosts.

``train_and_evaluate(config, workdir)`` runs an experiment config (see
:func:`default_config` for every key); the pieces it is made of are public too.
"""

from jaxcnn.train.checkpoint import CheckpointError, Checkpoints
from jaxcnn.train.config import default_config, validate
from jaxcnn.train.loop import NonFiniteLossError, train_and_evaluate
from jaxcnn.train.optim import make_optimizer, make_schedule
from jaxcnn.train.parallel import initialize_distributed
from jaxcnn.train.state import TrainState, create_train_state
from jaxcnn.train.steps import StepConfig, eval_step, train_step

__all__ = ["CheckpointError", "Checkpoints", "NonFiniteLossError", "StepConfig", "TrainState", "create_train_state",
           "default_config", "eval_step", "initialize_distributed", "make_optimizer", "make_schedule",
           "train_and_evaluate", "train_step", "validate"]
