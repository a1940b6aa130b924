"""Claiming an output directory: whether a command may write into it, decided before it
writes anything.

Every command that writes a run directory (organism build, harvest, diff, dictionary
training) calls ``claim(out, kind, fingerprint, entries)`` first and ``finish`` last:

- ``kind`` says which artifact it writes; every kind names itself in its manifest
  (``kind.manifest``), so any rlinterp directory says what it is;
- ``fingerprint`` is a flat JSON-ready dict of everything that determines the result
  (content hashes of the inputs, settings); resume and reuse compare it key by key;
- ``entries`` are the top-level names the run writes: the only names it ever deletes.

What ``claim`` does with what it finds at ``out``:

- nothing (an absent path, or a directory with no entries at all): writes the in-progress
  marker (``MARKER``: kind, fingerprint, entries) and returns ``new``;
- this kind's finished manifest, same fingerprint: ``finished`` (the caller reuses it);
- this kind's in-progress marker, same fingerprint: ``resume``: the ``resumable`` entries
  are kept (they were written atomically from the same inputs), the kind's other entries
  removed; a kind with nothing resumable starts again (``new``);
- this kind, other fingerprint: refused with the changed keys named, or, with ``force``,
  its entries removed and ``new``;
- anything else: refused with a one-line ``RlinterpError`` naming what is there: another
  kind's manifest or marker, files rlinterp did not write, dot-files only (a fresh
  ``git init`` is not empty), an unreadable manifest, a file.

Invariants:

- a refused claim changes nothing on disk: every check comes before the first write;
- removal touches only ``entries`` and the entries the previous run recorded, never a
  dot-entry and never a name the kind does not write; while it runs, the marker says the
  directory is this kind's, of unknown inputs, so an interrupted removal is never resumed;
- ``finish`` writes the manifest after every other output and then drops the marker: a
  manifest marks a finished run, and partial outputs never look finished (loaders go
  through ``read_finished``);
- orphaned temporary files of ``artifacts.atomic_write`` inside the run's own entries are
  removed whenever the directory is claimed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from ..errors import RlinterpError
from .artifacts import write_json

MARKER = ".rlinterp-in-progress.json"
"""The in-progress marker: written first, removed after the manifest."""
TMP_FILE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
"""The temporary names of ``atomic_write`` (``tempfile.mkstemp``): ``.<target>.<8 chars>.tmp``."""
SHOWN_CHANGES = 4
"""Changed fingerprint keys named in a refusal before "and N more"."""


@dataclass(frozen=True)
class Kind:
    """One kind of run directory."""

    name: str
    """The ``kind`` its manifest and marker record, e.g. ``rlinterp.diff``."""
    noun: str
    """What messages call it."""
    manifest: str = "manifest.json"
    """Its finished marker, written last."""
    legacy: tuple[str, ...] = ()
    """``kind`` values older rlinterp versions wrote into ``manifest`` for this artifact
    (recognised as this kind, but with no fingerprint, so never resumed or reused)."""


ORGANISM = Kind("rlinterp.organism", "organism")
STORE = Kind("rlinterp.activations", "activation store")
DIFF = Kind("rlinterp.diff", "diff")
DICTIONARY = Kind(
    "rlinterp.dictionary", "dictionary", manifest="rlinterp.json", legacy=("sae", "diff_sae", "crosscoder")
)
CIRCUITS = Kind("rlinterp.circuits", "circuits run")
SELECTION = Kind("rlinterp.selection", "selection analysis")
FIDELITY = Kind("rlinterp.fidelity", "fidelity analysis")
KINDS = (ORGANISM, STORE, DIFF, DICTIONARY, CIRCUITS, SELECTION, FIDELITY)
"""Every kind, so that each recognises the others' directories (add new kinds here)."""

State = Literal["new", "resume", "finished"]


class Claim(NamedTuple):
    """What ``claim`` decided."""

    state: State
    """``new``: write from scratch; ``resume``: continue an interrupted run of the same
    inputs; ``finished``: a finished run of the same inputs is there, reuse it."""
    manifest: dict[str, Any] | None
    """The finished manifest when ``state`` is ``finished``, else None."""


class _Found(NamedTuple):
    kind: str
    record: dict[str, Any]
    finished: bool


