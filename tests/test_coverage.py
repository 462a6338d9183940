"""Clusters and coverage as pure functions: signatures, clustering, assignment,
review order, near-duplicates, dedupe. No database (see test_coverage_cli.py)."""

from __future__ import annotations

import collections
import random
import zlib

import numpy as np
import pytest
from datasketch import MinHash

from curation.coverage import groups, signatures
from curation.coverage.signatures import NUM_PERM, SCHEME, SEED
from tests.traffic import TEMPLATES, prompt, traffic


def test_signatures_are_datasketchs_own() -> None:
    texts = ["What is the capital of France?", "", "  ", "naïve café Ünïcode", "a " * 5000]
    for text, sig in zip(texts, signatures.signatures(texts), strict=True):
        m = MinHash(num_perm=NUM_PERM, seed=SEED, hashfunc=zlib.crc32, scheme=SCHEME)
        m.update_batch(signatures.shingles(text))
        assert np.array_equal(m.hashvalues, sig), text


def test_many_batches_equal_one_at_a_time() -> None:
    texts = [p for _, p in traffic(signatures.BATCH + 17)]
    together = signatures.signatures(texts)
    assert together.shape == (len(texts), NUM_PERM)
    assert np.array_equal(together[-3:], signatures.signatures(texts[-3:]))


def test_case_and_punctuation_do_not_matter() -> None:
    a, b = signatures.signatures(
        ["What is the capital of France?", "what IS the capital of france"]
    )
    assert signatures.similarity(a, b) == 1.0


def test_stored_bytes_round_trip_and_a_wrong_length_is_refused() -> None:
    sigs = signatures.signatures(["one", "two words"])
    stored = [signatures.to_bytes(s) for s in sigs]
    assert np.array_equal(signatures.from_bytes(stored), sigs)
    with pytest.raises(ValueError):
        signatures.from_bytes([stored[0][:-1]])


def purity(labels: list[int], truth: list[int]) -> tuple[float, float]:
    """(purity, completeness): the share of rows in their cluster's majority group, and
    the share of rows in their group's largest cluster (singletons would ace purity)."""
    pairs = collections.Counter(zip(labels, truth, strict=True))
    best_truth: dict[int, int] = collections.defaultdict(int)
    best_label: dict[int, int] = collections.defaultdict(int)
    for (label, group), n in pairs.items():
        best_truth[label] = max(best_truth[label], n)
        best_label[group] = max(best_label[group], n)
    return sum(best_truth.values()) / len(labels), sum(best_label.values()) / len(labels)


def test_clusters_recover_the_templates() -> None:
    pairs = list(traffic(3000))
    labels = groups.cluster(signatures.signatures(p for _, p in pairs))
    pure, complete = purity(labels.tolist(), [t for t, _ in pairs])
    assert pure >= 0.9
    assert complete >= 0.9


def test_an_empty_namespace_has_no_clusters() -> None:
    assert groups.cluster(signatures.signatures([])).size == 0


def test_the_example_is_the_most_seen_member() -> None:
    labels = np.array([0, 1, 0, 1, 0])
    assert groups.examples(labels, [1, 5, 7, 5, 7]) == {0: 2, 1: 1}


def test_new_rows_join_their_templates_cluster_or_start_one() -> None:
    rng = random.Random(3)
    reps = {100 + t: signatures.signatures([prompt(t, rng)])[0] for t in range(4)}
    fresh = [prompt(t, rng) for t in (2, 0, 5, 3, 5, 6)]
    found = groups.assign(signatures.signatures(fresh), list(reps), np.stack(list(reps.values())))
    assert found.existing[:2] == [102, 100]
    assert found.existing[3] == 103
    assert found.existing[2] is None and found.existing[4] is None and found.existing[5] is None
    assert found.new[2] == found.new[4] != found.new[5]
    assert found.new_clusters == 2


def test_review_takes_the_least_like_row_first() -> None:
    included = signatures.signatures(["the cat sat on the mat"])
    candidates = signatures.signatures(
        ["the cat sat on the mat today", "a dog ran in the park", "the cat sat on a mat"]
    )
    assert groups.least_like(candidates, included)[0] == 1
    assert groups.least_like(candidates, included[:0]) == [0, 1, 2]


