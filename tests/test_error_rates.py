"""Edit distance (rapidfuzz) against the textbook dynamic programme; WER and CER."""

import random

import pytest

from orthoasr.decoding import char_error_rate, edit_distance, errors_and_length, word_error_rate


def dp_edit_distance(ref, hyp) -> int:
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


@pytest.mark.parametrize("seed", range(3))
def test_edit_distance_equals_the_dynamic_programme(seed):
    rng = random.Random(seed)
    words = ["put", "the", "red", "ball", "on", "table", "now", "re", "d"]
    for _ in range(200):
        ref = [rng.choice(words) for _ in range(rng.randint(0, 9))]
        hyp = [rng.choice(words) for _ in range(rng.randint(0, 9))]
        assert edit_distance(ref, hyp) == dp_edit_distance(ref, hyp)
        ref_text, hyp_text = " ".join(ref), " ".join(hyp)
        assert edit_distance(ref_text, hyp_text) == dp_edit_distance(ref_text, hyp_text)


def test_char_error_rate_counts_characters_and_spaces():
    assert char_error_rate(["red ball"], ["red ball"]) == 0.0
    assert char_error_rate(["red ball"], ["rad ball"]) == pytest.approx(1 / 8)
    assert char_error_rate(["red ball"], ["redball"]) == pytest.approx(1 / 8)   # the space
    assert word_error_rate(["red ball"], ["redball"]) == 1.0
    assert errors_and_length(["ab", "c"], ["a", "cd"], "char") == (2, 3)
    assert char_error_rate([""], ["x"]) == float("inf")
    with pytest.raises(ValueError, match="unit must be 'word' or 'char', got 'phone'"):
        errors_and_length(["a"], ["a"], "phone")
