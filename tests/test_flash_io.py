"""FlashReader (runtime/flash_io.cc): every backend returns exactly the file's bytes for aligned,
misaligned, tiny, multi-piece and end-of-file ranges, and failures name the file and offset.
The reference is the file content written by numpy, read back with plain Python I/O."""
from __future__ import annotations

import os

import numpy as np
import pytest

from lutllm import _core

BACKENDS = ["uring", "pool", "buffered", "auto"]
MIB = 1 << 20


def _make(path, n, seed=0):
    data = np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8)
    data.tofile(path)
    return data


def _reader(path, backend, **kw):
    try:
        return _core.FlashReader(str(path), backend, **kw)
    except ValueError as e:  # a kernel / file system without io_uring or O_DIRECT
        if backend in ("uring", "pool") and ("not available" in str(e) or "O_DIRECT" in str(e)):
            pytest.skip(f"{backend} unavailable here: {e}")
        raise


@pytest.fixture
def blob(tmp_path):
    p = tmp_path / "blob.bin"
    return p, _make(p, 3 * MIB + 777)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shift", [0, 1, 4095])
def test_ranges_match_file(blob, backend, shift):
    p, data = blob
    r = _reader(p, backend)
    if backend != "auto":
        assert r.backend == backend
    n = len(data)
    offs = [0, 4096, 5, 3 * MIB, n - 10, 100_000, 0, 12_288]
    lens = [4096, 2 * MIB + 4096, 10_000, 777, 10, 0, n, 1]
    for o, ln, got in zip(offs, lens, r.read(offs, lens, shift)):
        assert got.shape == (ln,)
        np.testing.assert_array_equal(got, data[o : o + ln], err_msg=f"{backend} range ({o}, {ln}) shift {shift}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_ranges_more_than_queue_depth(blob, backend):
    p, data = blob
    r = _reader(p, backend, threads=3, depth=4)
    rng = np.random.default_rng(1)
    offs = [int(x) for x in rng.integers(0, len(data) - 70_000, size=300)]
    lens = [int(x) for x in rng.integers(1, 70_000, size=300)]
    # half of them aligned, so both the direct and the bounce path run in one batch
    for i in range(0, 300, 2):
        offs[i] = offs[i] // 4096 * 4096
        lens[i] = max(1, lens[i] // 4096) * 4096
    for o, ln, got in zip(offs, lens, r.read(offs, lens)):
        np.testing.assert_array_equal(got, data[o : o + ln])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [1, 100, 4095, 4096, 4097, 8191])
def test_short_files(tmp_path, backend, size):
    p = tmp_path / "short.bin"
    data = _make(p, size, seed=size)
    r = _reader(p, backend)
    assert r.file_size == size
    offs = [0, size - 1, size // 2]
    lens = [size, 1, size - size // 2]
    for o, ln, got in zip(offs, lens, r.read(offs, lens)):
        np.testing.assert_array_equal(got, data[o : o + ln])


@pytest.mark.parametrize("backend", BACKENDS)
def test_aligned_reads_issue_exactly_the_bytes(blob, backend):
    """Aligned ranges into aligned buffers are not widened: bytes issued == bytes asked."""
    p, _ = blob
    r = _reader(p, backend)
    r.read([0, 8192, MIB], [4096, 2 * 4096, MIB])
    assert r.bytes_issued == 4096 + 8192 + MIB
    before = r.bytes_issued
    r.read([5], [10])  # misaligned: widened to one 4096 block under O_DIRECT, exact otherwise
    assert r.bytes_issued - before == (4096 if r.direct else 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_past_end_of_file_is_an_error_naming_file_and_offset(blob, backend):
    p, data = blob
    r = _reader(p, backend)
    with pytest.raises(ValueError, match=rf"blob\.bin.*offset {len(data) - 5}.*past the end of the file"):
        r.read([len(data) - 5], [6])
    with pytest.raises(ValueError, match=r"past the end"):
        r.read([len(data) + 4096], [1])
    # the reader stays usable after a rejected batch
    np.testing.assert_array_equal(r.read([7], [9])[0], data[7:16])


@pytest.mark.parametrize("backend", BACKENDS)
def test_file_truncated_after_open_reports_offset(tmp_path, backend):
    p = tmp_path / "shrinks.bin"
    _make(p, 2 * MIB)
    r = _reader(p, backend)
    os.truncate(p, MIB)
    with pytest.raises(ValueError, match=r"shrinks\.bin: read at offset \d+.*(end of file|short read)"):
        r.read([MIB + 4096], [8192])
    with pytest.raises(ValueError, match=r"shrinks\.bin"):
        r.read([MIB - 4096], [8192])


def test_open_errors(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.bin: cannot open"):
        _core.FlashReader(str(tmp_path / "nope.bin"))
    with pytest.raises(ValueError, match=r"not a regular file"):
        _core.FlashReader(str(tmp_path))
    p = tmp_path / "x.bin"
    _make(p, 10)
    with pytest.raises(ValueError, match=r"unknown I/O backend 'mmap'"):
        _core.FlashReader(str(p), "mmap")


def test_env_var_selects_backend(blob, monkeypatch):
    p, data = blob
    monkeypatch.setenv("LUTLLM_FLASH_IO", "buffered")
    r = _core.FlashReader(str(p))
    assert r.backend == "buffered" and not r.direct
    np.testing.assert_array_equal(r.read([3], [5000])[0], data[3:5003])
    monkeypatch.setenv("LUTLLM_FLASH_IO", "bogus")
    with pytest.raises(ValueError, match="unknown I/O backend 'bogus'"):
        _core.FlashReader(str(p))


def test_buffered_backend_leaves_no_page_cache(tmp_path):
    """POSIX_FADV_DONTNEED after each piece: the file's pages are not left cached (mincore)."""
    p = tmp_path / "cache.bin"
    _make(p, 4 * MIB)
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if _resident_pages(p) not in (None, 0):
        pytest.skip("cannot evict the test file from the page cache")
    r = _core.FlashReader(str(p), "buffered")
    r.read([0], [4 * MIB])
    resident = _resident_pages(p)
    if resident is None:
        pytest.skip("mincore not reachable from Python here")
    assert resident <= 16, f"{resident} of 1024 pages still cached after buffered reads"


def _resident_pages(path):
    """Pages of `path` in the page cache (mincore over a fresh read-only mapping), or None."""
    import ctypes
    import ctypes.util
    import mmap

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        ok = libc.mincore(addr, size, vec) == 0
        libc.munmap(addr, size)
        return sum(v & 1 for v in vec) if ok else None
    finally:
        os.close(fd)
