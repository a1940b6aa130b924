"""User mistakes get one actionable line, not a traceback, and change nothing outside the
command's own outputs; inputs that can be checked up front are refused before any compute
(the output directory is never created)."""

import json
import logging
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlinterp import RlinterpError
from rlinterp.activations.harvest import HarvestConfig, harvest
from rlinterp.activations.prompts import PromptSet
from rlinterp.cli import main
from rlinterp.dictionaries.crosscoder import CrosscoderConfig
from rlinterp.dictionaries.sae import SAETrainConfig
from rlinterp.dictionaries.train import DictionaryConfig
from rlinterp.models.series import ModelSeries
from rlinterp.organism.config import ModelConfig, PretrainConfig, RegimeConfig
from rlinterp.organism.model import build_tokenizer

from .conftest import synthetic_store, tiny_hf_config, tree_hashes

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?!.,:\n"
HOOK = "blocks.0.hook_resid_post"


def _save(model, folder: Path, **save_kwargs) -> Path:
    model.save_pretrained(folder, **save_kwargs)
    build_tokenizer(ALPHABET).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory) -> Path:
    """``base/`` and ``step-1/`` (a perturbed copy) of a tiny GPT-2, and a prompt file."""
    root = tmp_path_factory.mktemp("series")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_hf_config("gpt2")).eval()
    _save(model, root / "base")
    with torch.no_grad():
        model.get_parameter("transformer.h.1.mlp.c_fc.weight").add_(0.1)
    _save(model, root / "step-1")
    (root / "prompts.txt").write_text("the quick brown fox\njumps over the lazy dog\nhello there\n")
    return root


def _cli_error(capsys, argv: list[str], roots: list[Path], outputs: list[Path] = ()) -> str:
    """Run the CLI, expecting exit status 2 with exactly one stderr line; assert that no
    file under ``roots`` changed except under ``outputs``. Returns the message."""
    before = [tree_hashes(root) for root in roots]
    capsys.readouterr()  # drop what the test's own setup printed
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"rlinterp {argv[0]}: error: "), err

    def outside(hashes: dict[str, str], root: Path) -> dict[str, str]:
        owned = [o.relative_to(root) for o in outputs if o.is_relative_to(root)]
        return {k: v for k, v in hashes.items() if not any(Path(k).is_relative_to(o) for o in owned)}

    for root, hashes in zip(roots, before, strict=True):
        assert outside(tree_hashes(root), root) == outside(hashes, root)
    return err


def _diff(series: list[Path], prompts: Path | str, out: Path, *extra: str) -> list[str]:
    return ["diff", "--series", *map(str, series), "--prompts", str(prompts), "--out", str(out), *extra]


# -- prompts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"text": "fine"}\n\n{"text": "caf\xe9"}\n', r"bad.jsonl:3 is not UTF-8"),
        (b'{"text": "fine"}\n\n[1, 2]\n', r"bad.jsonl:3 is a JSON list, not an object"),
        (b'{"text": "fine"}\n{"text": "   "}\n', r"bad.jsonl:2 has an empty 'text'"),
        (b'{"text": "fine"}\n{"label": "x"}\n', r"bad.jsonl:2 needs a 'text' string"),
        (b'{"prompt": "q: 2? a:", "response": ""}\n', r"bad.jsonl:1 has an empty 'response'"),
        (b'{"prompt": "q: 2? a:"}\n', r"bad.jsonl:1 needs both 'prompt' and 'response' as strings"),
        (b'{"prompt": "q", "response": 3}\n', r"bad.jsonl:1 needs both 'prompt' and 'response'"),
    ],
)
def test_bad_prompt_files_are_one_line_with_file_and_line(capsys, series_dir, tmp_path, content, expected):
    (tmp_path / "bad.jsonl").write_bytes(content)
    out = tmp_path / "out"
    argv = _diff([series_dir / "base", series_dir / "step-1"], tmp_path / "bad.jsonl", out)
    err = _cli_error(capsys, argv, [series_dir, tmp_path])
    assert re.search(expected, err), err
    assert not out.exists()


