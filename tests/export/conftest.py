"""The session's cache of small trained artifacts (``tests/export_models.py``) for the export tests."""

from __future__ import annotations

import pytest
from export_models import TABLES, Trained


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Trained]:
    root = tmp_path_factory.mktemp("export_models")
    models = {table: Trained(table, root / table) for table in TABLES}
    models["fsdd-l2"] = Trained("fsdd", root / "fsdd-l2", normalize="l2")
    return models