def claim(
    out: str | Path,
    kind: Kind,
    fingerprint: dict[str, Any],
    entries: Iterable[str],
    *,
    resumable: Collection[str] = (),
    force: bool = False,
) -> Claim:
    """Decide whether a run of ``kind`` may write into ``out`` (see the module docstring),
    and prepare it: marker written, stale entries and orphaned temporary files removed."""
    out = Path(out)
    fingerprint = json.loads(json.dumps(fingerprint))  # compare as the marker will store it
    ours = {*entries, kind.manifest}
    if out.exists() and not out.is_dir():
        raise RlinterpError(f"--out {out} is a file; give a directory path")
    try:
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as e:
        raise RlinterpError(f"cannot read {out}: {e.strerror}; choose another --out") from e
    if not names:
        _mark(out, kind, fingerprint, ours)
        return Claim("new", None)
    found = _identify(out, names, (*KINDS, kind) if kind not in KINDS else KINDS)
    if found is None:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise RlinterpError(
            f"{out} is not empty and holds no rlinterp {kind.noun} (it has {shown}); "
            "choose a new or empty --out"
        )
    state = "finished" if found.finished else "unfinished"
    if found.kind not in (kind.name, *kind.legacy):
        raise RlinterpError(
            f"{out} holds {_a(state)} {state} {_noun(found.kind)}, not {_a(kind.noun)} {kind.noun}; "
            "choose another --out"
        )
    listed = found.record.get("entries")
    known = ours | ({str(e) for e in listed} if isinstance(listed, list) else set())
    if not force:
        _require_same_inputs(out, kind, found, fingerprint)
    remove_orphans(out, known)
    if found.finished and not force:
        (out / MARKER).unlink(missing_ok=True)  # left if a run died right after its manifest
        return Claim("finished", found.record)
    keep = set() if force else set(resumable)
    # While a forced run removes the old entries, the marker says "inputs unknown".
    _clear(out, kind, remove=known - keep, record=known, fingerprint=None if force else fingerprint)
    _mark(out, kind, fingerprint, known)
    return Claim("resume" if keep else "new", None)


def _require_same_inputs(out: Path, kind: Kind, found: _Found, fingerprint: dict[str, Any]) -> None:
    state = "finished" if found.finished else "unfinished"
    recorded = found.record.get("fingerprint") if found.kind == kind.name else None
    if not isinstance(recorded, dict):
        raise RlinterpError(
            f"{out} holds {_a(state)} {state} {kind.noun} whose inputs were not recorded (an older "
            "rlinterp, or an interrupted --force); choose another --out or pass --force to recompute it"
        )
    changed = changes(recorded, fingerprint)
    if changed:
        raise RlinterpError(
            f"{out} holds {_a(state)} {state} {kind.noun} of other inputs ({changed}); "
            "choose another --out or pass --force to recompute it"
        )


def finish(out: str | Path, kind: Kind, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``kind``'s manifest (``manifest`` plus kind, fingerprint and entries from the
    marker, and ``complete: true``) after every other output, then drop the marker.
    Returns what was written."""
    out = Path(out)
    marker = _read(out / MARKER)
    if marker is None or marker.get("kind") != kind.name:
        raise RlinterpError(
            f"{out} lost its in-progress marker while the {kind.noun} was written "
            "(another process writing there?); run the command again"
        )
    written = {
        **manifest,
        "kind": kind.name,
        "complete": True,
        "fingerprint": marker["fingerprint"],
        "entries": marker["entries"],
    }
    write_json(out / kind.manifest, written)
    (out / MARKER).unlink()
    return written


def read_finished(root: str | Path, kind: Kind, hint: str) -> dict[str, Any]:
    """The manifest of the finished ``kind`` run in ``root``, or a one-line error saying
    what ``root`` is instead; ``hint`` says how to make one (e.g. "run `rlinterp diff`")."""
    root = Path(root)
    path = root / kind.manifest
    if not path.is_file():
        marker = _read(root / MARKER)
        if marker is not None and marker.get("kind") == kind.name:
            raise RlinterpError(f"the {kind.noun} in {root} is unfinished; {hint} to resume it")
        if marker is not None:
            noun = _noun(marker.get("kind"))
            raise RlinterpError(f"{root} holds an unfinished {noun}, not {_a(kind.noun)} {kind.noun}")
        raise RlinterpError(f"{root} is not a finished {kind.noun} (no {kind.manifest}); {hint}")
    manifest = _read(path)
    if manifest is None:
        raise RlinterpError(f"{path} is not valid JSON; {hint} in a new directory")
    found = manifest.get("kind")
    if found in kind.legacy:
        raise RlinterpError(f"{path} was written by an older rlinterp or by an unfinished run; {hint}")
    if found != kind.name:
        raise RlinterpError(
            f"{root} holds {_a(_noun(found))} {_noun(found)}, not {_a(kind.noun)} {kind.noun}"
        )
    if manifest.get("complete") is False:
        raise RlinterpError(f"the {kind.noun} in {root} is unfinished; {hint} to resume it")
    return manifest


def changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The fingerprint keys that differ between ``old`` (as recorded) and ``new``, as one
    clause for a message ("" when none), e.g. ``weights of step-5 changed; batch_size changed
    (4 -> 5)``: values are quoted when short, hashes and long lists are not."""
    found = []
    for key in [*new, *(k for k in old if k not in new)]:
        if key not in old:
            found.append(f"{key} is new")
        elif key not in new:
            found.append(f"{key} is gone")
        elif old[key] != new[key]:
            values = f" ({_short(old[key])} -> {_short(new[key])})" if _shown(old[key], new[key]) else ""
            found.append(f"{key} changed{values}")
    more = len(found) - SHOWN_CHANGES
    return "; ".join(found[:SHOWN_CHANGES]) + (f"; and {more} more" if more > 0 else "")


