import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One tfds data_dir for the session: each offline dataset is generated into it once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))
