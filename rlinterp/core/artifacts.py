"""Writing artifacts safely and describing what produced them.

Every file a stage writes goes through ``atomic_write``: the bytes land in a temporary
file beside the target and are renamed over it, so an interrupted run never leaves a
half-written file under a final name. A stage's ``manifest.json`` is written last; its
presence is what marks a run directory as finished (see ``rundir``).

Content hashes of inputs (``weights_sha256``, ``config_sha256``, ``tokenizer_sha256``) go
into the fingerprints that decide whether a run may be resumed or reused. ``file_digest``
hashes a file and any byte spans of it (a checkpoint's tensors, for the duplicate check) in
one read, and caches both per (path, inode, size, mtime) within a process: checking a series
for duplicate checkpoints and then fingerprinting it reads every weight byte once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Collection
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import RlinterpError

if TYPE_CHECKING:  # imported where used: reading a manifest needs none of them
    import pandas as pd
    import torch
    from torch import Tensor

TRACKED_PACKAGES = ("rlinterp", "torch", "transformers", "transformer-lens", "sae-lens")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary path in ``path``'s folder, then rename it to
    ``path``. On any error the temporary file is removed and ``path`` is untouched; an OS
    error (a full disk, a read-only or forbidden folder) is one ``RlinterpError`` line naming
    ``path`` (``os_error``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise os_error(e, path) from e
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts are shared files
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):  # on a read-only disk even this may fail
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise os_error(e, path) from e
        raise


OS_REMEDIES = {
    errno.ENOSPC: "free disk space, then run the command again (finished steps are kept)",
    errno.EDQUOT: "free space in your quota, then run the command again (finished steps are kept)",
    errno.EROFS: "the file system is read-only: choose a writable --out",
    errno.EACCES: "fix its permissions, or choose an --out you may write to",
    errno.EPERM: "fix its permissions, or choose an --out you may write to",
}
"""What to do about the OS errors a run meets in its environment (not bugs of rlinterp)."""


def os_error(
    e: OSError, path: str | os.PathLike[str] | None = None, doing: str = "cannot write"
) -> RlinterpError:
    """``e`` as one line naming the file (``path``, else the error's own) and what to do
    (``OS_REMEDIES``; other errors say to check the path)."""
    where = path if path is not None else e.filename
    remedy = OS_REMEDIES.get(e.errno or 0, "check the path and run the command again")
    return RlinterpError(f"{doing} {where}: {e.strerror or e}; {remedy}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_safetensors(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """An optimizer's per-parameter state as flat safetensors entries ``opt.<i>.<name>``
    (hyperparameters are not saved: the optimizer is rebuilt from its config)."""
    state = optimizer.state_dict()["state"]
    return {f"opt.{i}.{name}": value for i, entry in state.items() for name, value in entry.items()}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    """Load entries written by ``optimizer_tensors`` into ``optimizer``."""
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)


WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
"""A checkpoint's weights: one safetensors file, or shards and their index."""
TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "*.tiktoken",
)
"""The files a Hugging Face tokenizer may be read from."""
CONFIG_NOT_HASHED = ("transformers_version", "_name_or_path", "_commit_hash")
"""config.json fields that say who saved a checkpoint, not what it computes."""

RECENT_NS = 2_000_000_000
"""Files modified this recently are hashed every time: file times advance in coarse ticks,
so a rewrite within the same tick would look unchanged (git's "racily clean" problem)."""

CHUNK_BYTES = 1 << 22
"""Bytes read at a time while hashing."""

Span = tuple[int, int]
"""``(begin, end)``: the bytes of a file from offset ``begin`` up to, not including, ``end``."""


class FileDigest(NamedTuple):
    """The sha256 digests of a file and of byte spans of it, from one read."""

    whole: str
    """Hex digest of every byte of the file."""
    spans: dict[Span, str]
    """Hex digest of the bytes of each span asked for."""


_digests: dict[tuple[str, int, int, int, int], FileDigest] = {}


def require_output_dir(path: Path) -> Path:
    """``path`` if it is a directory or does not exist yet; an error if it names a file."""
    if path.exists() and not path.is_dir():
        raise RlinterpError(f"output path {path} is a file; give a directory path")
    return path


