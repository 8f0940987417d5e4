"""The C API (liblutllm.so, runtime/include/lutllm.h) through cffi in ABI mode: greedy generation
agrees with the Python API, and bad arguments give error codes and messages, not crashes.
"""
import glob
import os
from pathlib import Path

import pytest

cffi = pytest.importorskip("cffi")

ROOT = Path(__file__).resolve().parents[1]

CDEF = """
typedef struct lutllm_model lutllm_model;
lutllm_model* lutllm_load(const char* path, int32_t n_ctx, int32_t n_threads, const char** err);
void lutllm_free(lutllm_model* model);
int32_t lutllm_n_vocab(const lutllm_model* model);
int32_t lutllm_n_ctx(const lutllm_model* model);
int32_t lutllm_token_eos(const lutllm_model* model);
int32_t lutllm_eval(lutllm_model* model, const int32_t* tokens, int32_t n, int32_t pos, float* logits);
int32_t lutllm_sample(const float* logits, int32_t n_vocab, float temperature, uint64_t* rng_state, int32_t* token);
int32_t lutllm_generate(lutllm_model* model, const int32_t* prompt, int32_t n_prompt, int32_t max_tokens,
                        float temperature, uint64_t seed, int32_t* out, int32_t* n_out);
void lutllm_cancel(lutllm_model* model);
const char* lutllm_last_error(void);
"""
OK, ERR_ARGUMENT, ERR_MODEL, ERR_CONTEXT = 0, -1, -2, -3


def _library_path():
    """The installed library next to _core, else the newest one in a build directory."""
    env = os.environ.get("LUTLLM_C_LIBRARY")
    if env:
        return env
    import lutllm

    here = Path(lutllm.__file__).parent / "liblutllm.so"
    if here.exists():
        return str(here)
    built = sorted(glob.glob(str(ROOT / "build" / "*" / "liblutllm.so")), key=os.path.getmtime)
    if not built:
        pytest.fail("liblutllm.so not found: build it (tools/dev_build.sh) or set LUTLLM_C_LIBRARY")
    return built[-1]


@pytest.fixture(scope="module")
def capi():
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return ffi, ffi.dlopen(_library_path())


@pytest.fixture(scope="module")
def model(capi, smollm2_path):
    ffi, lib = capi
    err = ffi.new("const char**")
    m = lib.lutllm_load(smollm2_path.encode(), 256, 0, err)
    assert m != ffi.NULL, ffi.string(err[0]).decode()
    yield m
    lib.lutllm_free(m)


def test_greedy_matches_python_api(capi, model, smollm2_path):
    from lutllm import Llama

    ffi, lib = capi
    llm = Llama(smollm2_path, n_ctx=256)
    prompt = llm.tokenize(b"The capital of France is", special=True)
    want = []
    for t in llm.generate(prompt, temp=0):
        if t == llm.token_eos() or len(want) == 10:
            break
        want.append(t)
    assert lib.lutllm_n_vocab(model) == llm.n_vocab()
    assert lib.lutllm_n_ctx(model) == 256
    assert lib.lutllm_token_eos(model) == llm.token_eos()
    out = ffi.new("int32_t[10]")
    n_out = ffi.new("int32_t*")
    rc = lib.lutllm_generate(model, ffi.new("int32_t[]", prompt), len(prompt), 10, 0.0, 0, out, n_out)
    assert rc == OK, ffi.string(lib.lutllm_last_error())
    assert list(out[0:n_out[0]]) == want
    # seeded sampling is reproducible
    a, b = ffi.new("int32_t[6]"), ffi.new("int32_t[6]")
    assert lib.lutllm_generate(model, ffi.new("int32_t[]", prompt), len(prompt), 6, 0.9, 42, a, n_out) == OK
    assert lib.lutllm_generate(model, ffi.new("int32_t[]", prompt), len(prompt), 6, 0.9, 42, b, n_out) == OK
    assert list(a) == list(b)