def test_a_text_file_that_is_not_utf8_names_its_line(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("one\ntwo\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(RlinterpError, match=r"latin1.txt:3 is not UTF-8"):
        PromptSet.from_file(tmp_path / "latin1.txt")


def test_prompts_longer_than_the_context_are_reported(series_dir, tmp_path, caplog):
    # Character-level tokenizer: a text of n characters is n tokens, plus BOS.
    prompts = PromptSet.from_list(["abc", "abcdefghij", "abcdefghijklmnop"])
    series = ModelSeries.from_paths([series_dir / "base"])
    with caplog.at_level(logging.WARNING, logger="rlinterp.prompts"):
        store = harvest(series, prompts, tmp_path / "store", HarvestConfig(max_length=8))
    # BOS + 10 and BOS + 16 tokens cut to 8: 3 + 9 tokens lost
    assert "2 of 3 prompts are longer than 8 tokens (the context); 12 tokens were cut" in caplog.text
    manifest = json.loads((store.root / "manifest.json").read_text())
    assert manifest["truncated"] == {"prompts": 2, "tokens": 12}
    assert store.tokens().tokens.shape == (3, 8)


def test_prompt_sets_check_their_own_fields():
    with pytest.raises(RlinterpError, match="prompt 1 is empty"):
        PromptSet.from_list(["fine", ""])
    with pytest.raises(RlinterpError, match="response starts at character 4, outside its 4 characters"):
        PromptSet(("abcd",), response_starts=(4,))


# -- checkpoints: checked before any compute ------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def _garble_header(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"\xff\xfe{["
    weights.write_bytes(bytes(data))


def _huge_header_length(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes((10**12).to_bytes(8, "little") + weights.read_bytes()[8:])


DAMAGED = r"step-1/model.safetensors is not a complete safetensors file"


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_truncate, DAMAGED + r": .* \(truncated\); save or download it again"),
        (_garble_header, DAMAGED + r" \(its header is not JSON"),
        (_huge_header_length, DAMAGED + r" \(its header length 1000000000000 exceeds the file\)"),
    ],
)
def test_a_damaged_weight_file_is_refused_before_the_base_is_harvested(
    capsys, series_dir, tmp_path, damage, expected
):
    post = _copy(series_dir / "step-1", tmp_path / "step-1")
    damage(post)
    out = tmp_path / "out"
    argv = _diff([series_dir / "base", post], series_dir / "prompts.txt", out)
    err = _cli_error(capsys, argv, [series_dir, tmp_path])
    assert re.search(expected, err), err
    assert not out.exists()


@pytest.fixture(scope="module")
def sharded(series_dir) -> Path:
    model = AutoModelForCausalLM.from_pretrained(series_dir / "step-1")
    folder = _save(model, series_dir.parent / "sharded-src" / "step-1", max_shard_size="20KB")
    assert len(list(folder.glob("model-*.safetensors"))) > 2
    return folder


def test_a_shard_index_naming_a_missing_shard_is_refused(capsys, series_dir, sharded, tmp_path):
    post = _copy(sharded, tmp_path / "step-1")
    lost = sorted(post.glob("model-*.safetensors"))[1]
    lost.unlink()
    out = tmp_path / "out"
    err = _cli_error(capsys, _diff([series_dir / "base", post], series_dir / "prompts.txt", out), [tmp_path])
    assert f"names shards that are not in {post}: ['{lost.name}']" in err
    assert not out.exists()


def test_a_shard_index_mapping_a_weight_to_the_wrong_shard_is_refused(series_dir, sharded, tmp_path):
    post = _copy(sharded, tmp_path / "step-1")
    index_path = post / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    moved = next(name for name, shard in index["weight_map"].items() if shard == shards[0])
    index["weight_map"][moved] = shards[1]
    index_path.write_text(json.dumps(index))
    with pytest.raises(
        RlinterpError, match=rf"maps 1 weight\(s\) to shards that do not hold them, e.g. {moved}"
    ):
        ModelSeries.from_paths([series_dir / "base", post]).validate()


def _with_config(src: Path, dst: Path, **changes: object) -> Path:
    folder = _copy(src, dst)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_any_config_field_that_changes_the_forward_pass_is_compared(capsys, series_dir, tmp_path):
    # n_positions also changes the position-embedding shape: the config is named first.
    post = _with_config(series_dir / "step-1", tmp_path / "step-1", n_positions=128)
    out = tmp_path / "out"
    err = _cli_error(capsys, _diff([series_dir / "base", post], series_dir / "prompts.txt", out), [tmp_path])
    assert "differ in config field n_positions: 64 vs 128" in err
    assert not out.exists()
    # a field that changes no shape at all
    eps = _with_config(series_dir / "step-1", tmp_path / "eps", layer_norm_epsilon=1e-3)
    with pytest.raises(RlinterpError, match=r"differ in config field layer_norm_epsilon: 1e-05 vs 0.001"):
        ModelSeries.from_paths([series_dir / "base", eps]).validate()


