import math

import pytest

from emu_data.model.cider import cider_d, tokenize

# Three images with distinct captions of at least four words, so every n-gram order (1..4)
# of each caption has some n-gram rarer than "in every image" and a non-zero norm.
REFS = {
    "1": ["a brown dog runs across the green field"],
    "2": ["two people ride bicycles down a city street"],
    "3": ["a plate of pasta with tomato sauce"],
}


def score_of(key: str, candidate: str, references: dict[str, list[str]] = REFS, **kw) -> float:
    """Score one candidate for `key`; the other ids get their reference as candidate."""
    candidates = {k: refs[0] for k, refs in references.items()}
    candidates[key] = candidate
    return cider_d(candidates, references, **kw)[1][key]


def test_tokenize_lowercases_and_drops_punctuation_but_keeps_inner_apostrophes():
    assert tokenize("A Dog's ball, on the GRASS!  'Quoted' -- end.") == [
        "a", "dog's", "ball", "on", "the", "grass", "quoted", "end"]
    assert tokenize("") == [] and tokenize(" ?! ") == []


def test_identical_candidates_score_ten():
    # One reference per image equal to its candidate: each order's cosine is exactly 1, the
    # length penalty is exp(0) = 1, so every image scores 10 x mean(1, 1, 1, 1) = 10.
    corpus, per_id = cider_d({k: refs[0] for k, refs in REFS.items()}, REFS)
    assert per_id == pytest.approx({"1": 10.0, "2": 10.0, "3": 10.0})
    assert corpus == pytest.approx(10.0)


def test_tokenization_makes_case_and_punctuation_irrelevant():
    assert score_of("1", "A brown dog runs across the GREEN field!") == pytest.approx(10.0)


def test_candidate_sharing_no_words_scores_zero():
    assert score_of("1", "an old man reads his newspaper quietly") == 0.0


def test_more_overlap_scores_higher():
    # All eight words long, so the length penalty is the same and only overlap varies.
    candidates = [
        "one cat sat on my red kitchen table",
        "a brown dog sat on my red table",
        "a brown dog runs across my red table",
        "a brown dog runs across the green table",
        "a brown dog runs across the green field",
    ]
    scores = [score_of("1", c) for c in candidates]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)
    assert scores[0] == 0.0 and scores[-1] == pytest.approx(10.0)


def test_length_penalty_padding_an_exact_match_lowers_the_score():
    exact = score_of("1", "a brown dog runs across the green field")
    padded = score_of("1", "a brown dog runs across the green field field field field")
    assert padded < exact
    # Even a perfect n-gram match would be capped by the penalty of 3 extra words.
    assert padded < exact * math.exp(-(3 ** 2) / (2 * 6.0 ** 2)) + 1e-9


def test_clipping_repeated_words_do_not_beat_the_real_caption():
    refs = {"1": ["a dog"], "2": ["a cat"]}
    assert score_of("1", "a a a a a", refs) < score_of("1", "a dog", refs)
    # n=1 (no length penalty in pycocoevalcap's bigram length): "a" is in every image, so
    # idf("a") = 0 and idf("dog") = ln 2 = L. Candidate: dog -> 4L, norm 4L; reference:
    # dog -> L, norm L. Clipped dot = min(4L, L) * L = L^2, cosine = L^2 / (4L * L) = 1/4,
    # score = 2.5. Unclipped the dot would be 4L^2 and the cosine a perfect 1.
    assert score_of("1", "dog dog dog dog", refs, n=1) == pytest.approx(2.5)


def test_ngrams_in_every_image_carry_no_weight():
    refs = {
        "1": ["a red shoe on a white background"],
        "2": ["a blue mug on a white background"],
        "3": ["a green lamp on a white background"],
    }
    # df = 3 = number of images for every n-gram of the candidate: idf = ln 3 - ln 3 = 0.
    assert score_of("1", "on a white background", refs) == pytest.approx(0.0, abs=1e-12)
    assert score_of("1", "a red shoe", refs) > 0.0


def test_mismatched_ids_raise_naming_the_difference():
    with pytest.raises(ValueError, match=r"no references for \['4'\]"):
        cider_d({"1": "a dog", "4": "a cat"}, {"1": ["a dog"]})
    with pytest.raises(ValueError, match=r"no candidate for \['2'\]"):
        cider_d({"1": "a dog"}, {"1": ["a dog"], "2": ["a cat"]})
    with pytest.raises(ValueError, match="no reference captions"):
        cider_d({"1": "a dog", "2": "a cat"}, {"1": ["a dog"], "2": []})


def test_empty_candidate_scores_zero_and_leaves_others_alone():
    corpus, per_id = cider_d({"1": "", "2": REFS["2"][0], "3": REFS["3"][0]}, REFS)
    assert per_id["1"] == 0.0
    assert per_id["2"] == pytest.approx(10.0) and per_id["3"] == pytest.approx(10.0)
    assert corpus == pytest.approx(20.0 / 3)


def test_multiple_references_are_averaged():
    refs = {
        "1": ["a small brown dog sleeps", "two kittens play with yarn"],
        "2": ["the red car parked outside"],
    }
    # The candidate equals the first reference (similarity 1 at every order, same length)
    # and shares nothing with the second (similarity 0): 10 x (1 + 0) / 2 = 5.
    assert score_of("1", "a small brown dog sleeps", refs) == pytest.approx(5.0)


def test_hand_computed_unigram_example():
    refs = {"1": ["a dog runs"], "2": ["a cat sleeps"]}
    corpus, per_id = cider_d({"1": "a dog sits", "2": "a cat"}, refs, n=1)
    # N = 2 images, L = ln 2. df: a=2, dog=runs=cat=sleeps=1, sits=0 (no reference has it).
    # idf = L - ln(max(1, df)): a -> 0, every other word (sits included) -> L.
    # With n=1 no bigrams are counted, so both lengths are 0 and the penalty is 1.
    # Image 1: cand {a:0, dog:L, sits:L}, norm L*sqrt2; ref {a:0, dog:L, runs:L}, norm
    #   L*sqrt2; dot = min(L, L)*L = L^2 -> cosine 1/2 -> score 5.0.
    # Image 2: cand {a:0, cat:L}, norm L; ref {a:0, cat:L, sleeps:L}, norm L*sqrt2;
    #   dot = L^2 -> cosine 1/sqrt2 -> score 10/sqrt2 = 7.0710678.
    # Corpus: (5 + 7.0710678) / 2 = 6.0355339.
    assert per_id["1"] == pytest.approx(5.0)
    assert per_id["2"] == pytest.approx(10 / math.sqrt(2))
    assert corpus == pytest.approx((5.0 + 10 / math.sqrt(2)) / 2)
