"""Thin progress-bar wrapper over tqdm: a bar on an interactive stderr, silence otherwise.

It only reports progress; it never decides what work is done. Disabled when `enabled` is
False, when stderr is not a TTY (unless forced, e.g. by --verbose), or when LUTLLM_NO_PROGRESS is
set to a non-empty value.
"""
from __future__ import annotations

import os
import sys
from typing import Any


def progress_enabled(enabled: bool = True, stream: Any = None, force: bool = False) -> bool:
    """Whether a bar would be drawn for this request on `stream` (default stderr); `force` draws
    one on a stream that is not a terminal too."""
    if not enabled or os.environ.get("LUTLLM_NO_PROGRESS"):
        return False
    if force:
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Byte or item counter; use as a context manager and call update(n).

    >>> with Progress(total=size, desc="pull", enabled=False) as bar:
    ...     bar.update(4096)
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "B",
                 enabled: bool = True, stream: Any = None, force: bool = False):
        self.n = 0
        self.total = total
        self._bar = None
        if progress_enabled(enabled, stream, force):
            from tqdm import tqdm  # imported lazily: quiet runs never pay for it

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B",
                             unit_divisor=1024 if unit == "B" else 1000,
                             file=sys.stderr if stream is None else stream,
                             dynamic_ncols=True, leave=True)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, n: int) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_description(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description(desc)

    def write(self, msg: str) -> None:
        """A status line that does not tear the bar; printed to stderr only when active."""
        if self._bar is not None:
            self._bar.write(msg, file=self._bar.fp)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoadProgress:
    """A `progress(done, total)` callable for Engine / _core.Model that draws a bar of layers bound.

    The bar opens on the first call (when the total is known) and closes at done == total or on
    close(). Drawing follows Progress's rules (TTY or force, LUTLLM_NO_PROGRESS).
    """

    def __init__(self, desc: str = "loading", enabled: bool = True, stream: Any = None, force: bool = False):
        self.desc = desc
        self._enabled = enabled
        self._stream = stream
        self._force = force
        self._bar: Progress | None = None
        self.calls: list[tuple[int, int]] = []  # every (done, total) seen, for callers and tests

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((int(done), int(total)))
        if self._bar is None:
            self._bar = Progress(total=int(total), desc=self.desc, unit="layer", enabled=self._enabled,
                                 stream=self._stream, force=self._force)
        if done > self._bar.n:
            self._bar.update(int(done) - self._bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "LoadProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
