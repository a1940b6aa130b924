"""Lineage classes on hand-made trajectory, stage-wise and matching tables whose answers are
known, on a base SAE applied to the planted one-neuron GPT-2 variants, the controls
(self-comparison, chance births) and malformed input."""

import numpy as np
import pandas as pd
import pytest
import torch

from rlinterp import HarvestConfig, ModelSeries, harvest
from rlinterp.dictionaries.crosscoder import LATENT_KINDS
from rlinterp.dictionaries.matching import match_dictionaries
from rlinterp.dictionaries.sae import TrainedSAE
from rlinterp.dictionaries.train import DictionaryConfig, train_dictionary
from rlinterp.errors import RlinterpError
from rlinterp.tracking.lineage import (
    CLASSES,
    CROSSCODER_CLASSES,
    LINEAGE_COLUMNS,
    LineageThresholds,
    above_noise_floor,
    class_counts,
    lineage_table,
    match_classes,
)

from ..planted import KINDS, build_planted, planted_prompts

N_LATENTS = 8
BASE_FREQ, BASE_ACT = 0.1, 2.0


def trajectories(changes: dict[int, dict[str, float]] | None = None, steps=(0, 1), sources=("fixed",)):
    """Every latent fires on 10% of tokens at 2.0 at every step, except latent 7 (never fires)
    and the ``changes``: ``{latent: {"frequency": f, "mean_activation": m, "base_frequency": f0}}``
    applied at every step > 0 (``base_frequency`` at step 0)."""
    changes = changes or {}
    rows = []
    for source in sources:
        for step in steps:
            for latent in range(N_LATENTS):
                freq, act = (0.0, 0.0) if latent == 7 else (BASE_FREQ, BASE_ACT)
                change = changes.get(latent, {})
                if step == 0:
                    freq = change.get("base_frequency", freq)
                else:
                    freq = change.get("frequency", freq)
                    act = change.get("mean_activation", act)
                rows.append(
                    {
                        "source": source,
                        "label": "base" if step == 0 else f"step-{step}",
                        "step": step,
                        "latent": latent,
                        "frequency": freq,
                        "mean_activation": act,
                        "mass": freq * act,
                        "logit_norm": 1.0,
                        "logit_contribution": freq * act,
                    }
                )
    return pd.DataFrame(rows)


def classes_at(table: pd.DataFrame, step: int = 1, evidence: str = "tracked") -> dict[int, str]:
    rows = table[(table["step"] == step) & (table["evidence"] == evidence)]
    return dict(zip(rows["latent"].tolist(), rows["class"].tolist(), strict=True))


def test_identical_steps_are_all_stable_and_the_dead_latent_inactive() -> None:
    table = lineage_table(trajectories(steps=(0, 1, 2), sources=("fixed", "on-policy")))
    assert list(table.columns) == list(LINEAGE_COLUMNS)
    assert len(table) == 2 * 3 * N_LATENTS
    assert set(table.loc[table["latent"] != 7, "class"]) == {"stable"}
    assert set(table.loc[table["latent"] == 7, "class"]) == {"inactive"}
    counts = class_counts(table)
    assert counts.columns.tolist() == ["evidence", "source", "step", *CLASSES]
    assert (counts["stable"] == 7).all() and (counts["inactive"] == 1).all()
    assert (counts[[c for c in CLASSES if c not in ("stable", "inactive")]] == 0).all().all()


