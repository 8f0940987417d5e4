"""Shared pytest fixtures: the default model (pulled once into the user cache), seeded RNGs.

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


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_report_header(config):
    try:
        from lutllm import _core

        return f"lutllm isas: {_core.available_isas()} (active {_core.active_isa()}), CI={os.environ.get('CI', '')}"
    except ImportError:
        return "lutllm._core not built"
