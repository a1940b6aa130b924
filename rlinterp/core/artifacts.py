"""Writing artifacts safely and describing what produced them.

Every file a stage writes goes through ``atomic_write``: the bytes land in a temporary
file beside the target and are renamed over it, so an interrupted run never leaves a
half-written file under a final name. A stage's ``manifest.json`` is written last; its
presence is what marks a run directory as finished (see ``rundir``).

Content hashes of inputs (``weights_sha256``, ``config_sha256``, ``tokenizer_sha256``) go
into the fingerprints that decide whether a run may be resumed or reused. File digests are
cached per (path, inode, size, mtime) within a process, so checking a series of large
checkpoints twice reads them once.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RlinterpError

if TYPE_CHECKING:  # imported where used: reading a manifest needs none of them
    import pandas as pd
    import torch
    from torch import Tensor

TRACKED_PACKAGES = ("rlinterp", "torch", "transformers", "transformer-lens", "sae-lens")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary path in ``path``'s folder, then rename it to
    ``path``. On any error the temporary file is removed and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts are shared files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def read_jsonl(path: str | os.PathLike[str], what: str) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a JSON-lines file, each with its line number (blank lines skipped). A
    missing or empty file, or a line that is not a JSON object, is one line naming the file
    (as ``what``, e.g. "prompts file") and the line."""
    path = Path(path)
    if not path.is_file():
        raise RlinterpError(f"{what} {path} does not exist")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RlinterpError(f"{path}:{n} is not valid JSON: {e.msg}") from e
        if not isinstance(row, dict):
            raise RlinterpError(f"{path}:{n} is a JSON {type(row).__name__}, not an object")
        rows.append((n, row))
    if not rows:
        raise RlinterpError(f"{what} {path} is empty")
    return rows


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

_digests: dict[tuple[str, int, int, int, int], str] = {}


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
    if not isinstance(obj, dict):
        raise RlinterpError(f"{path} holds a JSON {type(obj).__name__}, not an object; {remedy}")
    return obj


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
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _digests:
        return _digests[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if time.time_ns() - stat.st_mtime_ns > RECENT_NS:
        _digests[key] = digest.hexdigest()
    return digest.hexdigest()


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
