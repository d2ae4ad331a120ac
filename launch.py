"""Run an experiment: ``python launch.py [--config experiments/NAME.py] [--workdir DIR] [--config.KEY=VALUE ...]``.

With no flags it runs ``experiments/default.py`` (LeNet-5 on digits) in a new
``runs/<experiment>-<time>`` directory. Relaunching with the same ``--workdir``
resumes from its latest checkpoint. For several processes pass
``--coordinator_address HOST:PORT --num_processes N --process_id I`` to each (on
SLURM or Cloud TPU, ``--distributed`` lets JAX find them).
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (used by the input pipeline) is chatty

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxcnn.train import initialize_distributed, train_and_evaluate  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments", "default.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "experiment config file (experiments/NAME.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics and results; default runs/<experiment>-<time>")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes in a multi-process run")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index, 0 .. num_processes - 1")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "join a multi-process run found by JAX (SLURM, Cloud TPU)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every step of their work at INFO
    if _COORDINATOR.value or _NUM_PROCESSES.value or _DISTRIBUTED.value:
        initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    experiment = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
    workdir = _WORKDIR.value or os.path.join("runs", f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}")
    results = train_and_evaluate(_CONFIG.value, workdir)
    print(json.dumps(results, indent=2))
    print(f"results, metrics, curves and checkpoints are in {os.path.abspath(workdir)}")


if __name__ == "__main__":
    app.run(main)
