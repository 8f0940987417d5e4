"""Loading progress: the per-layer callback of Engine / _core.Model, the bar drawn from it (forced,
on a TTY only otherwise, never with LUTLLM_NO_PROGRESS), and the CLI showing it only with --verbose
when not on a terminal.
"""
import io

import pytest
from click.testing import CliRunner

from lutllm.cli import main
from lutllm.engine import Engine
from lutllm.progress import LoadProgress


def test_engine_reports_each_layer(smollm2_path, monkeypatch):
    monkeypatch.delenv("LUTLLM_NO_PROGRESS", raising=False)
    out = io.StringIO()
    bar = LoadProgress("loading", stream=out, force=True)
    eng = Engine(smollm2_path, n_ctx=32, progress=bar)
    n = eng.config.n_layer
    assert bar.calls == [(i, n) for i in range(1, n + 1)]
    assert f"{n}/{n}" in out.getvalue() and "loading" in out.getvalue()


def test_silent_unless_terminal_or_forced(smollm2_path, monkeypatch):
    monkeypatch.delenv("LUTLLM_NO_PROGRESS", raising=False)
    out = io.StringIO()  # not a TTY
    bar = LoadProgress("loading", stream=out)
    Engine(smollm2_path, n_ctx=32, progress=bar)
    assert bar.calls and out.getvalue() == ""
    monkeypatch.setenv("LUTLLM_NO_PROGRESS", "1")
    out = io.StringIO()
    bar = LoadProgress("loading", stream=out, force=True)
    bar(1, 2)
    bar(2, 2)
    assert out.getvalue() == ""


def test_callback_error_stops_loading(smollm2_path):
    def cb(done, total):
        if done == 2:
            raise RuntimeError("stop loading here")

    with pytest.raises(RuntimeError, match="stop loading here"):
        Engine(smollm2_path, n_ctx=32, progress=cb)


def test_cli_bar_only_with_verbose(smollm2_path, monkeypatch):
    monkeypatch.delenv("LUTLLM_NO_PROGRESS", raising=False)
    args = ["run", "-m", smollm2_path, "-c", "128", "-n", "2", "--temp", "0", "hi"]
    quiet = CliRunner().invoke(main, args)
    assert quiet.exit_code == 0, quiet.output
    assert "layer" not in quiet.output
    loud = CliRunner().invoke(main, args + ["--verbose"])
    assert loud.exit_code == 0, loud.output
    assert "loading" in loud.output and "layer" in loud.output
