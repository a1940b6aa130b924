"""Weight diffs on cases with known answers: a checkpoint against itself, a planted change in
one parameter, hand-built spectra and rotations, bf16 rounding, and malformed inputs."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import GPT2LMHeadModel

from rlinterp.diff.weights import diff_weights, load_state_dict, parameter_site
from rlinterp.errors import RlinterpError

from ..conftest import tiny_hf_config

PLANTED = "transformer.h.1.mlp.c_fc.weight"


def tiny_gpt2(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_hf_config("gpt2", vocab_size=50, d_model=16, n_layer=3, n_ctx=16))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base GPT-2, the same weights sharded, and a copy with noise added to ``PLANTED``."""
    root = tmp_path_factory.mktemp("weight_diff")
    base = tiny_gpt2(seed=0)
    base.save_pretrained(root / "base")
    base.save_pretrained(root / "sharded", max_shard_size="10KB")
    post = tiny_gpt2(seed=1)
    post.load_state_dict(base.state_dict())
    torch.manual_seed(2)
    with torch.no_grad():
        post.get_parameter(PLANTED).add_(0.01 * torch.randn_like(post.get_parameter(PLANTED)))
    post.save_pretrained(root / "post")
    return {"base": root / "base", "sharded": root / "sharded", "post": root / "post"}


def test_checkpoint_against_itself_is_exactly_zero(checkpoints: dict[str, Path]) -> None:
    diff = diff_weights(checkpoints["base"], checkpoints["base"])
    assert len(diff.parameters) == 40
    for row in diff.parameters:
        assert row.rel_frobenius == 0.0 and row.frac_changed == 0.0, row.name
        if len(row.shape) == 2:
            assert row.effective_rank == 0.0 and row.subspace_angle_deg == 0.0, row.name
            assert row.top_singular_values is not None and set(row.top_singular_values) == {0.0}
    assert (diff.by_component()[["rel_frobenius", "frac_changed"]] == 0).all().all()


def test_sharded_checkpoint_loads_the_same_tensors(checkpoints: dict[str, Path]) -> None:
    assert len(list(checkpoints["sharded"].glob("model-*.safetensors"))) > 1
    single, sharded = load_state_dict(checkpoints["base"]), load_state_dict(checkpoints["sharded"])
    assert single.keys() == sharded.keys()
    assert all(torch.equal(single[name], sharded[name]) for name in single)
    assert set(diff_weights(checkpoints["base"], checkpoints["sharded"]).to_frame()["rel_frobenius"]) == {0.0}


def test_planted_change_is_found_only_where_planted(checkpoints: dict[str, Path]) -> None:
    base, post = load_state_dict(checkpoints["base"]), load_state_dict(checkpoints["post"])
    frame = diff_weights(checkpoints["base"], checkpoints["post"]).to_frame().set_index("parameter")
    changed = frame[(frame["rel_frobenius"] > 0) | (frame["frac_changed"] > 0)]
    assert list(changed.index) == [PLANTED]
    noise_norm = float((post[PLANTED] - base[PLANTED]).norm())
    assert frame.loc[PLANTED, "rel_frobenius"] == pytest.approx(noise_norm / float(base[PLANTED].norm()))
    assert frame.loc[PLANTED, "frac_changed"] == 1.0
    assert frame.loc[PLANTED, "subspace_angle_deg"] > 0

    by_component = diff_weights(base, post).by_component()
    nonzero = by_component[by_component["rel_frobenius"] > 0]
    assert [(int(r.layer), r.component) for r in nonzero.itertuples()] == [(1, "mlp")]
    mlp_names = [name for name in base if name.startswith("transformer.h.1.mlp.")]
    mlp_base_norm = math.sqrt(sum(float(base[name].norm()) ** 2 for name in mlp_names))
    assert nonzero["rel_frobenius"].item() == pytest.approx(noise_norm / mlp_base_norm)
    mlp_numel = sum(base[name].numel() for name in mlp_names)
    assert nonzero["frac_changed"].item() == pytest.approx(base[PLANTED].numel() / mlp_numel)
    assert by_component["layer"].isna().sum() == 2  # (None, embedding) and (None, norm)


def test_frame_columns_and_missing_matrix_metrics(checkpoints: dict[str, Path]) -> None:
    frame = diff_weights(checkpoints["base"], checkpoints["post"], top_k=2).to_frame()
    assert list(frame.columns) == [
        "parameter",
        "layer",
        "component",
        "shape",
        "numel",
        "rel_frobenius",
        "frac_changed",
        "effective_rank",
        "top_singular_value",
        "subspace_angle_deg",
        "base_norm",
        "delta_norm",
        "n_changed",
        "adapter_rank",
    ]
    assert frame["layer"].dtype == "Int64" and frame["adapter_rank"].isna().all()  # no adapter here
    row = frame.set_index("parameter").loc["transformer.ln_f.weight"]
    assert pd.isna(row["layer"]) and row["component"] == "norm" and row["shape"] == "(16,)"
    assert pd.isna(row["effective_rank"]) and pd.isna(row["subspace_angle_deg"])


