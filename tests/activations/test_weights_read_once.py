"""A harvest hashes a checkpoint's weights for two reasons, the duplicate-checkpoint check
(tensor bytes, however sharded) and the fingerprint (file bytes): both digests come from
one read of each weight file, and a second harvest of the same files reads none."""

import hashlib
import os
import time
from collections import Counter

import pytest
from transformers import AutoModelForCausalLM

from rlinterp import HarvestConfig, ModelSeries, PromptSet, harvest
from rlinterp.core import artifacts
from rlinterp.errors import RlinterpError
from rlinterp.organism.model import build_tokenizer

from ..conftest import ALPHABET, random_checkpoints


@pytest.mark.parametrize("chunk", [7, 64, 1 << 22])
def test_span_digests_are_those_of_the_bytes(tmp_path, monkeypatch, chunk):
    """Spans straddling read chunks, touching, nested, empty and ending at the file's end
    hash to what hashlib gives for the same slices."""
    monkeypatch.setattr(artifacts, "CHUNK_BYTES", chunk)
    data = bytes(range(256)) * 3
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    spans = [(0, 5), (5, 100), (6, 7), (50, 60), (200, 200), (300, 768)]
    found = artifacts.file_digest(path, spans)
    assert found.whole == hashlib.sha256(data).hexdigest()
    assert found.spans == {(b, e): hashlib.sha256(data[b:e]).hexdigest() for b, e in spans}
    with pytest.raises(RlinterpError, match="is shorter than its header says"):
        artifacts.file_digest(path, [(700, 769)])


def _weights_written_an_hour_ago(*folders):
    """Checkpoints as a run finds them: written well before (files modified within
    ``RECENT_NS`` are hashed every time, see ``core.artifacts``)."""
    files = [f for folder in folders for f in folder.glob("*.safetensors")]
    past = time.time() - 3600
    for f in files:
        os.utime(f, (past, past))
    return {f.resolve() for f in files}


def test_a_harvest_reads_each_weight_file_once_for_both_hashes(tmp_path, monkeypatch):
    folders = random_checkpoints(tmp_path / "ckpt")
    sharded = tmp_path / "ckpt" / "step-2"  # step-1's weights in shards: each shard counted
    AutoModelForCausalLM.from_pretrained(folders["step-1"]).save_pretrained(sharded, max_shard_size="20KB")
    build_tokenizer(ALPHABET).save_pretrained(sharded)
    weight_files = _weights_written_an_hour_ago(folders["base"], folders["step-1"], sharded)
    assert len(weight_files) > 3

    reads: Counter = Counter()
    read = artifacts._read_digests

    def counted(path, spans):
        if path.resolve() in weight_files:
            reads[path.resolve()] += 1
        return read(path, spans)

    monkeypatch.setattr(artifacts, "_read_digests", counted)
    series = [folders["base"], folders["step-1"], sharded]
    prompts = PromptSet.from_list(["a persona answers", "the policy speaks"])
    cfg = HarvestConfig(hooks=("blocks.1.hook_resid_post",), batch_size=2)
    harvest(ModelSeries.from_paths(series), prompts, tmp_path / "store", cfg)
    assert reads == dict.fromkeys(weight_files, 1)

    # new series objects over the same files: the duplicate check (which still sees
    # through the shards) and the finished store's fingerprint read nothing more
    before = reads.copy()
    with pytest.raises(RlinterpError, match=r"step-1 .* and step-2 .* hold byte-identical weights"):
        ModelSeries.from_paths(series, on_identical="error").validate()
    store = harvest(ModelSeries.from_paths(series), prompts, tmp_path / "store", cfg)
    assert reads == before and store.labels == ["base", "step-1", "step-2"]