def test_fields_that_cannot_change_the_forward_pass_may_differ(series_dir, tmp_path):
    post = _with_config(
        series_dir / "step-1",
        tmp_path / "step-1",
        use_cache=False,
        transformers_version="4.0.0",
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        initializer_range=0.5,
        pad_token_id=3,
        max_length=512,
        temperature=0.7,
    )
    ModelSeries.from_paths([series_dir / "base", post]).validate()


def test_a_different_weight_shape_is_named(series_dir, tmp_path):
    # Same config, but the saved MLP is narrower: the headers show it before any loading.
    config = AutoConfig.from_pretrained(series_dir / "base")
    narrow = AutoModelForCausalLM.from_config(config)
    state = narrow.state_dict()
    state["transformer.h.0.mlp.c_fc.bias"] = state["transformer.h.0.mlp.c_fc.bias"][:-1].clone()
    from safetensors.torch import save_file

    post = _copy(series_dir / "step-1", tmp_path / "step-1")
    tensors = {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}
    save_file(tensors, str(post / "model.safetensors"))
    with pytest.raises(RlinterpError, match=r"differ in the shape of weight transformer.h.0.mlp.c_fc.bias"):
        ModelSeries.from_paths([series_dir / "base", post]).validate()


def test_a_non_finite_weight_is_named_when_the_checkpoint_is_loaded(capsys, series_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(series_dir / "step-1")
    with torch.no_grad():
        model.get_parameter("transformer.h.0.ln_1.weight")[3] = math.nan
    post = _save(model, tmp_path / "step-1")
    out = tmp_path / "out"
    argv = _diff([series_dir / "base", post], series_dir / "prompts.txt", out)
    err = _cli_error(capsys, argv, [series_dir, tmp_path], outputs=[out])
    assert f"weight transformer.h.0.ln_1.weight of step-1 ({post}) holds NaN or Inf" in err


# -- command-line values ---------------------------------------------------------------------


def test_bad_devices_are_refused(capsys, series_dir, tmp_path):
    out = tmp_path / "out"
    diff = _diff([series_dir / "base", series_dir / "step-1"], series_dir / "prompts.txt", out)
    err = _cli_error(capsys, [*diff, "--device", "tpu9"], [series_dir, tmp_path])
    assert "device 'tpu9' is not a torch device; use cpu, cuda, cuda:<n> or mps" in err
    # A device this machine lacks: on a CPU-only machine CUDA itself, on a GPU one device 99.
    err = _cli_error(capsys, [*diff, "--device", "cuda:99"], [series_dir, tmp_path])
    assert "device 'cuda:99'" in err and ("is not available" in err or "does not exist" in err)
    assert not out.exists()


def test_an_output_path_that_is_a_file_is_refused(capsys, series_dir, tmp_path):
    (tmp_path / "taken").write_text("my notes")
    argv = _diff([series_dir / "base", series_dir / "step-1"], series_dir / "prompts.txt", tmp_path / "taken")
    err = _cli_error(capsys, argv, [series_dir, tmp_path])
    assert f"{tmp_path / 'taken'} is a file; give a directory path" in err


@pytest.fixture
def store(tmp_path):
    g = torch.Generator().manual_seed(0)
    acts = {"base": torch.randn(128, 8, generator=g), "rl": torch.randn(128, 8, generator=g)}
    return synthetic_store(tmp_path / "store", acts, HOOK)


def _train(store, out: Path, *extra: str) -> list[str]:
    return ["dictionaries", "train", "--store", str(store.root), "--hook", HOOK, "--out", str(out), *extra]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--method", "sae", "--d-sae", "0"], "d_sae must be a positive integer, got 0"),
        (["--method", "sae", "--d-sae", "16", "--k", "32"], r"k (32 active latents) cannot exceed d_sae (16"),
        (["--method", "sae", "--lr", "nan"], "lr must be a positive, finite number, got nan"),
        (["--method", "sae", "--lr", "inf"], "lr must be a positive, finite number, got inf"),
        (["--method", "sae", "--n-tokens", "-5"], "n_tokens must be a positive integer, got -5"),
        (["--method", "sae", "--device", "tpu9"], "device 'tpu9' is not a torch device"),
        (
            ["--method", "crosscoder", "--models", "base"],
            "a crosscoder compares at least two different models",
        ),
        (
            ["--method", "crosscoder", "--models", "rl", "rl"],
            "at least two different models, got ['rl', 'rl']",
        ),
        (["--method", "crosscoder", "--models", "base", "sft"], "no model 'sft' in"),
        (
            ["--method", "diff-sae", "--model", "base"],
            "a diff-SAE needs two different models; both are 'base'",
        ),
    ],
)
def test_bad_dictionary_settings_are_refused_before_training(capsys, store, tmp_path, extra, expected):
    out = tmp_path / "dict"
    err = _cli_error(capsys, _train(store, out, *extra), [tmp_path])
    assert expected in err
    assert not out.exists()


