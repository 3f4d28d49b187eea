"""CIDEr-D, the consensus-based captioning metric, offline and in pure Python.

CIDEr (Vedantam et al., 2015) scores a generated caption by how well its n-grams agree with
the human references of the same image. Every caption becomes one TF-IDF vector per n-gram
order (1..4): term frequency times log(#images / #images whose references contain the
n-gram), so phrases that every image's references share ("a picture of") count for nothing.
The score of one order is the cosine between the candidate's vector and a reference's.

CIDEr-D, the variant COCO reports, adds two guards against gaming the metric:

* clipping: a candidate n-gram earns at most the weight the reference gives it, so repeating
  a good word does not help;
* a gaussian length penalty exp(-delta**2 / (2 * sigma**2)), delta being the difference in
  length between candidate and reference (sigma = 6).

The per-order scores are averaged, averaged again over the references, and multiplied by 10.
The arithmetic follows pycocoevalcap's `CiderD` scorer, quirks included: document frequency
is taken over the references only, and length is counted in bigrams (words - 1, so with
n=1 there is no length penalty at all).

Differences from pycocoevalcap:

* `tokenize` is a light stand-in for the Stanford PTB tokenizer (Java) that pycocoevalcap
  runs first: it lowercases and drops punctuation but keeps "dog's" whole (PTB gives
  "dog 's") and splits "black-and-white" into three words (PTB keeps one token). Scores can
  therefore differ slightly from the published toolkit on the same captions.
* IDF comes from the references of the ids being scored, as pycocoevalcap's default
  "corpus" mode does. A score over a subset, or over another data set, is therefore not
  comparable with published COCO numbers: the weights depend on which images are scored.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

NGram = tuple[str, ...]

# A word: letters/digits, optionally joined by inner apostrophes ("don't", "dog's").
# [^\W_] is \w without the underscore, so non-ASCII letters count as letters.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Lowercase, strip punctuation (keep letters/digits/apostrophes inside words), split on
    whitespace -- a light stand-in for the PTB tokenizer (Java)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class _TfIdf:
    """One caption as TF-IDF vectors, one per n-gram order (index 0 holds unigrams)."""

    vectors: list[dict[NGram, float]]
    norms: list[float]
    length: int


def _ngram_counts(words: list[str], n: int) -> Counter[NGram]:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1)
                   for i in range(len(words) - k + 1))


def _document_frequency(counts_per_image: Iterable[list[Counter[NGram]]]) -> Counter[NGram]:
    """How many images have the n-gram in at least one of their references."""
    frequency: Counter[NGram] = Counter()
    for reference_counts in counts_per_image:
        frequency.update(set().union(*reference_counts))  # an image counts once, however many refs
    return frequency


def _tfidf(counts: Counter[NGram], frequency: Counter[NGram], log_images: float, n: int) -> _TfIdf:
    vectors: list[dict[NGram, float]] = [{} for _ in range(n)]
    for gram, tf in counts.items():
        # max(1, df): an n-gram no reference has (only candidates) gets the rarest weight.
        vectors[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, frequency[gram])))
    norms = [math.sqrt(sum(w * w for w in vector.values())) for vector in vectors]
    # pycocoevalcap counts length in bigrams; kept so length penalties match it exactly.
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return _TfIdf(vectors, norms, length)


def _similarity(candidate: _TfIdf, reference: _TfIdf, sigma: float) -> float:
    """Mean over n-gram orders of the clipped, length-penalised cosine."""
    delta = candidate.length - reference.length
    penalty = math.exp(-(delta ** 2) / (2 * sigma ** 2))
    per_order = []
    for hyp, ref, hyp_norm, ref_norm in zip(candidate.vectors, reference.vectors,
                                            candidate.norms, reference.norms):
        # Clipping: repeating an n-gram cannot earn more than the reference's weight for it.
        dot = sum(min(weight, ref.get(gram, 0.0)) * ref.get(gram, 0.0)
                  for gram, weight in hyp.items())
        cosine = dot / (hyp_norm * ref_norm) if hyp_norm and ref_norm else 0.0
        per_order.append(cosine * penalty)
    return sum(per_order) / len(per_order)


def _check_inputs(candidates: dict[str, str], references: dict[str, list[str]], n: int,
                  sigma: float) -> None:
    if n < 1 or sigma <= 0:
        raise ValueError(f"need n >= 1 and sigma > 0, got n={n}, sigma={sigma}")
    missing_refs = sorted(map(str, candidates.keys() - references.keys()))
    missing_cands = sorted(map(str, references.keys() - candidates.keys()))
    if missing_refs or missing_cands:
        raise ValueError(f"candidate and reference ids differ: no references for {missing_refs}, "
                         f"no candidate for {missing_cands}")
    if not references:
        raise ValueError("nothing to score: no ids given")
    empty = sorted(str(key) for key, refs in references.items() if not refs)
    if empty:
        raise ValueError(f"ids with no reference captions: {empty}")


def cider_d(candidates: dict[str, str], references: dict[str, list[str]], *, n: int = 4,
            sigma: float = 6.0) -> tuple[float, dict[str, float]]:
    """Corpus CIDEr-D score and per-id scores.

    `candidates[id]` is one generated caption, `references[id]` one or more reference
    captions; the ids must match exactly (ValueError naming the difference otherwise). An
    empty candidate scores 0. The corpus score is the mean of the per-id scores. IDF comes
    from the references of the evaluated ids only, so a subset's score is not comparable
    with published numbers (see the module docstring).
    """
    _check_inputs(candidates, references, n, sigma)
    reference_counts = {key: [_ngram_counts(tokenize(ref), n) for ref in refs]
                        for key, refs in references.items()}
    frequency = _document_frequency(reference_counts.values())
    log_images = math.log(len(references))  # one image scored alone: every weight is 0
    scores: dict[str, float] = {}
    for key, counts in reference_counts.items():
        candidate = _tfidf(_ngram_counts(tokenize(candidates[key]), n), frequency, log_images, n)
        sims = [_similarity(candidate, _tfidf(ref, frequency, log_images, n), sigma)
                for ref in counts]
        scores[key] = 10.0 * sum(sims) / len(sims)
    return sum(scores.values()) / len(scores), scores
