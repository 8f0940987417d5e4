"""Shared pytest fixtures: registry models (pulled once into the user cache), seeded RNGs.

Not a place for test logic; each test module states what it checks.
"""
import os

import numpy as np
import pytest

DEFAULT_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_path():
    """Path of the real SmolLM2-135M-Instruct Q4_1 GGUF (downloaded on first use)."""
    from lutllm.models import resolve_model

    return str(resolve_model(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def smollm2_flash(smollm2_path, tmp_path_factory):
    """SmolLM2 converted once to the flash layout (`lutllm convert --flash`) without a gate predictor
    (windowed mode keeps the gate resident), shared read-only by the flash test modules:
    (source path, flash path, FlashLayout)."""
    from lutllm.convert import convert_flash

    out = tmp_path_factory.mktemp("flash") / "smol.flash.gguf"
    lay = convert_flash(smollm2_path, out, progress=False, predictor_rank=0)
    return smollm2_path, str(out), lay


def _registry_model(name: str, download: bool) -> str:
    """A registry model's path, pulled on first use when `download`; otherwise (or with
    LUTLLM_OFFLINE set) a model that is not pulled yet skips the test, saying how to get it."""
    from lutllm import models

    if models.is_pulled(name):
        return str(models.model_path(name))
    offline = os.environ.get("LUTLLM_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")
    if not download or offline:
        pytest.skip(f"model {name!r} is not pulled (run `lutllm pull {name}`)")
    return str(models.resolve_model(name))


@pytest.fixture(scope="session")
def gemma3_path():
    """Gemma 3 270M (SentencePiece vocabulary); pulled like the default model (CI runs it)."""
    return _registry_model("gemma3-270m", download=True)


@pytest.fixture(scope="session")
def qwen05_path():
    """Qwen2.5-Coder 0.5B Instruct; pulled like the default model (CI runs it)."""
    return _registry_model("qwen2.5-coder-0.5b-instruct", download=True)


@pytest.fixture(scope="session")
def qwen15_path():
    """Qwen2.5-Coder 1.5B Instruct (1.1 GB): only slow tests use it; pulled when they run."""
    return _registry_model("qwen2.5-coder-1.5b-instruct", download=True)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_report_header(config):
    try:
        from lutllm import _core

        return f"lutllm isas: {_core.available_isas()} (active {_core.active_isa()}), CI={os.environ.get('CI', '')}"
    except ImportError:
        return "lutllm._core not built"
