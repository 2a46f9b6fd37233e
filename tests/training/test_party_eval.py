"""training.party_eval: the party contexts, the centring, and the table on real clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.party_eval import (
    ONE_EMOTION,
    PARTY,
    centre_on_party,
    party_contexts,
    party_table,
)
from worker.errors import ConfigError

PARTIES = np.array(["a", "a", "a", "a", "b", "b"])
LABELS = np.array([0, 1, 0, 1, 0, 0], dtype=np.int64)


def test_each_context_holds_the_utterance_and_only_its_own_party() -> None:
    rng = np.random.default_rng(0)
    party = party_contexts(PARTIES, LABELS, PARTY, rng)
    assert [c.tolist() for c in party] == [[0, 1, 2, 3]] * 4 + [[4, 5]] * 2
    one = party_contexts(PARTIES, LABELS, ONE_EMOTION, rng)
    assert [c.tolist() for c in one] == [[0, 2], [1, 3], [0, 2], [1, 3], [4, 5], [4, 5]]
    sample = party_contexts(PARTIES, LABELS, "sample 2", rng)
    for i, c in enumerate(sample):
        assert i in c and set(PARTIES[c]) == {PARTIES[i]}
        assert len(c) == min(3, int((PARTIES == PARTIES[i]).sum()))


def test_an_unknown_context_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="use 'party', 'one emotion' or 'sample N'"):
        party_contexts(PARTIES, LABELS, "call", np.random.default_rng(0))


def test_centring_cancels_a_party_s_bias_and_a_one_emotion_party_s_emotion() -> None:
    # party a's voice reads as class 1 on every utterance: taking its mean away leaves
    # what each utterance does differently (classes 0, 1, 0, 1 again)
    log_probs = np.log(np.array([[0.4, 0.6], [0.1, 0.9], [0.4, 0.6], [0.1, 0.9],
                                 [0.8, 0.2], [0.8, 0.2]], dtype=np.float32))
    contexts = party_contexts(PARTIES, LABELS, PARTY, np.random.default_rng(0))
    assert centre_on_party(log_probs, contexts, 0.0).argmax(axis=1).tolist() == [1, 1, 1, 1, 0, 0]
    assert centre_on_party(log_probs, contexts, 1.0).argmax(axis=1).tolist()[:4] == [0, 1, 0, 1]
    # party b keeps one emotion: centred on itself, both its rows are exactly zero
    assert np.allclose(centre_on_party(log_probs, contexts, 1.0)[4:], 0.0)


def test_the_table_has_every_context_and_alpha_and_alpha_0_is_the_model_as_served() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=60).astype(np.int64)
    log_probs = np.log(rng.dirichlet(np.ones(3), size=60)).astype(np.float32)
    parties = np.array([f"c:{i % 4}" for i in range(60)])
    corpora = np.array(["c"] * 60)
    table = party_table(log_probs, labels, parties, corpora, 3, seed=0,
                        alphas=(0.0, 1.0), sample_sizes=(5,))
    assert list(table.index) == [("c", PARTY), ("c", "sample 5"), ("c", ONE_EMOTION)]
    assert list(table.columns) == [0.0, 1.0]
    served = [np.mean(log_probs.argmax(1)[labels == k] == k) * 100 for k in range(3)]
    assert table[0.0].tolist() == [round(float(np.mean(served)), 1)] * 3


def test_alpha_0_on_real_clips_is_what_evaluate_reports(emotion_model: Path,
                                                        callmood_corpora: Path) -> None:
    from training.evaluate import evaluate_model
    from training.party_eval import measure

    manifest = callmood_corpora / "emodb" / "manifest.csv"
    table = measure(emotion_model, [manifest], "test", "clean", seed=0, workers=2)
    ua = evaluate_model(emotion_model, [manifest], split="test", workers=2).get("emodb").ua
    assert table.loc[("emodb", PARTY), 0.0] == round(100 * ua, 1)
    # a party that keeps one emotion loses it to full centring: near chance, far below
    assert table.loc[("emodb", ONE_EMOTION), 1.0] < table.loc[("emodb", ONE_EMOTION), 0.0] - 30