def test_near_duplicates_name_the_included_row() -> None:
    sig = signatures.signatures
    included = [(7, sig(["What is the capital of France?"])[0]), (8, sig(["hello there"])[0])]
    new = [
        (20, sig(["what is the capital of france !!"])[0]),
        (21, sig(["What is the capital of Germany?"])[0]),  # one word of seven differs: 0.75
        (22, sig(["tell me a story about dragons"])[0]),
        (23, sig(["Tell me a story about dragons."])[0]),  # an earlier new row's twin
    ]
    found = groups.near_duplicates(new, included)
    assert set(found) == {20, 23}
    assert found[20][0] == 7 and found[23][0] == 22


def test_near_duplicates_equal_checking_every_pair() -> None:
    """The banded candidates find what comparing every pair finds: templated traffic,
    planted twins at 0.8-1.0 of included rows and of earlier new rows, ties to the earliest."""
    texts = [prompt(i % len(TEMPLATES), random.Random(i)) for i in range(3000)]
    sigs = signatures.signatures(texts)
    rng = np.random.default_rng(5)
    new_sigs = sigs[2500:].copy()
    for j in range(0, 500, 7):  # twins of included rows, some values changed
        new_sigs[j] = sigs[rng.integers(0, 2500)]
        changed = rng.choice(64, size=int(rng.integers(0, 13)), replace=False)
        new_sigs[j][changed] = rng.integers(0, 2**32, size=len(changed), dtype=np.uint32)
    for j in range(3, 500, 11):  # twins of an earlier new row
        new_sigs[j] = new_sigs[j - 2]
    included = [(i, sigs[i]) for i in range(2500)]
    new = [(10_000 + j, new_sigs[j]) for j in range(500)]
    rows = np.asarray([s for _, s in included + new])
    ids = [i for i, _ in included + new]
    expected = {}
    for j in range(500):
        at = 2500 + j
        scores = signatures.similarity(rows[:at], rows[at])
        k = int(np.argmax(scores))
        if scores[k] >= groups.NEAR_DUPLICATE:
            expected[ids[at]] = (ids[k], float(scores[k]))
    assert len(expected) > 100
    assert groups.near_duplicates(new, included) == expected


def test_dedupe_keeps_corrected_then_most_seen_then_lowest_id() -> None:
    texts = ["What is the capital of France?"] * 3 + ["what is the capital of france"] * 2
    texts += ["a different question entirely"]
    sigs = signatures.signatures(texts)
    ids = [1, 2, 3, 4, 5, 6]
    assert groups.dedupe(ids, sigs, [False, False, True, False, False, False], [1] * 6) == {
        1: 3,
        2: 3,
        4: 3,
        5: 3,
    }
    assert groups.dedupe(ids, sigs, [False] * 6, [1, 1, 1, 9, 9, 1]) == {1: 4, 2: 4, 3: 4, 5: 4}
    assert groups.dedupe(ids, sigs, [False] * 6, [1] * 6) == {2: 1, 3: 1, 4: 1, 5: 1}


def test_covered_share_is_traffic_weighted() -> None:
    assert groups.covered_share([10, 30, 60], [0, 2, 1]) == 0.9
    assert groups.covered_share([], []) == 0.0
    assert groups.covered_share([5], [0]) == 0.0


def test_templates_are_distinct() -> None:
    """The generator's own guard: templates far apart, so the true groups are clear."""
    sigs = signatures.signatures(TEMPLATES)
    for i in range(len(TEMPLATES)):
        for j in range(i + 1, len(TEMPLATES)):
            assert signatures.similarity(sigs[i], sigs[j]) < 0.3


def test_totals_of_an_assignment_run() -> None:
    assert groups.totals([5, 6, 5, 5], [10, 11, 12, 13], [1, 4, 3, 3]) == {
        5: (3, 7, 12),
        6: (1, 4, 11),
    }


def test_a_huge_prompt_counts_its_first_distinct_words_and_memory_stays_bounded() -> None:
    words = [f"w{i}" for i in range(3 * signatures.MAX_WORDS)]
    huge = " ".join(words * 2)
    first = " ".join(words[: signatures.MAX_WORDS])
    many = signatures.signatures([huge] * 200)  # 800,000 shingles: hashed in budgeted batches
    assert np.array_equal(many[0], signatures.signatures([first])[0])
    assert np.array_equal(many[-1], many[0])
