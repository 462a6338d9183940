"""Clustering, incremental assignment, review order and near-duplicates over signatures.

Clusters are found by LSH banding: BANDS bands of ROWS signature values each, so
two prompts of estimated Jaccard similarity J share a band with probability
1 - (1 - J**ROWS)**BANDS (0.64 at 0.5, 0.99 at 0.7). In every band bucket each
member is linked to the bucket's first member (a star, not all pairs, so a bucket
of ten thousand copies costs ten thousand checks), the link is kept when the
estimated similarity is at least the threshold, and clusters are the connected
components of the kept links. This is datasketch's ``MinHashLSH`` banding done over
arrays: its dict of buckets, filled one key and band at a time in Python, took 2.5 s
to index 20,000 clusters, and at a million rows it would hold 16 million entries.
New rows meet one representative per cluster (its example row) in the same bands:
each joins the most similar representative at or above the threshold, and the rest
are clustered among themselves into new clusters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curation.coverage.signatures import Signatures, similarity

BANDS, ROWS = 16, 4
CLUSTER_SIMILARITY = 0.5  # a template with its slots filled differently
NEAR_DUPLICATE = 0.8  # the same question, worded a little differently
_CHECK = 262_144  # links checked at once (2 x 64 MB of signatures)

Labels = npt.NDArray[np.int64]


def cluster(sigs: Signatures, threshold: float = CLUSTER_SIMILARITY) -> Labels:
    """A cluster number (0..k-1) per signature."""
    n = len(sigs)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    src, dst = _links(sigs)
    keep = np.empty(len(src), dtype=bool)
    for at in range(0, len(src), _CHECK):
        part = slice(at, at + _CHECK)
        keep[part] = similarity(sigs[src[part]], sigs[dst[part]]) >= threshold
    graph = coo_matrix(
        (np.ones(int(keep.sum()), dtype=np.int8), (src[keep], dst[keep])), shape=(n, n)
    )
    _, labels = connected_components(graph, directed=False)
    return np.asarray(labels, dtype=np.int64)


def _links(sigs: Signatures) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(first member, member) of every band bucket with more than one member, once each."""
    n = len(sigs)
    found = []
    for band in range(BANDS):
        keys = _band_keys(sigs, band)
        order = np.argsort(
            keys, kind="stable"
        )  # stable: a bucket's first member is its lowest index
        ordered = keys[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        leaders = order[starts][np.cumsum(np.isin(np.arange(n), starts)) - 1]
        linked = leaders != order
        found.append(leaders[linked].astype(np.int64) * n + order[linked])
    pairs = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    return pairs // n, pairs % n


def _band_keys(sigs: Signatures, band: int) -> npt.NDArray[np.uint64]:
    """One key per signature for its values in ``band`` (collisions are checked later)."""
    part = np.ascontiguousarray(sigs[:, band * ROWS : (band + 1) * ROWS]).view(np.uint64)
    return np.asarray(part[:, 0] * np.uint64(0x9E3779B97F4A7C15) ^ part[:, 1], dtype=np.uint64)


def examples(labels: Labels, times_seen: Sequence[int]) -> dict[int, int]:
    """Per cluster, the index of its most-seen member (the first of equals): its example."""
    best: dict[int, int] = {}
    for i, label in enumerate(labels.tolist()):
        j = best.get(label)
        if j is None or times_seen[i] > times_seen[j]:
            best[label] = i
    return best


@dataclass(frozen=True)
class Assignment:
    """Per new signature: an existing cluster's id, or ``None`` and the number of a new
    cluster (0..new_clusters-1) in ``new``."""

    existing: list[int | None]
    new: list[int]
    new_clusters: int


def assign(
    sigs: Signatures,
    rep_ids: Sequence[int],
    reps: Signatures,
    threshold: float = CLUSTER_SIMILARITY,
) -> Assignment:
    """Each new signature joins the most similar representative (``reps``, one per cluster
    of ``rep_ids``) it shares a band bucket with, at or above ``threshold``; the rest are clustered among themselves (``cluster``)
    into new clusters. The same banding as ``cluster``, over representatives and new rows
    together, so a run costs milliseconds per thousand rows however many clusters exist."""
    ids = list(rep_ids)
    m, n = len(ids), len(sigs)
    best = np.full(n, -1, dtype=np.int64)
    if m and n:
        src, dst = _links(np.concatenate([reps, sigs]))  # stable: a bucket's first is a rep, if any
        pick = (src < m) & (dst >= m)
        rep, row = src[pick], dst[pick] - m
        score = np.empty(len(rep))
        for at in range(0, len(rep), _CHECK):
            part = slice(at, at + _CHECK)
            score[part] = similarity(reps[rep[part]], sigs[row[part]])
        good = score >= threshold
        rep, row, score = rep[good], row[good], score[good]
        order = np.lexsort((-score, row))  # per row, its best first
        first = np.concatenate(([True], row[order][1:] != row[order][:-1])) if len(order) else order
        best[row[order][first]] = rep[order][first]
    rest = np.flatnonzero(best < 0)
    labels = cluster(sigs[rest], threshold)
    existing: list[int | None] = [ids[b] if b >= 0 else None for b in best.tolist()]
    new = [-1] * n
    for i, label in zip(rest.tolist(), labels.tolist(), strict=True):
        new[i] = label
    return Assignment(existing, new, int(labels.max()) + 1 if len(labels) else 0)


def totals(
    clusters: Sequence[int], ids: Sequence[int], seen: Sequence[int]
) -> dict[int, tuple[int, int, int]]:
    """Per cluster: (rows, traffic, its most-seen row's id, the first of equals) of rows
    given as parallel sequences."""
    found: dict[int, tuple[int, int, int]] = {}
    best: dict[int, int] = {}
    for cluster_id, row_id, n in zip(clusters, ids, seen, strict=True):
        size, traffic, example = found.get(cluster_id, (0, 0, row_id))
        if n > best.get(cluster_id, 0):
            best[cluster_id], example = n, row_id
        found[cluster_id] = (size + 1, traffic + n, example)
    return found


def least_like(candidates: Signatures, included: Signatures) -> list[int]:
    """Indexes of ``candidates``, least similar to any of ``included`` first (stable)."""
    if len(candidates) == 0 or len(included) == 0:
        return list(range(len(candidates)))
    nearest = np.array([similarity(included, c).max() for c in candidates])
    return [int(i) for i in np.argsort(nearest, kind="stable")]


def near_duplicates(
    new: Sequence[tuple[int, Signatures]],
    included: Sequence[tuple[int, Signatures]],
    threshold: float = NEAR_DUPLICATE,
) -> dict[int, tuple[int, float]]:
    """Per new id that is a near-duplicate of an included row or an earlier new one:
    (that row's id, estimated similarity), the most similar.

    Candidates are the rows sharing a band bucket with it (the banding of ``cluster``:
    a pair at 0.8 shares one with probability 0.9998, higher above), each checked
    exactly; a row whose candidates are most of the rows is checked against them all.
    Comparing every new row with every included one took 13 s for 2,000 against 20,000."""
    if not new:
        return {}
    m = len(included)
    ids = [i for i, _ in included] + [i for i, _ in new]
    sigs = np.asarray([s for _, s in included] + [s for _, s in new])
    ranges = []  # per band: (sorted order, bucket start and end of each new row)
    for band in range(BANDS):
        keys = _band_keys(sigs, band)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        mine = keys[m:]
        lo = np.searchsorted(ordered, mine, "left")
        hi = np.searchsorted(ordered, mine, "right")
        ranges.append((order, lo, hi))
    found: dict[int, tuple[int, float]] = {}
    for j in range(len(new)):
        at = m + j  # only rows before it: included ones, then earlier new ones
        if sum(int(hi[j] - lo[j]) for _, lo, hi in ranges) > at // 4:
            candidates = np.arange(at)
        else:
            parts = [order[lo[j] : hi[j]] for order, lo, hi in ranges]
            candidates = np.unique(np.concatenate(parts))
            candidates = candidates[candidates < at]
        if len(candidates) == 0:
            continue
        scores = similarity(sigs[candidates], sigs[at])
        k = int(np.argmax(scores))  # the first of equals: the earliest row
        if scores[k] >= threshold:
            found[ids[at]] = (ids[int(candidates[k])], float(scores[k]))
    return found


def dedupe(
    ids: Sequence[int],
    sigs: Signatures,
    corrected: Sequence[bool],
    times_seen: Sequence[int],
    threshold: float = NEAR_DUPLICATE,
) -> dict[int, int]:
    """Dropped id -> kept id: of each group of near-identical rows (linked by pairs at or
    above ``threshold``) the corrected one is kept, then the most seen, then the lowest id."""
    labels = cluster(sigs, threshold)
    kept: dict[int, int] = {}
    for i in sorted(range(len(ids)), key=lambda i: (not corrected[i], -times_seen[i], ids[i])):
        kept.setdefault(int(labels[i]), i)
    return {ids[i]: ids[kept[int(labels[i])]] for i in range(len(ids)) if kept[int(labels[i])] != i}


def covered_share(traffic: Sequence[int], included: Sequence[int]) -> float:
    """Share of traffic in clusters with at least one included row (0 without traffic)."""
    total = sum(traffic)
    covered = sum(t for t, n in zip(traffic, included, strict=True) if n > 0)
    return covered / total if total else 0.0


EMBEDDING_SIMILARITY = 0.7  # cosine; paraphrases of one request score above it with common models
_BLOCK = 1024


def leaders(vectors: npt.NDArray[np.floating], threshold: float = EMBEDDING_SIMILARITY) -> Labels:
    """A cluster number per embedding, by leader clustering on cosine similarity: in
    order, each vector joins the most similar leader at or above ``threshold`` or
    becomes a leader. Blocks of vectors meet the leaders as one matrix product."""
    n = len(vectors)
    labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels
    unit = np.asarray(vectors, dtype=np.float32)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    heads: list[int] = []
    for at in range(0, n, _BLOCK):
        block = unit[at : at + _BLOCK]
        if heads:
            scores = block @ unit[heads].T
            best = scores.argmax(axis=1)
            hit = scores[np.arange(len(block)), best] >= threshold
            labels[at : at + len(block)][hit] = best[hit]
        made = len(heads)  # leaders from here on are this block's own
        for i in np.flatnonzero(labels[at : at + len(block)] < 0).tolist():
            row = at + i
            if len(heads) > made:
                scores = unit[heads[made:]] @ unit[row]
                k = int(scores.argmax())
                if scores[k] >= threshold:
                    labels[row] = made + k
                    continue
            labels[row] = len(heads)
            heads.append(row)
    return labels
