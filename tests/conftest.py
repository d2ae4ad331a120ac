import os

import jax
import pytest
from hypothesis import settings

# No per-machine cache (measured conv plans, compiled programs): every test measures and compiles
# afresh, and none writes under the user's home. Tests of the cache point it at a temporary directory.
os.environ["JAXCNN_CACHE_DIR"] = ""

# Four virtual CPU devices, so data-parallel code is tested here; single-device code uses the first.
jax.config.update("jax_num_cpu_devices", 4)

# Compiling a new shape costs far more than running it: no per-example deadline.
settings.register_profile("jaxcnn", deadline=None, max_examples=int(os.environ.get("JAXCNN_HYPOTHESIS_EXAMPLES", 25)),
                          derandomize=True, print_blob=True)
settings.load_profile("jaxcnn")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One tfds data_dir for the session: each offline dataset is generated into it once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))
