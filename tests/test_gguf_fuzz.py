"""Fuzz test of lutllm.gguf_file: corrupted variants of a small valid GGUF must either raise
GGUFError or parse into something that still validates; never another exception, a hang,
or a memory blow-up.

Not a test of parsed values (test_gguf_file.py does that). The valid seed file is written by
gguf.GGUFWriter; the map of its fields used for targeted mutations is walked here from the
GGUF spec, independently of the reader under test. With CI set, hypothesis is derandomized.
"""
from __future__ import annotations

import itertools
import os
import resource
import signal
import struct
import subprocess
import sys
import textwrap
from datetime import timedelta

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lutllm.gguf_file import GGUFError, GGUFFile, describe

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType
IN_CI = bool(os.environ.get("CI"))
WATCHDOG_S = 5.0          # one parse of a ~1 KiB file taking this long means a hang
MAX_RSS_GROWTH_MB = 200   # for the whole fuzz run in this process

FUZZ = settings(
    max_examples=400,
    deadline=timedelta(seconds=2),
    derandomize=IN_CI,
    database=None if IN_CI else settings.default.database,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- the seed file
def build_seed(path: str) -> bytes:
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("general.name", "fuzz seed")
    w.add_custom_alignment(32)  # so that general.alignment itself gets mutated too
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b\u00e9", "\u2581c"])
    w.add_array("tokenizer.ggml.token_type", [3, 3, 1, 1, 1])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, -2.0, -3.25, -4.0])
    rng = np.random.default_rng(7)
    w.add_tensor("f32", rng.standard_normal((4, 8)).astype(np.float32))
    w.add_tensor("q8", rng.integers(0, 256, (2, 2 * 34), dtype=np.uint8), raw_dtype=QT.Q8_0)
    w.add_tensor("q41", rng.integers(0, 256, (3, 20), dtype=np.uint8), raw_dtype=QT.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        return f.read()


_FIXED = {VT.UINT8: 1, VT.INT8: 1, VT.UINT16: 2, VT.INT16: 2, VT.UINT32: 4, VT.INT32: 4,
          VT.FLOAT32: 4, VT.BOOL: 1, VT.UINT64: 8, VT.INT64: 8, VT.FLOAT64: 8}


def walk(b: bytes) -> list[tuple[str, int, int]]:
    """(kind, offset, width) of every integer field of a *valid* GGUF, from the spec."""
    out = [("version", 4, 4), ("tensor_count", 8, 8), ("kv_count", 16, 8)]
    n_tensors, n_kv = struct.unpack_from("<QQ", b, 8)
    pos = 24

    def u(fmt: str, kind: str) -> int:
        nonlocal pos
        (v,) = struct.unpack_from(fmt, b, pos)
        out.append((kind, pos, struct.calcsize(fmt)))
        pos += struct.calcsize(fmt)
        return v

    def string(kind: str) -> None:
        nonlocal pos
        n = u("<Q", kind)  # (not `pos += u(...)`: that would read pos before u moves it)
        pos += n

    def value(vt: int) -> None:
        nonlocal pos
        if vt == VT.STRING:
            string("string_len")
        elif vt == VT.ARRAY:
            item = u("<I", "array_item_type")
            for _ in range(u("<Q", "array_len")):
                value(item)
        else:
            out.append(("scalar", pos, _FIXED[vt]))
            pos += _FIXED[vt]

    for _ in range(n_kv):
        string("key_len")
        value(u("<I", "value_type"))
    for _ in range(n_tensors):
        string("tensor_name_len")
        for _ in range(u("<I", "n_dims")):
            u("<Q", "dim")
        u("<I", "tensor_type")
        u("<Q", "tensor_offset")
    return out


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    b = build_seed(str(d / "seed.gguf"))
    g = GGUFFile(str(d / "seed.gguf"))  # the seed itself must be valid
    assert list(g.tensors) == ["f32", "q8", "q41"]
    return b, walk(b), d


# --------------------------------------------------------------------------- the oracle
class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"parse took longer than {WATCHDOG_S} s")


_counter = itertools.count()


def check(data: bytes, d) -> None:
    """Parse `data`; GGUFError (naming the file) or a self-consistent result is accepted.
    Any other exception, including the watchdog's Hang, fails the test."""
    path = str(d / f"case{next(_counter)}.gguf")
    with open(path, "wb") as f:
        f.write(data)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
    try:
        try:
            g = GGUFFile(path)
        except GGUFError as e:
            assert str(e).startswith(path + ": "), str(e)
            return
        validate(g, len(data))
        del g
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.unlink(path)


