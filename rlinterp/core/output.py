"""What a command prints besides its results: progress bars and its dependencies' warnings.

- ``progress_bars(show)``: within it, every tqdm bar is drawn only if ``show`` (None: only
  when stderr is a terminal), rlinterp's own and those its libraries draw on their own
  (SAELens' norm-scaling and training bars, transformers' loading and saving bars), which
  take no setting of ours: one notebook cell drew about 1,600 of SAELens' lines. tqdm has no
  switch for every bar of a process once it is imported (its ``TQDM_DISABLE`` is read at
  import), so the context sets ``disable`` on each bar made inside it, and restores tqdm on
  leaving.
- ``warnings_once()``: every warning printed once per process (by text and category). A
  dependency warns on every model it loads, and each ``warnings.catch_warnings`` block
  (rlinterp's narrow suppressions, a library's own) resets Python's per-place registry, so
  the same deprecation notice printed dozens of times in one run; the ``once`` filter
  action does not help, as CPython keeps it in the same registry. So the display is
  deduplicated (``warnings.showwarning``, the documented hook), after the filters: a filter
  the user gave (``-W``, ``PYTHONWARNINGS``) still decides what is shown at all.

Neither acts at import time: the CLI calls them when a command starts, ``rlinterp.run`` wraps
a run in ``progress_bars``.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DISABLE_POSITION = 10
"""Index of ``disable`` among ``tqdm.__init__``'s positional parameters (after ``iterable,
desc, total, leave, file, ncols, mininterval, maxinterval, miniters, ascii``)."""


def shows_progress(show: bool | None) -> bool:
    """Whether bars are drawn: ``show``, or, when None, whether stderr is a terminal."""
    return sys.stderr.isatty() if show is None else show


@contextmanager
def progress_bars(show: bool | None = None) -> Iterator[bool]:
    """Within the block, tqdm bars are drawn only if ``shows_progress(show)`` (see the module
    docstring); yields that decision."""
    if shows_progress(show):
        yield True
        return
    from tqdm import std

    saved = std.tqdm.__dict__["__init__"]
    original = std.tqdm.__init__

    def silent(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > DISABLE_POSITION:
            args = (*args[:DISABLE_POSITION], True, *args[DISABLE_POSITION + 1 :])
        else:
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    std.tqdm.__init__ = silent
    try:
        yield False
    finally:
        std.tqdm.__init__ = saved


def warnings_once() -> None:
    """Print each warning once per process (see the module docstring); idempotent."""
    show = warnings.showwarning
    if getattr(show, "once", False):
        return
    shown: set[tuple[str, type[Warning]]] = set()

    def show_once(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if (str(message), category) not in shown:
            shown.add((str(message), category))
            show(message, category, filename, lineno, file, line)

    show_once.once = True  # type: ignore[attr-defined]
    warnings.showwarning = show_once
