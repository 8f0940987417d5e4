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


def _registry_path(name):
    from lutllm.models import resolve_model

    return str(resolve_model(name))


@pytest.fixture(scope="session")
def gemma3_path():
    """Gemma 3 270M (Q4_K_M mix, SPM tokenizer), pulled from the registry on first use."""
    return _registry_path("gemma3-270m")


@pytest.fixture(scope="session")
def qwen05_path():
    """Qwen2.5-Coder-0.5B-Instruct (Q5_0/Q4_K/Q6_K), pulled on first use (slow tests only)."""
    return _registry_path("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def qwen15_path():
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M, pulled on first use (slow tests only)."""
    return _registry_path("qwen2.5-coder-1.5b-instruct")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_report_header(config):
    try:
        from lutllm import _core

        return f"lutllm isas: {_core.available_isas()} (active {_core.active_isa()}), CI={os.environ.get('CI', '')}"
    except ImportError:
        return "lutllm._core not built"