def test_activity_classes_and_their_evidence() -> None:
    table = lineage_table(
        trajectories(
            {
                0: {"mean_activation": 3 * BASE_ACT},  # amplified x3
                1: {"mean_activation": 0.3 * BASE_ACT},  # suppressed, still firing
                2: {"frequency": 0.0},  # died
                3: {"base_frequency": 0.0},  # born
                4: {"frequency": 0.002},  # fires 50x less: died although not silent
                5: {"frequency": 0.3 * BASE_FREQ},  # fires 0.3x as often: suppressed
                6: {"frequency": 1.2 * BASE_FREQ},  # within the stable band
            }
        )
    )
    assert classes_at(table) == {
        0: "amplified",
        1: "suppressed",
        2: "died",
        3: "born",
        4: "died",
        5: "suppressed",
        6: "stable",
        7: "inactive",
    }
    rows = table[table["step"] == 1].set_index("latent")
    assert rows.loc[0, "activation_ratio"] == pytest.approx(3.0)
    assert rows.loc[0, "activity_ratio"] == pytest.approx(3.0)
    assert rows.loc[0, "frequency_ratio"] == pytest.approx(1.0)
    assert rows.loc[1, "activation_ratio"] == pytest.approx(0.3)
    assert rows.loc[2, "frequency"] == 0.0 and rows.loc[2, "base_frequency"] == BASE_FREQ
    assert rows.loc[5, "activity_ratio"] == pytest.approx(0.3)
    assert rows.loc[6, "activity_ratio"] == pytest.approx(1.2)
    assert rows[["dec_cos_base", "partner_cosine"]].isna().all().all()  # no stage-wise, no matching
    assert set(classes_at(table, step=0).values()) == {"stable", "inactive"}
    # Activity alone: 25x weaker on the same tokens is a death (TopK keeps such latents
    # firing weakly); 50x more frequent than a rare base latent is a birth.
    changes = {0: {"mean_activation": 0.04 * BASE_ACT}, 1: {"base_frequency": 0.002}}
    faded = lineage_table(trajectories(changes))
    assert classes_at(faded)[0] == "died" and classes_at(faded)[1] == "born"
    assert faded.set_index(["step", "latent"]).loc[(1, 1), "frequency_ratio"] == pytest.approx(50.0)


def stagewise(moved: dict[int, float], activity: dict[int, tuple[float, float]] | None = None):
    """Decoder cosine to the base of 0.99 for every latent at step 1, except ``moved``; with
    ``activity``, the fine-tuned dictionary's (frequency, mean activation) per latent."""
    rows = []
    for latent in range(N_LATENTS):
        row = {"step": 1, "latent": latent, "dec_cos_base": moved.get(latent, 0.99)}
        row |= {"dec_cos_prev": row["dec_cos_base"], "enc_cos_base": 0.95, "enc_cos_prev": 0.95}
        if activity is not None:
            freq, act = activity.get(latent, (0.0, 0.0) if latent == 7 else (BASE_FREQ, BASE_ACT))
            row |= {"frequency": freq, "mean_activation": act}
        rows.append(row)
    return pd.DataFrame(rows)


def test_moved_decoders_are_repurposed_rotated_or_born() -> None:
    """Without the fine-tuned dictionary's activity, the fixed dictionary's decides: latent 0
    moved with its activity unchanged (repurposed), latent 1 moved and was amplified
    (rotated), latent 7 was inactive in the base, moved and fires at the step (born);
    latent 2 stayed put. A moved latent that still never fires is no birth."""
    fires = {"frequency": BASE_FREQ, "mean_activation": BASE_ACT}
    traj = trajectories(
        {1: {"mean_activation": 3 * BASE_ACT}, 2: {"mean_activation": 3 * BASE_ACT}, 7: fires}
    )
    assert classes_at(lineage_table(trajectories(), stagewise({7: 0.05})))[7] == "inactive"
    table = lineage_table(traj, stagewise({0: 0.1, 1: 0.2, 7: 0.05}))
    assert classes_at(table) == {
        0: "repurposed",
        1: "rotated",
        2: "amplified",
        3: "stable",
        4: "stable",
        5: "stable",
        6: "stable",
        7: "born",
    }
    rows = table[table["step"] == 1].set_index("latent")
    assert rows.loc[0, "dec_cos_base"] == pytest.approx(0.1) and rows.loc[3, "dec_cos_base"] == pytest.approx(
        0.99
    )
    assert rows["stage_activity_ratio"].isna().all()


def test_the_fine_tuned_dictionarys_activity_decides_when_given() -> None:
    """The rewired-neuron pattern: the fixed base dictionary stops firing on latent 0 (its
    direction is gone), but fine-tuned, latent 0 fires as before along a new decoder:
    repurposed, not died. Latent 7 moved without ever firing (an AuxK artefact): still
    inactive. Latent 1 moved and fires 3x as strongly: rotated."""
    traj = trajectories({0: {"frequency": 0.0}})
    activity = {1: (BASE_FREQ, 3 * BASE_ACT), 7: (0.0, 0.0)}
    table = lineage_table(traj, stagewise({0: 0.1, 1: 0.2, 7: 0.05}, activity))
    classes = classes_at(table)
    assert (classes[0], classes[1], classes[7]) == ("repurposed", "rotated", "inactive")
    rows = table[table["step"] == 1].set_index("latent")
    assert rows.loc[0, "frequency"] == 0.0 and rows.loc[0, "stage_activity_ratio"] == pytest.approx(1.0)
    assert rows.loc[1, "stage_activity_ratio"] == pytest.approx(3.0)
    without_stagewise = classes_at(lineage_table(traj))
    assert without_stagewise[0] == "died"


