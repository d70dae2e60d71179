"""Fixtures shared by the training and sampling tests: a small dataset and a hypernet trained
on it (module-scoped: import them into the test module)."""

import pytest
from hypernet_support import make_dataset, quick_config
from safetensors.torch import load_file

from hypernet.pipeline.training import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("hypernet_data"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("hypernet_ckpt") / "small.safetensors"
    train(data, out, quick_config(), progress=False)
    return out


def _tensors(path):
    return load_file(str(path))
