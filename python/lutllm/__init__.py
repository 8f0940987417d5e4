"""lutllm: a CPU/edge runtime for quantized LLMs (GGUF), with a C++/SIMD core.

This module only re-exports the public API; the pieces live in their own modules and the
compiled extension (`lutllm._core`) is imported lazily so pure-Python parts work without it.
"""
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("Llama", "LlamaState", "LogitsProcessorList", "StoppingCriteriaList"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'lutllm' has no attribute {name!r}")


__all__ = ["Llama", "LlamaState", "LogitsProcessorList", "StoppingCriteriaList", "__version__"]
