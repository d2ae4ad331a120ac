import os

from hypothesis import settings

# Compiling a new shape costs far more than running it: no per-example deadline.
settings.register_profile("jaxcnn", deadline=None, max_examples=int(os.environ.get("JAXCNN_HYPOTHESIS_EXAMPLES", 25)),
                          derandomize=True, print_blob=True)
settings.load_profile("jaxcnn")
