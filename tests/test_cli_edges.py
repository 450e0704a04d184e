"""The ``qwave`` entry point at its edges: Ctrl-C at any moment is one line and exit code 130, and library
warnings raised on the way to a one-line error are not printed before it."""

from __future__ import annotations

import importlib
import warnings

import pytest

from qwave import cli
from qwave.errors import DataError


def test_ctrl_c_while_the_command_is_still_importing_is_one_line_and_130(monkeypatch, capsys):
    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert cli.main(["bench"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "qwave bench: interrupted"


@pytest.fixture
def fake_predict(monkeypatch):
    module = importlib.import_module("qwave.commands.predict")
    outcome = {}

    def run(argv):
        warnings.warn("a library complains about something", RuntimeWarning, stacklevel=1)
        if outcome.get("fail"):
            raise DataError("table.csv: column 'x' is bad")
        return 0

    monkeypatch.setattr(module, "run", run)
    return outcome


def test_warnings_on_the_way_to_a_one_line_error_are_not_printed(fake_predict, capsys):
    fake_predict["fail"] = True
    assert cli.main(["predict"]) == 2
    assert capsys.readouterr().err.strip() == "qwave predict: error: table.csv: column 'x' is bad"


def test_warnings_of_a_successful_command_are_printed_after_it(fake_predict, capsys):
    assert cli.main(["predict"]) == 0
    assert "a library complains about something" in capsys.readouterr().err