def unit(*vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.stack(vectors), dim=1)


def test_matched_rows_from_an_independent_dictionary() -> None:
    """Base dictionary (the tracked one): e0..e7. The step's own dictionary: e0, e1 as two
    halves (latent 1 split), e3 and e4 as one (merged), nothing near e2 (died), a new
    direction (born), and e5, e6, e7 unchanged."""
    eye = torch.eye(16)
    half_a, half_b = eye[1] + eye[8], eye[1] - eye[8]
    base = unit(*eye[:8])
    step = unit(eye[0], half_a, half_b, eye[3] + eye[4], eye[9], eye[5], eye[6], eye[7])
    match = match_dictionaries(base, step)
    table = lineage_table(trajectories(), matches={1: match})
    matched = table[table["evidence"] == "matched"]
    born = matched[matched["latent"].isna()]
    assert born["partner"].tolist() == [4] and born["class"].tolist() == ["born"]
    assert born["nearest_cosine"].iloc[0] == pytest.approx(0.0)
    assert classes_at(table, evidence="matched") == {
        0: "stable",
        1: "split",
        2: "died",
        3: "merged",
        4: "merged",
        5: "stable",
        6: "stable",
        7: "stable",
    } | {pd.NA: "born"}
    rows = matched.dropna(subset=["latent"]).set_index("latent")
    assert rows.loc[1, "linked"] == "1 2" and rows.loc[3, "linked"] == "3"
    assert rows.loc[0, "partner"] == 0 and rows.loc[0, "partner_cosine"] == pytest.approx(1.0)
    assert rows.loc[2, "nearest_cosine"] == pytest.approx(0.0) and pd.isna(rows.loc[2, "partner"])
    assert rows.loc[0, "activity_ratio"] == pytest.approx(1.0)  # the tracked evidence rides along
    assert (matched["label"] == "step-1").all()
    assert match_classes(match)["class"].value_counts().to_dict() == {
        "stable": 4,
        "merged": 2,
        "split": 1,
        "died": 1,
        "born": 1,
    }


def test_inactive_latents_of_a_match_are_inactive_not_dead() -> None:
    eye = torch.eye(N_LATENTS)
    alive = torch.arange(N_LATENTS) != 7
    match = match_dictionaries(eye, -eye, alive_a=alive, alive_b=alive)  # nothing pairs
    classes = match_classes(match)
    assert classes.loc[classes["latent"] == 7, "class"].tolist() == ["inactive"]
    assert (classes["class"] == "died").sum() == N_LATENTS - 1
    assert (classes["class"] == "born").sum() == N_LATENTS - 1


def test_the_base_matched_with_itself_is_all_stable() -> None:
    base = torch.nn.functional.normalize(
        torch.randn(N_LATENTS, 16, generator=torch.Generator().manual_seed(0))
    )
    table = lineage_table(trajectories(), matches={1: match_dictionaries(base, base)})
    assert set(classes_at(table, evidence="matched").values()) == {"stable"}


def test_noise_floor() -> None:
    """Poisson tail: with no chance births in the control the assumed rate is 0.5, so 3 births
    (p = 0.014) are above the floor and 2 (p = 0.090) are not; against controls of 4 and 6
    (rate 5), 10 are above (p = 0.032) and 9 are not (p = 0.068)."""
    assert above_noise_floor(3, 0).above and not above_noise_floor(2, 0).above
    assert above_noise_floor(3, 0).p_value == pytest.approx(0.0144, abs=1e-4)
    verdict = above_noise_floor(10, [4, 6])
    assert verdict.chance_rate == 5.0 and verdict.above and verdict.p_value == pytest.approx(0.0318, abs=1e-4)
    assert not above_noise_floor(9, [4, 6]).above
    assert above_noise_floor(0, 0).p_value == 1.0
    with pytest.raises(RlinterpError, match="non-negative"):
        above_noise_floor(3, [])


def test_thresholds_are_validated_and_change_the_classes() -> None:
    with pytest.raises(ValueError, match="died_below < suppressed_below"):
        LineageThresholds(amplified_above=0.9)
    with pytest.raises(ValueError, match="moved_below"):
        LineageThresholds(moved_below=2.0)
    traj = trajectories({0: {"mean_activation": 1.8 * BASE_ACT}})
    assert classes_at(lineage_table(traj))[0] == "amplified"
    assert classes_at(lineage_table(traj, thresholds=LineageThresholds(amplified_above=2.0)))[0] == "stable"


