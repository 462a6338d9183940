"""MinHash signatures of prompts, vectorised, in datasketch's own scheme.

A prompt is normalised (lower case, words only) and shingled into its set of
words: a template's prompts share most of them, whatever fills its slots (word
pairs were tried: two filled slots in a ten-word template then leave a Jaccard
similarity under 0.4, and one template fell apart into hundreds of clusters; word
order matters less for coverage than that). Each shingle is hashed with CRC-32 (stable across
processes, unlike ``hash``) and the signature is what
``datasketch.MinHash(NUM_PERM, SEED, hashfunc=zlib.crc32, scheme="affine32")``
gives after ``update_batch`` of those shingles (a test proves it). Hashing a
million prompts one ``MinHash`` at a time costs minutes; here a batch of prompts
is one numpy product and one ``minimum.reduceat``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from datasketch import MinHash
from datasketch.minhash import _fmix  # the scheme's pre-mix, applied exactly as update_batch does

NUM_PERM = 64  # 256 bytes a row; the estimate's standard error is at most 0.0625
SEED = 1
SCHEME = "affine32"
BATCH = 4096  # prompts hashed together: ~20 MB of products at 20 words each
BUDGET = 262_144  # ... or fewer, so that their products stay under 64 MB
MAX_WORDS = 4096  # distinct words of a prompt that count (a prompt is a question, not a book)

Signatures = npt.NDArray[np.uint32]  # one row of NUM_PERM values per prompt

_WORD = re.compile(r"\w+")
_TEMPLATE = MinHash(num_perm=NUM_PERM, seed=SEED, hashfunc=zlib.crc32, scheme=SCHEME)
_A, _B = (np.asarray(p, dtype=np.uint32) for p in _TEMPLATE.permutations)


def shingles(text: str) -> list[bytes]:
    """The distinct words of ``text``, lower-cased, the first MAX_WORDS of them; a text
    without words is one shingle."""
    words = list(dict.fromkeys(_WORD.findall(text.lower())))[:MAX_WORDS]
    if not words:
        return [text.strip().lower().encode()]
    return [s.encode() for s in words]


def signatures(texts: Iterable[str]) -> Signatures:
    """One signature per text, in order."""
    parts = []
    hashes: list[int] = []
    counts: list[int] = []
    for text in texts:
        found = [zlib.crc32(s) for s in shingles(text)]
        hashes += found
        counts.append(len(found))
        if len(counts) == BATCH or len(hashes) >= BUDGET:
            parts.append(_minimums(hashes, counts))
            hashes, counts = [], []
    if counts or not parts:
        parts.append(_minimums(hashes, counts))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _minimums(hashes: list[int], counts: list[int]) -> Signatures:
    """Each text's minimum of each permutation over its shingles' hashes (``counts``
    of them per text, in order), as ``MinHash.update_batch`` computes it."""
    if not counts:
        return np.empty((0, NUM_PERM), dtype=np.uint32)
    hv = _fmix(np.fromiter(hashes, dtype=np.uint32, count=len(hashes)), 32)
    products = hv[:, None] * _A + _B  # wraps modulo 2**32, as the scheme intends
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.minimum.reduceat(products, starts, axis=0).astype(np.uint32, copy=False)


def to_bytes(signature: Signatures) -> bytes:
    return np.asarray(signature, dtype="<u4").tobytes()


def from_bytes(data: Iterable[bytes]) -> Signatures:
    """Stored signatures (``to_bytes``) back as one array; a wrong length is a ValueError."""
    joined = b"".join(data)
    if len(joined) % (4 * NUM_PERM):
        raise ValueError(f"a stored signature is not {4 * NUM_PERM} bytes long")
    return np.frombuffer(joined, dtype="<u4").astype(np.uint32).reshape(-1, NUM_PERM)


def similarity(a: Signatures, b: Signatures) -> npt.NDArray[np.float64]:
    """Estimated Jaccard similarity of each row of ``a`` with ``b`` (broadcast)."""
    return np.asarray(np.count_nonzero(a == b, axis=-1) / NUM_PERM, dtype=np.float64)