def test_dictionary_output_path_that_is_a_file(capsys, store, tmp_path):
    (tmp_path / "taken").write_text("")
    err = _cli_error(capsys, _train(store, tmp_path / "taken", "--method", "sae"), [tmp_path])
    assert "is a file; give a directory path" in err


# -- damaged artifacts ------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\udcff"])
def test_a_damaged_store_manifest_is_one_line(capsys, store, tmp_path, content):
    (store.root / "manifest.json").write_text(content, errors="surrogateescape")
    err = _cli_error(capsys, _train(store, tmp_path / "dict", "--method", "sae"), [tmp_path])
    assert f"{store.root / 'manifest.json'}" in err and "run the harvest (or diff) again" in err


def test_a_damaged_dictionary_manifest_is_one_line(capsys, tmp_path):
    (tmp_path / "dict").mkdir()
    (tmp_path / "dict" / "rlinterp.json").write_text('{"method": ')
    err = _cli_error(capsys, ["dictionaries", "eval", "--dictionary", str(tmp_path / "dict")], [tmp_path])
    assert "rlinterp.json is not valid JSON" in err


def test_a_damaged_organism_manifest_is_one_line(capsys, tmp_path):
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "manifest.json").write_text("{")
    err = _cli_error(capsys, ["organism", "--preset", "tiny", "--out", str(tmp_path / "org")], [tmp_path])
    assert f"{tmp_path / 'org' / 'manifest.json'} is not valid JSON" in err and "choose another --out" in err
    argv = ["diff", "--series", str(tmp_path / "org"), "--regime", "weak", "--prompts", "organism"]
    err = _cli_error(capsys, [*argv, "--out", str(tmp_path / "d")], [tmp_path])
    assert "is not valid JSON" in err and not (tmp_path / "d").exists()


def test_a_damaged_behaviour_table_is_one_line(tmp_path, micro_config):
    from rlinterp import build_organism

    organism = build_organism(tmp_path / "org", config=micro_config)
    (organism.root / "behaviour.parquet").write_bytes(b"PAR1 not really")
    reused = build_organism(tmp_path / "org", config=micro_config)  # same inputs: reused as it is
    with pytest.raises(RlinterpError, match="behaviour.parquet is missing or not a readable Parquet file"):
        reused.behaviour()


# -- config dataclasses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: ModelConfig(n_layer=0), "ModelConfig.n_layer must be positive"),
        (lambda: ModelConfig(d_model=30, n_head=4), r"n_head \(4\) must divide d_model \(30\)"),
        (lambda: PretrainConfig(lr=math.nan), "PretrainConfig.lr must be positive and finite, got nan"),
        (lambda: PretrainConfig(weight_decay=-1.0), "weight_decay must be non-negative"),
        (
            lambda: RegimeConfig("w", lr=1e-3, kl_coef=math.nan, shortcut_bonus=0.0, checkpoint_steps=(0, 1)),
            "kl_coef must be non-negative and finite, got nan",
        ),
        (
            lambda: RegimeConfig("w", lr=1e-3, kl_coef=0.0, shortcut_bonus=0.0, checkpoint_steps=(1, 2)),
            "strictly ascending from 0",
        ),
        (lambda: HarvestConfig(batch_size=0), "batch_size must be positive"),
        (lambda: HarvestConfig(max_length=1), "max_length must leave room"),
        (lambda: HarvestConfig(hooks=()), "hooks is empty"),
        (lambda: DictionaryConfig(lr=math.inf), "lr must be a positive, finite number"),
        (lambda: DictionaryConfig(d_sae=8, k=9), r"k \(9 active latents\) cannot exceed d_sae \(8"),
        (lambda: DictionaryConfig(device="tpu9"), "is not a torch device"),
        (lambda: SAETrainConfig(d_sae=8, k=9), r"k \(9 active latents\) cannot exceed d_sae"),
        (lambda: SAETrainConfig(lr=math.nan), "lr must be a positive, finite number"),
        (lambda: CrosscoderConfig(d_in=4, d_sae=8, n_models=1), "at least 2 models"),
        (lambda: CrosscoderConfig(d_in=4, d_sae=8, k=2, lr=math.nan), "lr must be a positive, finite number"),
    ],
)
def test_config_dataclasses_raise_rlinterp_errors(make, expected):
    with pytest.raises(RlinterpError, match=expected) as error:
        make()
    assert isinstance(error.value, ValueError)  # the dataclass convention still holds
