"""`lutllm chat` interactive commands (/set parameter, /show, /save, /load, /clear, multi-line input)
driven through click's test runner with the default model.
"""
import json

from click.testing import CliRunner

from lutllm.cli import main


def test_chat_commands(smollm2_path, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the readline history file goes here
    saved = tmp_path / "conv.json"
    script = "\n".join([
        "/set parameter temperature 0",
        "/set parameter num_predict 24",
        "/set parameter top_k many",
        "/show",
        '"""What is the capital',
        'of France? Answer in one sentence."""',
        f"/save {saved}",
        "/clear",
        f"/load {saved}",
        f"/load {tmp_path / 'missing.json'}",
        "/bye",
    ]) + "\n"
    r = CliRunner().invoke(main, ["chat", "-m", smollm2_path, "-c", "256"], input=script)
    assert r.exit_code == 0, r.output
    assert "Set temperature to 0." in r.output
    assert "error:" in r.output  # top_k many
    assert "temperature 0.0" in r.output and "num_predict 24" in r.output
    assert "Paris" in r.output
    msgs = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["content"] == "What is the capital\nof France? Answer in one sentence."
    assert "Paris" in msgs[1]["content"]
    assert "Loaded 2 messages." in r.output
    assert "cannot load" in r.output