def orthonormal(rows: int, cols: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols))[0]


def test_known_spectrum_of_the_update() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    u, v = orthonormal(6, 2), orthonormal(5, 2)
    post = w + 3 * torch.outer(u[:, 0], v[:, 0]) + torch.outer(u[:, 1], v[:, 1])
    row = diff_weights({"w": w}, {"w": post})["w"]
    assert row.top_singular_values == pytest.approx([3.0, 1.0, 0.0, 0.0, 0.0], abs=1e-5)
    expected_rank = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert row.effective_rank == pytest.approx(expected_rank, rel=1e-4)


def test_known_rotation_of_the_top_singular_vector() -> None:
    base = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5]))
    theta = math.radians(30)
    rotation = torch.eye(4)
    rotation[:2, :2] = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    post = rotation @ base
    assert diff_weights({"w": base}, {"w": post}, top_k=1)["w"].subspace_angle_deg == pytest.approx(
        30, abs=1e-4
    )
    # The rotation stays inside span(e1, e2), so the top-2 subspaces coincide.
    assert diff_weights({"w": base}, {"w": post}, top_k=2)["w"].subspace_angle_deg == pytest.approx(
        0, abs=1e-3
    )


def next_bf16_up(x: torch.Tensor) -> torch.Tensor:
    """The neighbouring bf16 value of larger magnitude (one ulp away)."""
    return (x.view(torch.int16) + 1).view(torch.bfloat16)


def test_bf16_rounding_is_not_change_but_one_ulp_is() -> None:
    torch.manual_seed(0)
    base = torch.randn(8, 16).bfloat16()
    assert diff_weights({"w": base}, {"w": base.float().bfloat16()})["w"].frac_changed == 0.0
    # Re-saving float32 weights in bf16 only rounds them, which must not count as change.
    full = torch.randn(8, 16)
    assert diff_weights({"w": full}, {"w": full.bfloat16()})["w"].frac_changed == 0.0

    n = base.numel()
    for old, new in [
        (base[2, 3], next_bf16_up(base[2, 3])),
        (1.9921875, 2.0),
        (1.0, 0.99609375),
        (0.0, 1e-30),
    ]:
        planted_base, planted_post = base.clone(), base.clone()
        planted_base[2, 3], planted_post[2, 3] = old, new
        assert planted_base[2, 3] != planted_post[2, 3]
        row = diff_weights({"w": planted_base}, {"w": planted_post})["w"]
        assert row.frac_changed == 1 / n, (old, new)


@pytest.mark.parametrize(
    ("post", "expected"),
    [
        ({"a.weight": torch.zeros(3, 2), "b.bias": torch.zeros(2)}, ["a.weight", "(2, 3)", "(3, 2)"]),
        ({"a.weight": torch.zeros(2, 3)}, ["b.bias"]),
        ({"a.weight": torch.zeros(2, 3), "b.bias": torch.tensor([0.0, math.nan])}, ["b.bias", "post"]),
        ({"a.weight": torch.zeros(2, 3), "b.bias": torch.tensor([math.inf, 0.0])}, ["b.bias", "post"]),
    ],
)
def test_mismatched_checkpoints_are_refused(post: dict[str, torch.Tensor], expected: list[str]) -> None:
    base = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(2)}
    with pytest.raises(RlinterpError) as error:
        diff_weights(base, post)
    assert all(text in str(error.value) for text in expected)


def test_folder_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RlinterpError, match="empty"):
        load_state_dict(tmp_path / "empty")


@pytest.mark.parametrize(
    ("name", "site"),
    [
        ("transformer.h.3.attn.c_attn.weight", (3, "attention")),
        ("transformer.h.3.mlp.c_fc.weight", (3, "mlp")),
        ("transformer.h.3.ln_1.weight", (3, "norm")),
        ("transformer.wte.weight", (None, "embedding")),
        ("transformer.wpe.weight", (None, "embedding")),
        ("transformer.ln_f.weight", (None, "norm")),
        ("lm_head.weight", (None, "unembedding")),
        ("model.layers.3.self_attn.q_proj.weight", (3, "attention")),
        ("model.layers.3.self_attn.q_proj.bias", (3, "attention")),
        ("model.layers.3.mlp.gate_proj.weight", (3, "mlp")),
        ("model.layers.3.input_layernorm.weight", (3, "norm")),
        ("model.layers.3.post_attention_layernorm.weight", (3, "norm")),
        ("model.layers.12.mlp.down_proj.weight", (12, "mlp")),
        ("model.embed_tokens.weight", (None, "embedding")),
        ("model.norm.weight", (None, "norm")),
        ("score.weight", (None, "other")),
    ],
)
def test_parameter_site(name: str, site: tuple[int | None, str]) -> None:
    assert parameter_site(name) == site
