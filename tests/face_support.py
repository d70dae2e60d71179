"""The generated insightface-style models shared by the face tests (a module-scoped fixture:
import it into the test module)."""

import pytest
from face_models import write_face_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_face_models(tmp_path_factory.mktemp("insightface") / "buffalo_l")