def read_json_object(path: Path, remedy: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a manifest), or an ``RlinterpError`` that names the file,
    says what is wrong with it and ends with ``remedy``."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RlinterpError(f"{path} is not valid JSON ({e}); {remedy}") from e
    except OSError as e:
        raise os_error(e, path, doing="cannot read") from e
    if not isinstance(obj, dict):
        raise RlinterpError(f"{path} holds a JSON {type(obj).__name__}, not an object; {remedy}")
    return obj


def read_safetensors(path: Path, remedy: str, device: str = "cpu") -> dict[str, Tensor]:
    """The tensors in ``path``, or an ``RlinterpError`` naming the file and ending with
    ``remedy`` if it is missing, truncated or not a safetensors file (a resume checkpoint
    damaged outside rlinterp: refused, never deleted)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device=device)
    except (OSError, SafetensorError) as e:
        raise RlinterpError(f"{path} is missing or not a complete safetensors file ({e}); {remedy}") from e


def read_parquet(path: Path, remedy: str) -> pd.DataFrame:
    """The table in ``path``, or an ``RlinterpError`` naming the file and ending with
    ``remedy`` if it is missing or not a readable Parquet file."""
    import pandas as pd
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowException) as e:
        raise RlinterpError(f"{path} is missing or not a readable Parquet file ({e}); {remedy}") from e


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes (cached within the process while the file is unchanged)."""
    return file_digest(path).whole


def file_digest(path: Path, spans: Collection[Span] = ()) -> FileDigest:
    """sha256 of a file and of each of ``spans``, cached within the process while the file
    is unchanged (same path, inode, size and modification time; see ``RECENT_NS``). A
    cached digest answers when it holds every span asked for; otherwise the file is read
    once more, for the spans asked for now and before."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    cached = _digests.get(key)
    if cached is not None and all(span in cached.spans for span in spans):
        return cached
    found = _read_digests(path, sorted({*spans, *(cached.spans if cached else ())}))
    if time.time_ns() - stat.st_mtime_ns > RECENT_NS:
        _digests[key] = found
    return found


def _read_digests(path: Path, spans: list[Span]) -> FileDigest:
    """One sequential read of ``path`` feeding the whole file's hash and each span's
    (``spans`` sorted by their start)."""
    whole = hashlib.sha256()
    parts = {span: hashlib.sha256() for span in spans}
    first, offset = 0, 0  # spans[:first] end before ``offset``
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            whole.update(chunk)
            view, end = memoryview(chunk), offset + len(chunk)
            while first < len(spans) and spans[first][1] <= offset:
                first += 1
            for begin, stop in spans[first:]:
                if begin >= end:
                    break
                if stop > offset:
                    parts[begin, stop].update(view[max(begin, offset) - offset : min(stop, end) - offset])
            offset = end
    if spans and max(stop for _, stop in spans) > offset:
        raise RlinterpError(f"{path} is shorter than its header says: it was truncated, or is being written")
    return FileDigest(whole.hexdigest(), {span: h.hexdigest() for span, h in parts.items()})


def files_sha256(folder: Path, patterns: tuple[str, ...]) -> str:
    """One digest of the files of ``folder`` matching ``patterns``, names included."""
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    listing = "".join(f"{p.name} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def weights_sha256(checkpoint: Path) -> str:
    """Digest of a checkpoint folder's weight files (``WEIGHT_FILES``)."""
    return files_sha256(checkpoint, WEIGHT_FILES)


def tokenizer_sha256(checkpoint: Path) -> str:
    """Digest of a checkpoint folder's tokenizer files (``TOKENIZER_FILES``)."""
    return files_sha256(checkpoint, TOKENIZER_FILES)


def config_sha256(checkpoint: Path) -> str:
    """Digest of a checkpoint's ``config.json`` (``adapter_config.json`` for a PEFT adapter
    checkpoint, which has no model config of its own) as data, without
    ``CONFIG_NOT_HASHED``."""
    name = "config.json" if (checkpoint / "config.json").is_file() else "adapter_config.json"
    try:
        config = json.loads((checkpoint / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RlinterpError(f"cannot read {checkpoint / name}: {e}") from e
    if not isinstance(config, dict):
        raise RlinterpError(f"{checkpoint / name} is not a JSON object")
    kept = {k: v for k, v in config.items() if k not in CONFIG_NOT_HASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def environment_versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour an artifact depends on."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