def test_bad_arguments(capi, model, smollm2_path, tmp_path):
    ffi, lib = capi
    NULL = ffi.NULL
    err = ffi.new("const char**")

    def msg():
        return ffi.string(lib.lutllm_last_error()).decode()

    assert lib.lutllm_load(NULL, 0, 0, err) == NULL and "NULL" in ffi.string(err[0]).decode()
    assert lib.lutllm_load(smollm2_path.encode(), -5, 0, err) == NULL and "n_ctx" in msg()
    assert lib.lutllm_load(smollm2_path.encode(), 2**31 - 1, 0, err) == NULL and "n_ctx" in msg()
    missing = str(tmp_path / "missing.gguf").encode()
    assert lib.lutllm_load(missing, 0, 0, err) == NULL and msg()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    assert lib.lutllm_load(str(junk).encode(), 0, 0, err) == NULL and "GGUF" in msg()
    lib.lutllm_free(NULL)
    assert lib.lutllm_n_vocab(NULL) == ERR_ARGUMENT
    tok = ffi.new("int32_t[]", [1, 2])
    logits = ffi.new("float[]", lib.lutllm_n_vocab(model))
    assert lib.lutllm_eval(NULL, tok, 2, 0, logits) == ERR_ARGUMENT
    assert lib.lutllm_eval(model, NULL, 2, 0, logits) == ERR_ARGUMENT
    assert lib.lutllm_eval(model, tok, 0, 0, logits) == ERR_ARGUMENT
    assert lib.lutllm_eval(model, ffi.new("int32_t[]", [10**8]), 1, 0, logits) == ERR_ARGUMENT
    assert "vocabulary" in msg()
    assert lib.lutllm_eval(model, tok, 2, 255, logits) == ERR_CONTEXT
    assert lib.lutllm_eval(model, tok, 2, -1, logits) == ERR_CONTEXT
    assert lib.lutllm_eval(model, tok, 2, 0, logits) == OK and lib.lutllm_last_error() != NULL and msg() == ""
    out, n_out = ffi.new("int32_t[4]"), ffi.new("int32_t*")
    assert lib.lutllm_generate(model, ffi.new("int32_t[300]"), 300, 4, 0.0, 0, out, n_out) == ERR_CONTEXT
    assert lib.lutllm_generate(model, tok, 2, 4, 0.0, 0, NULL, n_out) == ERR_ARGUMENT
    t = ffi.new("int32_t*")
    assert lib.lutllm_sample(NULL, 10, 0.0, NULL, t) == ERR_ARGUMENT
    assert lib.lutllm_sample(logits, 0, 0.0, NULL, t) == ERR_ARGUMENT
    assert lib.lutllm_sample(logits, lib.lutllm_n_vocab(model), 1.0, NULL, t) == ERR_ARGUMENT


@pytest.mark.parametrize("family", ["qwen2", "gemma3", "bitnet-relu2-tq2"])
def test_c_api_loads_every_family_like_python(capi, family, tmp_path):
    """The C API derives the model config from the GGUF on its own (no Python); its logits must
    equal the Python loader's on a small model of each family (same runtime, same config)."""
    import numpy as np
    from synthetic_models import write_model
    from test_model_zoo import SYNTHETIC, _runtime

    ffi, lib = capi
    path = write_model(tmp_path / f"{family}.gguf", **SYNTHETIC[family])
    toks = [5, 17, 42, 7, 99, 3, 250, 11, 64, 8, 12, 300]
    want = _runtime(path, n_ctx=64)[1].eval(np.asarray(toks, dtype=np.int32), 0, False)[-1]
    err = ffi.new("const char**")
    m = lib.lutllm_load(str(path).encode(), 64, 2, err)
    assert m != ffi.NULL, ffi.string(err[0]).decode()
    try:
        logits = ffi.new("float[]", lib.lutllm_n_vocab(m))
        assert lib.lutllm_eval(m, ffi.new("int32_t[]", toks), len(toks), 0, logits) == OK
        got = np.frombuffer(ffi.buffer(logits), dtype=np.float32)
        np.testing.assert_array_equal(got, want)
    finally:
        lib.lutllm_free(m)