def validate(g: GGUFFile, size: int) -> None:
    assert g.file_size == size
    assert g.version in (2, 3)
    assert g.alignment > 0 and g.alignment & (g.alignment - 1) == 0
    for k, v in g.metadata.items():
        assert isinstance(k, str) and k
        assert isinstance(v, (str, int, float, bool, list, np.ndarray)), (k, type(v))
        if isinstance(v, list):
            assert all(isinstance(x, str) for x in v)
    spans = []
    for name, t in g.tensors.items():
        assert name == t.name and 1 <= len(t.shape) <= 4 and all(x > 0 for x in t.shape)
        block, tsize = gguf.GGML_QUANT_SIZES[QT(t.ggml_type)]
        assert t.nbytes == t.n_elements // block * tsize
        assert (t.offset - g.data_offset) % g.alignment == 0
        assert g.data_offset <= t.offset and t.offset + t.nbytes <= size
        assert g.tensor_data(name).nbytes == t.nbytes
        spans.append((t.offset, t.offset + t.nbytes))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert isinstance(describe(g), str)


def special_values(width: int, size: int) -> list[int]:
    top = 2 ** (8 * width)
    vals = {0, 1, 2, 3, 4, 5, 7, 13, 31, 32, 33, 64, 255, 256, 65535, size, size + 1,
            2**31, 2**32, 2**40, 2**62, 2**63, top - 1, top - 2, top - 32, top // 2, top // 2 - 1}
    return sorted(v for v in vals if v < top)


# --------------------------------------------------------------------------- tests
def test_every_truncation(seed):
    b, _, d = seed
    for n in range(len(b)):
        check(b[:n], d)


def test_every_field_set_to_every_special_value(seed):
    """Each count, length, type and offset field set to 0, 1, huge, 'negative', size+1, ..."""
    b, fields, d = seed
    for kind, pos, width in fields:
        for v in special_values(width, len(b)):
            m = bytearray(b)
            m[pos:pos + width] = v.to_bytes(width, "little")
            check(bytes(m), d)


@st.composite
def targeted(draw, b: bytes, fields):
    m = bytearray(b)
    for _ in range(draw(st.integers(1, 3))):
        kind, pos, width = draw(st.sampled_from(fields))
        top = 2 ** (8 * width)
        current = int.from_bytes(m[pos:pos + width], "little")
        v = draw(st.sampled_from(special_values(width, len(b)))
                 | st.integers(0, top - 1)
                 | st.integers(-64, 64).map(lambda delta: (current + delta) % top))
        m[pos:pos + width] = v.to_bytes(width, "little")
    if draw(st.booleans()):
        m = m[:draw(st.integers(0, len(m)))]
    return bytes(m)


@st.composite
def byte_mutations(draw, b: bytes):
    m = bytearray(b)
    for _ in range(draw(st.integers(1, 16))):
        op = draw(st.sampled_from(["set", "set", "insert", "delete"]))
        pos = draw(st.integers(0, len(m) - 1)) if m else 0
        if op == "set" and m:
            m[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            m[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif m:
            del m[pos:pos + draw(st.integers(1, 16))]
    return bytes(m)


@FUZZ
@given(data=st.data())
def test_targeted_mutations(seed, data):
    b, fields, d = seed
    check(data.draw(targeted(b, fields)), d)


@FUZZ
@given(data=st.data())
def test_random_byte_mutations(seed, data):
    b, _, d = seed
    check(data.draw(byte_mutations(b)), d)


@FUZZ
@given(data=st.data())
def test_random_files_with_valid_magic(seed, data):
    _, _, d = seed
    body = data.draw(st.binary(min_size=0, max_size=512))
    version = data.draw(st.sampled_from([2, 3]))
    check(b"GGUF" + struct.pack("<I", version) + body, d)


def test_rss_stays_bounded(seed):
    """Runs after the fuzz tests in this module: their peak RSS must not have grown much."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    b, fields, d = seed
    for kind, pos, width in fields:
        m = bytearray(b)
        m[pos:pos + width] = (2 ** (8 * width) - 1).to_bytes(width, "little")
        check(bytes(m), d)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < MAX_RSS_GROWTH_MB


CHILD = textwrap.dedent("""
    import os, resource, sys
    from lutllm.gguf_file import GGUFError, GGUFFile
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    limit = vm + 256 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    ok = errors = 0
    for p in sys.argv[1:]:
        try:
            GGUFFile(p)
            ok += 1
        except GGUFError:
            errors += 1
    print(ok, errors)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_huge_counts_under_address_space_limit(seed, tmp_path):
    """Every count/length field set to huge values, parsed in a child whose address space is
    capped at 256 MiB above its size after imports: an allocation proportional to a crafted
    count would die with MemoryError there (and fail this test) instead of being absorbed."""
    b, fields, _ = seed
    paths = []
    for i, (kind, pos, width) in enumerate(fields):
        top = 2 ** (8 * width)
        for v in sorted({top - 1, top // 2, 2**40 % top, 2**31 % top} - {0}):
            m = bytearray(b)
            m[pos:pos + width] = v.to_bytes(width, "little")
            p = tmp_path / f"huge{i}_{v}.gguf"
            p.write_bytes(bytes(m))
            paths.append(str(p))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", CHILD, *paths], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ok, errors = map(int, r.stdout.split())
    assert ok + errors == len(paths) and errors > 0
