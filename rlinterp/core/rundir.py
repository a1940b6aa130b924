"""Claiming an output directory: whether a command may write into it, decided before it
writes anything. The one claim of every command and artifact kind.

Every command that writes a directory (organism build, harvest, diff, dictionary training,
tracking, selection, circuits, a pipeline run, a run's paper figures) calls ``claim(out, kind, fingerprint,
entries)`` once its inputs are validated and before it computes, and ``finish`` last:

- ``kind`` says which artifact it writes (``KINDS``); every kind names itself in its
  manifest (``kind.manifest``) and in its claim file (``kind.marker``), so any rlinterp
  directory says what it is, and every kind recognises the others';
- ``fingerprint`` is a flat JSON-ready dict of everything that determines the result
  (content hashes of the inputs, settings); resume and reuse compare it key by key;
- ``entries`` are the top-level names the run writes: the only names it ever deletes.

The claim file is, for most kinds, the in-progress marker (``MARKER``: kind, fingerprint,
entries), dropped once the manifest is written. Two kinds keep a claim file of their own
beside the manifest, as the record of what they were run on: a pipeline run
(``.run.json``, which also records the config and the weights read) and a track run
(``track.json``, which *is* the fingerprint, the layout track directories always had).

What ``claim`` does with what it finds at ``out`` (one rule for every kind):

- nothing (an absent path, or a directory with no entries at all, dot-files included):
  writes the claim file and returns ``new``;
- this kind, finished, same fingerprint: ``finished`` (the caller reuses it);
- this kind, unfinished, same fingerprint: ``resume``: the ``resumable`` entries are kept
  (they were written atomically from the same inputs), the kind's other entries removed; a
  kind with nothing resumable starts again (``new``);
- this kind, other fingerprint (or one not recorded): refused with the changed keys
  named, or, with ``force``, its entries removed and ``new``. A kind whose fingerprint
  grows as rlinterp gains stages (``Kind.grows``: a run) compares the keys both sides
  have: a key the record lacks is a stage added since, which simply runs;
- anything else: refused with a one-line ``RlinterpError`` naming what is there: another
  kind's manifest or claim file, files rlinterp did not write, dot-files only (a fresh
  ``git init`` is not empty), an unreadable manifest or claim file, a file.

Invariants:

- a refused claim changes nothing on disk: every check comes before the first write, and
  a damaged manifest or claim file is a refusal (one line), never a reason to delete;
- removal touches only ``entries`` and the entries the previous run recorded, never a
  dot-entry and never a name the kind does not write; while it runs, the claim file says
  the directory is this kind's, of unknown inputs, so an interrupted removal is never resumed;
- ``finish`` writes the manifest after every other output (and drops the in-progress
  marker): a manifest marks a finished run, and partial outputs never look finished
  (loaders go through ``read_finished``);
- orphaned temporary files of ``artifacts.atomic_write`` inside the run's own entries are
  removed whenever the directory is claimed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
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
    """The ``kind`` its manifest and claim file record, e.g. ``rlinterp.diff``."""
    noun: str
    """What messages call it."""
    manifest: str = "manifest.json"
    """Its finished marker, written last."""
    legacy: tuple[str, ...] = ()
    """``kind`` values older rlinterp versions wrote into ``manifest`` for this artifact
    (recognised as this kind, but with no fingerprint, so never resumed or reused)."""
    marker: str = MARKER
    """Its claim file, written first. ``MARKER`` (kind, fingerprint, entries) is dropped
    once the manifest is written; a claim file of the kind's own is kept beside the
    manifest as the record of its inputs."""
    grows: bool = False
    """Its fingerprint gains keys as rlinterp gains stages: a key the record lacks is a
    stage added since, not a change."""
    flat: bool = False
    """Its claim file is the fingerprint itself (with ``kind`` among its keys), not a
    record holding one."""

    @property
    def keeps_marker(self) -> bool:
        return self.marker != MARKER


ORGANISM = Kind("rlinterp.organism", "organism")
STORE = Kind("rlinterp.activations", "activation store")
ON_POLICY = Kind("rlinterp.onpolicy", "on-policy harvest")
DIFF = Kind("rlinterp.diff", "diff")
DICTIONARY = Kind(
    "rlinterp.dictionary", "dictionary", manifest="rlinterp.json", legacy=("sae", "diff_sae", "crosscoder")
)
TRACK = Kind("rlinterp.track", "track run", marker="track.json", flat=True)
SELECTION = Kind("rlinterp.selection", "selection analysis")
CIRCUITS = Kind("rlinterp.circuits", "circuits run")
FIDELITY = Kind("rlinterp.fidelity", "fidelity analysis")
RUN = Kind("rlinterp.run", "run", marker=".run.json", grows=True)
FIGURES = Kind("rlinterp.figures", "figure folder")
KINDS = (ORGANISM, STORE, ON_POLICY, DIFF, DICTIONARY, TRACK, SELECTION, CIRCUITS, FIDELITY, RUN, FIGURES)
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
    """The ``kind`` recorded."""
    finished: bool
    manifest: dict[str, Any] | None
    """Its manifest (a finished one, or a legacy or unfinished one when no claim file is there)."""
    marker: dict[str, Any] | None
    """Its claim file."""


def claim(
    out: str | Path,
    kind: Kind,
    fingerprint: dict[str, Any],
    entries: Iterable[str],
    *,
    resumable: Collection[str] = (),
    force: bool = False,
    record: dict[str, Any] | None = None,
) -> Claim:
    """Decide whether a run of ``kind`` may write into ``out`` (see the module docstring),
    and prepare it: claim file written, stale entries and orphaned temporary files removed.
    ``record``: more keys for a kept claim file (a run's config); a resumed or reused run's
    earlier keys are kept, a new one's are not."""
    out = Path(out)
    fingerprint = json.loads(json.dumps(fingerprint))  # compare as the claim file will store it
    ours = {*entries, kind.manifest}
    found = _inspect(out, kind)
    if found is None:
        _mark(out, kind, fingerprint, ours, record or {})
        return Claim("new", None)
    state = "finished" if found.finished else "unfinished"
    recorded = _recorded(kind, found)
    listed = (found.marker or found.manifest or {}).get("entries")
    known = ours | ({str(e) for e in listed} if isinstance(listed, list) else set())
    if not force:
        _require_same_inputs(out, kind, state, recorded, fingerprint)
    # A reused or resumed run keeps what its kept claim file recorded (a run's inputs).
    kept = found.marker if kind.keeps_marker and found.marker and not force else {}
    remove_orphans(out, known)
    if found.finished and not force:
        if kind.keeps_marker:
            _mark(out, kind, fingerprint, known, {**kept, **(record or {})})
        else:
            (out / MARKER).unlink(missing_ok=True)  # left if a run died right after its manifest
        return Claim("finished", found.manifest)
    keep = set() if force else set(resumable)
    # While a forced run removes the old entries, the claim file says "inputs unknown".
    _clear(out, kind, remove=known - keep, record=known, fingerprint=None if force else fingerprint)
    _mark(out, kind, fingerprint, known, {**kept, **(record or {})})
    return Claim("resume" if keep else "new", None)


def require_claimable(out: str | Path, kind: Kind) -> None:
    """Raise what ``claim`` would raise for ``out`` whatever the fingerprint (a file, files
    rlinterp did not write, another kind's run, an unreadable manifest or claim file),
    writing nothing: a command that claims ``out`` only later (the organism a run builds
    after claiming its own directory) checks it before anything is written."""
    _inspect(Path(out), kind)


def _inspect(out: Path, kind: Kind) -> _Found | None:
    """The run of ``kind`` that ``out`` holds, None if ``out`` is absent or has no entries
    at all; a one-line refusal for anything else."""
    if out.exists() and not out.is_dir():
        raise RlinterpError(f"--out {out} is a file; give a directory path")
    try:
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as e:
        raise RlinterpError(f"cannot read {out}: {e.strerror}; choose another --out") from e
    if not names:
        return None
    found = _identify(out, names, (*KINDS, kind) if kind not in KINDS else KINDS)
    if found is None:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise RlinterpError(
            f"{out} is not empty and holds no rlinterp {kind.noun} (it has {shown}); "
            "choose a new or empty --out"
        )
    if found.kind not in (kind.name, *kind.legacy):
        state = "finished" if found.finished else "unfinished"
        raise RlinterpError(
            f"{out} holds {_a(state)} {state} {_noun(found.kind)}, not {_a(kind.noun)} {kind.noun}; "
            "choose another --out"
        )
    return found


def _recorded(kind: Kind, found: _Found) -> dict[str, Any] | None:
    """The fingerprint ``found`` recorded, if any: in its claim file, or in a finished
    manifest (which carries the fingerprint once the in-progress marker is gone)."""
    if found.kind != kind.name:  # a legacy kind value: never resumed or reused
        return None
    source = found.marker if found.marker is not None else found.manifest
    if source is None:
        return None
    if kind.flat and source is found.marker:
        rest = {k: v for k, v in source.items() if k != "kind"}
        return source if rest else None
    value = source.get("fingerprint")
    return value if isinstance(value, dict) else None


def _require_same_inputs(
    out: Path, kind: Kind, state: str, recorded: dict[str, Any] | None, fingerprint: dict[str, Any]
) -> None:
    if recorded is None:
        raise RlinterpError(
            f"{out} holds {_a(state)} {state} {kind.noun} whose inputs were not recorded (an older "
            "rlinterp, or an interrupted --force); choose another --out or pass --force to recompute it"
        )
    if kind.grows:  # a key only one side has is a stage added (or dropped) since
        recorded = {k: v for k, v in recorded.items() if k in fingerprint}
        fingerprint = {k: v for k, v in fingerprint.items() if k in recorded}
    changed = changes(recorded, fingerprint)
    if changed:
        raise RlinterpError(
            f"{out} holds {_a(state)} {state} {kind.noun} of other inputs ({changed}); "
            "choose another --out or pass --force to recompute it"
        )


@contextmanager
def kept_as_found(out: str | Path | None) -> Iterator[None]:
    """Run the block; if it fails having written nothing into ``out`` but claim files
    (refused, or failed before it computed anything) and ``out`` was absent or empty
    before, leave ``out`` as it was: the claim files, and the folders made for them, go, so
    the corrected command runs as the first would have. Anything else it wrote stays (a
    resumable partial result is kept)."""
    if out is None:
        yield
        return
    out = Path(out)
    made = _first_missing(out)
    empty = out.is_dir() and not any(out.iterdir())
    try:
        yield
    except BaseException:
        root = made if made is not None else out
        if (made is not None or empty) and root.is_dir() and _only_claims(root):
            for path in [root] if made is not None else list(out.iterdir()):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _only_claims(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but claim files (any kind's) and folders of them."""
    names = {k.marker for k in KINDS} | {MARKER}
    return all(p.is_dir() and not p.is_symlink() or p.name in names for p in folder.rglob("*"))


def finish(out: str | Path, kind: Kind, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``kind``'s manifest (``manifest`` plus kind and ``complete: true``, and the
    fingerprint and entries of an in-progress marker) after every other output, then drop
    the in-progress marker (a kept claim file stays). Returns what was written."""
    out = Path(out)
    marker = _read(out / kind.marker)
    if marker is None or marker.get("kind") != kind.name:
        raise RlinterpError(
            f"{out} lost its claim file {kind.marker} while the {kind.noun} was written "
            "(another process writing there?); run the command again"
        )
    written = {**manifest, "kind": kind.name, "complete": True}
    if not kind.keeps_marker:
        written |= {"fingerprint": marker["fingerprint"], "entries": marker["entries"]}
    write_json(out / kind.manifest, written)
    if not kind.keeps_marker:
        (out / MARKER).unlink()
    return written


def read_finished(root: str | Path, kind: Kind, hint: str) -> dict[str, Any]:
    """The manifest of the finished ``kind`` run in ``root``, or a one-line error saying
    what ``root`` is instead; ``hint`` says how to make one (e.g. "run `rlinterp diff`")."""
    root = Path(root)
    path = root / kind.manifest
    if not path.is_file():
        marker = next((m for name in {kind.marker, MARKER} if (m := _read(root / name)) is not None), None)
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


def read_record(root: str | Path, kind: Kind) -> dict[str, Any]:
    """The kept claim file of ``kind`` in ``root`` (a run's ``.run.json``); one line if it
    is missing or damaged."""
    path = Path(root) / kind.marker
    record = _read(path)
    if record is None or record.get("kind") != kind.name:
        raise RlinterpError(f"{path} is missing or damaged; run the command again in a new directory")
    return record


def annotate(root: str | Path, kind: Kind, values: dict[str, Any]) -> None:
    """Add ``values`` to the kept claim file of ``kind`` in ``root`` (what a run learnt once
    it started, e.g. the digests of the weights it reads)."""
    write_json(Path(root) / kind.marker, {**read_record(root, kind), **values})


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
    """Which run of ``kinds`` ``out`` holds, from its manifest or claim file; None if
    neither. A manifest or claim file that cannot be read is refused here."""
    read: dict[str, dict[str, Any]] = {}
    for name in sorted(({k.manifest for k in kinds} | {k.marker for k in kinds}) & set(names)):
        found = _read(out / name)
        if found is None:
            raise RlinterpError(
                f"{out / name} is not valid JSON, so rlinterp cannot tell what {out} holds; "
                "choose another --out"
            )
        read[name] = found
    manifests = [
        (k, m) for k in kinds if (m := read.get(k.manifest)) and m.get("kind") in (k.name, *k.legacy)
    ]
    for k, manifest in manifests:  # a finished manifest, written last, wins over a claim file
        if manifest["kind"] == k.name and manifest.get("complete") is not False:
            marker = read.get(k.marker) if k.keeps_marker else None
            return _Found(k.name, True, manifest, marker if marker and marker.get("kind") == k.name else None)
    for name in sorted({k.marker for k in kinds} & set(read)):
        marker = read[name]
        if not isinstance(marker.get("kind"), str):
            raise RlinterpError(f"{out / name} is damaged, so rlinterp cannot tell what {out} holds")
        return _Found(marker["kind"], False, None, marker)
    if manifests:  # an unfinished or legacy manifest
        return _Found(str(manifests[0][1]["kind"]), False, manifests[0][1], None)
    return None


def _mark(
    out: Path,
    kind: Kind,
    fingerprint: dict[str, Any] | None,
    entries: Iterable[str],
    record: dict[str, Any] | None = None,
) -> None:
    """Write ``kind``'s claim file: ``record``'s keys, then kind, fingerprint and entries
    (a flat one: kind and the fingerprint's keys)."""
    if kind.flat:
        written = {"kind": kind.name, **(fingerprint or {})}
    else:
        plain = sorted(e for e in entries if _plain(e))
        written = {**(record or {}), "kind": kind.name, "fingerprint": fingerprint, "entries": plain}
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / kind.marker, written)
    except OSError as e:
        raise RlinterpError(f"cannot write to {out}: {e.strerror}; choose a writable --out") from e


def _clear(
    out: Path, kind: Kind, remove: set[str], record: set[str], fingerprint: dict[str, Any] | None
) -> None:
    """Remove the plain names of ``remove`` from ``out``. Meanwhile the claim file says the
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


def folder_name_problem(name: str) -> str | None:
    """Why ``name``, typed by a user, cannot be a folder a run writes (a series or regime
    name), or None: empty, too long, a path, a dot-name (never written or removed by a run,
    ``_plain``), or a control character."""
    if not name.strip():
        return "is empty"
    if len(name) > 100:
        return "is longer than 100 characters"
    if not _plain(name) or name in (".", ".."):
        return "is not a folder name (no '/' or '\\', not starting with '.')"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a control character"
    return None


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
        len(json.dumps(v)) <= 40 and not re.fullmatch(r'"[0-9a-f]{16,}"', json.dumps(v)) for v in values
    )