def digest(obj: object) -> str:
    """sha256 of ``obj`` as canonical JSON (e.g. one fingerprint inside another)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def remove_orphans(out: Path, entries: Iterable[str]) -> list[Path]:
    """Remove the temporary files that killed ``atomic_write`` calls left for ``entries``:
    at the top level those of an entry's own name, inside entry folders all of them (dot
    folders are never entered). Returns what was removed."""
    names = {e for e in entries if _plain(e)}
    orphans = [
        p for p in out.iterdir() if p.is_file() and (m := TMP_FILE.match(p.name)) and m["target"] in names
    ]
    for name in names:
        folder = out / name
        if folder.is_dir() and not folder.is_symlink():
            orphans += [p for p in _files(folder) if TMP_FILE.match(p.name)]
    for path in orphans:
        path.unlink(missing_ok=True)
    return orphans


def _files(folder: Path) -> Iterable[Path]:
    for path in folder.iterdir():
        if path.name.startswith(".") and path.is_dir():
            continue
        if path.is_dir() and not path.is_symlink():
            yield from _files(path)
        elif path.is_file():
            yield path


def _identify(out: Path, names: list[str], kinds: tuple[Kind, ...]) -> _Found | None:
    """Which run of ``kinds`` ``out`` holds, from its manifest or marker; None if neither."""
    manifests: dict[str, dict[str, Any]] = {}
    for name in sorted({k.manifest for k in kinds} & set(names)):
        manifest = _read(out / name)
        if manifest is None:
            raise RlinterpError(
                f"{out / name} is not valid JSON, so rlinterp cannot tell what {out} holds; "
                "choose another --out"
            )
        manifests[name] = manifest
    known = [
        (k, m) for k in kinds if (m := manifests.get(k.manifest)) and m.get("kind") in (k.name, *k.legacy)
    ]
    for k, manifest in known:
        if manifest["kind"] == k.name and manifest.get("complete") is not False:
            return _Found(k.name, manifest, finished=True)  # written last: wins over a marker
    if MARKER in names:
        marker = _read(out / MARKER)
        if marker is None or not isinstance(marker.get("kind"), str):
            raise RlinterpError(f"{out / MARKER} is damaged, so rlinterp cannot tell what {out} holds")
        return _Found(marker["kind"], marker, finished=False)
    if known:  # an unfinished or legacy manifest
        return _Found(str(known[0][1]["kind"]), known[0][1], finished=False)
    return None


def _mark(out: Path, kind: Kind, fingerprint: dict[str, Any] | None, entries: Iterable[str]) -> None:
    record = {
        "kind": kind.name,
        "fingerprint": fingerprint,
        "entries": sorted(e for e in entries if _plain(e)),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / MARKER, record)
    except OSError as e:
        raise RlinterpError(f"cannot write to {out}: {e.strerror}; choose a writable --out") from e


def _clear(
    out: Path, kind: Kind, remove: set[str], record: set[str], fingerprint: dict[str, Any] | None
) -> None:
    """Remove the plain names of ``remove`` from ``out``. Meanwhile the marker says the
    directory holds this kind, of ``fingerprint`` (None: unknown), with the entries
    ``record``; the manifest goes first, so no finished-looking directory is ever half
    removed."""
    names = sorted({e for e in remove if _plain(e)} & {p.name for p in out.iterdir()})
    if not names:
        return
    _mark(out, kind, fingerprint, record)
    for name in sorted(names, key=lambda n: n != kind.manifest):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _plain(name: str) -> bool:
    """A name a run may write and delete: one path component, not a dot-entry."""
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _noun(kind: object) -> str:
    known = {k.name: k.noun for k in KINDS} | {name: k.noun for k in KINDS for name in k.legacy}
    return known.get(str(kind), f"{kind} run")


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _short(value: object) -> str:
    return json.dumps(value)


def _shown(*values: object) -> bool:
    """Whether values are short enough to quote (hashes and long lists are not)."""
    return all(
        len(json.dumps(v)) <= 40 and not re.fullmatch(r'"[0-9a-f]{64}"', json.dumps(v)) for v in values
    )
