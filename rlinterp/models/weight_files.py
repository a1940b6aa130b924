"""The weight files of a Hugging Face checkpoint folder, checked and read without building a
model.

A folder holds its weights either as ``model.safetensors`` or as shards listed by
``model.safetensors.index.json`` (``{"weight_map": {tensor name: shard file}}``).

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
header (``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, plus an optional
``__metadata__``), then the tensor data. ``read_header`` checks all of that from the header
and the file size alone: a truncated or corrupt file is reported by name before any compute,
reading a few kilobytes per file.

Invariants:
- ``weight_headers(folder)`` succeeds only if every file ``load_state_dict(folder)`` reads is
  a well-formed safetensors file, and it describes exactly the tensors (names, dtypes,
  shapes) that ``load_state_dict`` returns;
- a shard index is accepted only if every shard it names exists and holds every tensor the
  index maps to it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..core.artifacts import file_digest
from ..errors import RlinterpError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
WEIGHT_FILES = (SINGLE_FILE, INDEX_FILE)

MAX_HEADER_BYTES = 100_000_000
"""The safetensors format's own limit on the JSON header."""
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
"""Bytes per element of the safetensors dtypes whose data size is checked (other, packed
dtypes are only checked to lie inside the file)."""


class TensorInfo(NamedTuple):
    """One tensor as a safetensors header describes it."""

    dtype: str
    """Safetensors dtype name, e.g. ``F32`` or ``BF16``."""
    shape: tuple[int, ...]
    file: str
    """Name of the file (in the checkpoint folder) holding it."""
    begin: int
    """Byte offset of its data in the file."""
    end: int
    """Byte offset just past its data."""


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, from its header; ``RlinterpError`` naming the
    file if the header does not parse or the file is shorter (or longer) than its tensors."""
    damaged = f"{path} is not a complete safetensors file"
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise RlinterpError(f"{damaged} ({size} bytes); save or download it again")
        (n,) = struct.unpack("<Q", prefix)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise RlinterpError(
                f"{damaged} (its header length {n} exceeds the file); save or download it again"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RlinterpError(f"{damaged} (its header is not JSON: {e}); save or download it again") from e
    if not isinstance(header, dict):
        raise RlinterpError(f"{damaged} (its header is not a JSON object); save or download it again")
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        info, begin, stop = _entry(path, name, entry, data_start=8 + n)
        end = max(end, stop)
        width = DTYPE_BYTES.get(info.dtype)
        if width is not None and stop - begin != math.prod(info.shape) * width:
            raise RlinterpError(f"{damaged}: tensor {name}'s data size does not match its shape and dtype")
        tensors[name] = info
    data = size - 8 - n
    if end != data:
        raise RlinterpError(
            f"{damaged}: its header describes {end} bytes of tensor data but the file holds {data}"
            f"{' (truncated)' if data < end else ''}; save or download it again"
        )
    return tensors


def _entry(path: Path, name: str, entry: object, data_start: int) -> tuple[TensorInfo, int, int]:
    """One header entry as (info, begin, end), or an error naming the file and tensor."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]  # type: ignore[index]
        valid = isinstance(dtype, str) and all(isinstance(d, int) and d >= 0 for d in shape)
        valid = valid and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end
    except (TypeError, KeyError, ValueError):
        valid = False
    if not valid:
        raise RlinterpError(
            f"{path} is not a valid safetensors file: the header entry of {name} is malformed"
        )
    return TensorInfo(dtype, tuple(shape), path.name, data_start + begin, data_start + end), begin, end


def weight_headers(folder: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint folder (single file or sharded), validated from the
    headers; see the module docstring."""
    folder = Path(folder)
    if (folder / SINGLE_FILE).is_file():
        return read_header(folder / SINGLE_FILE)
    index = folder / INDEX_FILE
    if not index.is_file():
        raise RlinterpError(
            f"{folder} holds neither {SINGLE_FILE} nor {INDEX_FILE}; pass a checkpoint folder "
            "saved with save_pretrained(..., safe_serialization=True)"
        )
    weight_map = _weight_map(index)
    missing = sorted({shard for shard in weight_map.values() if not (folder / shard).is_file()})
    if missing:
        raise RlinterpError(f"{index} names shards that are not in {folder}: {missing}")
    tensors: dict[str, TensorInfo] = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(read_header(folder / shard))
    absent = sorted(
        name for name, shard in weight_map.items() if name not in tensors or tensors[name].file != shard
    )
    if absent:
        raise RlinterpError(
            f"{index} maps {len(absent)} weight(s) to shards that do not hold them, e.g. "
            f"{absent[0]} -> {weight_map[absent[0]]}; the checkpoint is incomplete"
        )
    return tensors


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise RlinterpError(f"{index} is not a shard index (not a JSON object): {e}") from e
    if not (
        isinstance(weight_map, dict)
        and weight_map
        and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
    ):
        raise RlinterpError(f"{index} has no weight_map of tensor names to shard files")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard:
            raise RlinterpError(f"{index} names a shard outside its folder: {shard!r}")
    return weight_map


def load_state_dict(folder: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Every tensor of a checkpoint folder, single-file or sharded, on CPU in its stored
    dtype (the files are validated first, see ``weight_headers``)."""
    folder = Path(folder)
    files = sorted({info.file for info in weight_headers(folder).values()})
    state: dict[str, Tensor] = {}
    for name in files:
        state.update(load_file(folder / name))
    return state


FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
"""Safetensors names of the floating dtypes a checkpoint can be loaded in."""


def stored_dtype(tensors: dict[str, TensorInfo]) -> torch.dtype | None:
    """The floating dtype most of a checkpoint's parameters (by element count) are stored
    in; None if it stores no floating tensors."""
    counts: dict[str, int] = {}
    for info in tensors.values():
        if info.dtype in FLOAT_DTYPES:
            counts[info.dtype] = counts.get(info.dtype, 0) + math.prod(info.shape)
    return FLOAT_DTYPES[max(counts, key=counts.__getitem__)] if counts else None


def tensors_digest(folder: str | os.PathLike[str], tensors: dict[str, TensorInfo]) -> str:
    """SHA-256 over the names, dtypes, shapes and data digests of ``tensors`` (files in
    ``folder``), in name order: equal for two checkpoints exactly when they hold the same
    tensors with the same bytes, however they are sharded or ordered in their files. Each
    file is read once, for its tensors and its own digest together (``file_digest``, cached:
    the fingerprint's ``weights_sha256`` of the same files then reads nothing)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for info in tensors.values():
        spans.setdefault(info.file, []).append((info.begin, info.end))
    found = {file: file_digest(Path(folder) / file, file_spans).spans for file, file_spans in spans.items()}
    digest = hashlib.sha256()
    for name in sorted(tensors):
        info = tensors[name]
        data = found[info.file][info.begin, info.end]
        digest.update(json.dumps([name, info.dtype, info.shape, data]).encode())
    return digest.hexdigest()