def test_every_crosscoder_kind_reads_as_a_lineage_class() -> None:
    assert sorted(CROSSCODER_CLASSES) == sorted(LATENT_KINDS)
    assert set(CROSSCODER_CLASSES.values()) <= set(CLASSES)


def test_bad_input_is_a_one_line_error() -> None:
    traj = trajectories()
    with pytest.raises(RlinterpError, match=r"lack column\(s\) \['mass'\]"):
        lineage_table(traj.drop(columns="mass"))
    with pytest.raises(RlinterpError, match="no step 0"):
        lineage_table(traj[traj["step"] == 1])
    with pytest.raises(RlinterpError, match="more than one row"):
        lineage_table(pd.concat([traj, traj.iloc[:1]]))
    with pytest.raises(RlinterpError, match="latent 8 .* not at step 0"):
        extra = traj.iloc[-1:].assign(latent=8)
        lineage_table(pd.concat([traj, extra]))
    with pytest.raises(RlinterpError, match="stage-wise table lacks"):
        lineage_table(traj, stagewise({}).drop(columns="enc_cos_prev"))
    decoders = torch.nn.functional.normalize(torch.randn(N_LATENTS + 2, 4, generator=torch.Generator()))
    with pytest.raises(RlinterpError, match="step 5, which the trajectories do not have"):
        lineage_table(traj, matches={5: match_dictionaries(decoders, decoders)})
    with pytest.raises(RlinterpError, match=r"base latents \[8, 9\]"):
        lineage_table(traj, matches={1: match_dictionaries(decoders, decoders)})
    assert np.isfinite(traj["frequency"]).all()  # inputs untouched


def sae_trajectories(sae, store, hook: str) -> pd.DataFrame:
    """The trajectory columns ``lineage`` reads, computed directly: the base SAE applied to
    every model of the store (a stand-in for the tracking module's table)."""
    rows = []
    for step, label in enumerate(store.labels):
        with torch.no_grad():
            acts = sae.encode(store.read(label, hook))
        fired = (acts > 0).sum(0)
        for latent in range(acts.shape[1]):
            n = int(fired[latent])
            mean = float(acts[:, latent].sum()) / max(n, 1)
            rows.append(
                {
                    "source": "fixed prompts",
                    "label": label,
                    "step": step,
                    "latent": latent,
                    "frequency": n / len(acts),
                    "mean_activation": mean,
                    "mass": n / len(acts) * mean,
                    "logit_norm": np.nan,
                    "logit_contribution": np.nan,
                }
            )
    return pd.DataFrame(rows)


def test_planted_neurons_through_a_base_sae(tmp_path) -> None:
    """A TopK SAE trained on the planted base GPT-2, applied to its one-neuron variants: the
    latent of the planted direction is amplified at about the planted factor 3 (activation
    ratio), suppressed at about 0.3 (not died), died where the neuron was rewired, and every
    latent is stable or inactive on the identical copy."""
    planted = build_planted(tmp_path / "models")
    series = ModelSeries.from_paths([planted.base, *(planted.path(kind) for kind in KINDS)])
    store = harvest(
        series, planted_prompts(256, seed=1), tmp_path / "store", HarvestConfig(hooks=(planted.hook,))
    )
    cfg = DictionaryConfig(d_sae=32, k=4, n_tokens=200_000, batch_size=256, lr=1e-2)
    sae = TrainedSAE.load(train_dictionary(store, "sae", planted.hook, tmp_path / "sae", cfg)).sae
    cosine = torch.nn.functional.cosine_similarity(sae.W_dec.detach(), planted.direction[None], dim=-1)
    assert float(cosine.max()) > 0.95  # measured 0.995
    table = lineage_table(sae_trajectories(sae, store, planted.hook)).set_index(["step", "latent"])
    row = {kind: table.loc[(step, int(cosine.argmax()))] for step, kind in enumerate(KINDS, start=1)}
    assert row["amplified"]["class"] == "amplified"
    assert row["amplified"]["activation_ratio"] == pytest.approx(planted.amplify, abs=0.5)  # measured 2.84
    assert row["suppressed"]["class"] == "suppressed"
    assert 0.2 < row["suppressed"]["activity_ratio"] < 0.5  # measured 0.37
    assert row["rewired"]["class"] == "died"  # measured activity ratio 0.04, still firing on 30%
    identical = table.loc[len(KINDS)]
    assert set(identical["class"]) <= {"stable", "inactive"}
    assert (identical.loc[identical["class"] == "stable", "activity_ratio"] == 1.0).all()


def test_a_birth_needs_support_above_the_control_floor() -> None:
    """A base latent that fired on 1 token of 3,244 and fires on 12 at the step (an
    amplified direction waking up): born without a floor, amplified under a seed-control
    floor of 1% of tokens; one firing on 5% of the tokens is born under it. Per-source
    floors apply to their source only."""
    base, step = 1 / 3244, 12 / 3244
    changes = {0: {"base_frequency": base, "frequency": step}, 1: {"base_frequency": 0.0, "frequency": 0.05}}
    traj = trajectories(changes, sources=("texts", "on-policy"))
    assert classes_at(lineage_table(traj[traj["source"] == "texts"]))[0] == "born"
    floored = lineage_table(traj, support=0.01)
    for source in ("texts", "on-policy"):
        rows = floored[(floored["source"] == source) & (floored["step"] == 1)].set_index("latent")
        assert rows.loc[0, "class"] == "amplified" and rows.loc[1, "class"] == "born"
        assert rows.loc[0, "support"] == 0.01
    per_source = lineage_table(traj, support={"texts": 0.01, "on-policy": 0.0})
    on_policy = per_source[(per_source["source"] == "on-policy") & (per_source["step"] == 1)]
    assert on_policy.set_index("latent").loc[0, "class"] == "born"
    with pytest.raises(RlinterpError, match="not for"):
        lineage_table(traj, support={"texts": 0.01})


def test_matched_births_below_the_floor_are_inactive() -> None:
    """The step's own dictionary has two latents no base latent matches: one fires on 20%
    of its tokens (born), one on 0.2% (below a floor of 1%: inactive, no birth)."""
    eye = torch.eye(16)
    base = unit(*eye[:8])
    step = unit(*eye[:6], eye[6], eye[7], eye[9], eye[10])
    match = match_dictionaries(base, step)
    frequency = np.full(10, 0.1)
    frequency[8], frequency[9] = 0.2, 0.002
    table = lineage_table(trajectories(), matches={1: match}, support=0.01, born_frequency={1: frequency})
    born = table[(table["evidence"] == "matched") & table["latent"].isna()].set_index("partner")
    assert born.loc[8, "class"] == "born" and born.loc[9, "class"] == "inactive"
    assert born.loc[9, "partner_frequency"] == pytest.approx(0.002)
    with pytest.raises(RlinterpError, match="born_frequency at step 1 has 3 values"):
        lineage_table(trajectories(), matches={1: match}, born_frequency={1: np.ones(3)})


def test_a_decoder_moved_to_a_direction_the_base_lacks_is_a_new_direction() -> None:
    """Latents 0 and 1 moved and fire 3x as strongly: latent 0 towards a direction no base
    latent has (nearest base cosine 0.3: new_direction), latent 1 onto another base latent's
    (0.95: rotated); latent 2 moved with its activity unchanged towards a new direction
    (new_direction, not repurposed: the write is new to the whole dictionary)."""
    traj = trajectories({0: {"mean_activation": 3 * BASE_ACT}, 1: {"mean_activation": 3 * BASE_ACT}})
    moved = stagewise({0: 0.1, 1: 0.2, 2: 0.3})
    moved["dec_cos_nearest_base"] = moved["latent"].map({0: 0.3, 1: 0.95, 2: 0.4}).fillna(0.99)
    classes = classes_at(lineage_table(traj, moved))
    assert (classes[0], classes[1], classes[2]) == ("new_direction", "rotated", "new_direction")
    assert classes[3] == "stable"


def test_birth_support_and_nearest_cosines() -> None:
    from rlinterp.tracking.lineage import birth_support, nearest_cosines

    eye = torch.eye(8)
    match = match_dictionaries(unit(*eye[:4]), unit(eye[0], eye[1], eye[2], eye[5], eye[6]))
    frequency = np.array([0.1, 0.1, 0.1, 0.03, 0.07])
    assert birth_support(match, frequency) == pytest.approx(0.07)  # latents 3 and 4 born by chance
    assert birth_support(match_dictionaries(unit(*eye[:4]), unit(*eye[:4])), np.ones(4)) == 0.0
    near = nearest_cosines(unit(eye[0] + eye[1], eye[5]), unit(*eye[:4]))
    assert near == pytest.approx([2**-0.5, 0.0])
