import pytest
import torch

from orthoasr.decoding import (
    char_error_rate,
    collapse_path,
    edit_distance,
    greedy_ctc_decode,
    token_runs,
    word_error_rate,
    word_errors,
)


def _log_probs(paths, vocab=6, frames=None):
    """One-hot-ish log-probs whose per-frame argmax follows each path."""
    frames = frames or max(len(p) for p in paths)
    logits = torch.randn(len(paths), frames, vocab)
    for b, path in enumerate(paths):
        for t, label in enumerate(path):
            logits[b, t, label] += 20.0
    return logits.log_softmax(-1)


def test_greedy_merges_repeats_and_drops_blanks():
    paths = [[1, 1, 0, 1, 2, 2, 0, 0, 3], [0, 0, 0, 0, 0, 0, 0, 0, 0], [4, 4, 4, 5, 0, 5, 5, 0, 0]]
    out = greedy_ctc_decode(_log_probs(paths), torch.tensor([9, 9, 9]))
    assert out == [[1, 1, 2, 3], [], [4, 5, 5]]


def test_greedy_respects_lengths():
    paths = [[1, 2, 2, 3, 4], [5, 0, 5, 1, 1]]
    out = greedy_ctc_decode(_log_probs(paths), torch.tensor([3, 1]))
    assert out == [[1, 2], [5]]
    assert greedy_ctc_decode(_log_probs(paths), torch.tensor([0, 5])) == [[], [5, 5, 1]]


def test_greedy_leaves_out_labels_beyond_the_vocabulary():
    """An output layer wider than the tokenizer's vocabulary (model.vocab_size above what the
    transcripts gave): its extra labels name no token, so the best of the others wins."""
    log_probs = _log_probs([[1, 7, 7, 2]], vocab=8)
    log_probs[0, 1:3, 3] = log_probs[0, 1:3, 7] - 1.0     # the runner-up where 7 wins
    assert greedy_ctc_decode(log_probs, torch.tensor([4])) == [[1, 7, 2]]
    assert greedy_ctc_decode(log_probs, torch.tensor([4]), vocab_size=7) == [[1, 3, 2]]
    with pytest.raises(ValueError, match=r"vocab_size must be in \[1, V=8\], got 9"):
        greedy_ctc_decode(log_probs, torch.tensor([4]), vocab_size=9)


def test_token_runs_give_each_kept_label_its_frames():
    """Each label collapse_path keeps, with the frames of its run: [first, end)."""
    path = [7, 1, 1, 0, 1, 2, 2, 0, 0, 3, 3, 3]
    assert token_runs(path) == [(7, 0, 1), (1, 1, 3), (1, 4, 5), (2, 5, 7), (3, 9, 12)]
    assert [label for label, _, _ in token_runs(path)] == collapse_path(path) == [7, 1, 1, 2, 3]
    assert token_runs([0, 0, 0]) == token_runs([]) == []
    assert token_runs([5, 5, 0, 0, 6], blank=5) == [(0, 2, 4), (6, 4, 5)]


def test_greedy_bad_shapes():
    with pytest.raises(ValueError, match="log_probs"):
        greedy_ctc_decode(torch.zeros(3, 4), torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match="lengths"):
        greedy_ctc_decode(torch.zeros(2, 4, 3), torch.tensor([3]))
    # lengths past T were cut to T, and negative ones read as 0, without a word
    for lengths in ([4, 9], [-1, 4]):
        with pytest.raises(ValueError, match=rf"lengths must be in \[0, T=4\] frames, got "
                                             rf"\{lengths}"):
            greedy_ctc_decode(torch.zeros(2, 4, 3), torch.tensor(lengths))


def test_edit_distance_known_cases():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("abc", "") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0


def test_wer_known_cases():
    assert word_error_rate(["the cat sat"], ["the cat sat"]) == 0.0
    assert word_error_rate(["the cat sat down"], ["the dog sat down"]) == 0.25    # substitution
    assert word_error_rate(["the cat sat"], ["the cat sat down"]) == pytest.approx(1 / 3)
    assert word_error_rate(["the cat sat"], ["cat sat"]) == pytest.approx(1 / 3)   # deletion
    assert word_error_rate(["a b c d"], [""]) == 1.0
    assert word_error_rate(["a"], ["b c d"]) == 3.0                                 # can exceed 1


def test_wer_is_corpus_level_not_mean_of_utterances():
    refs = ["a b c d e f g h i j", "x"]
    hyps = ["a b c d e f g h i j", "y"]
    # mean of per-utterance WERs would be 0.5; corpus WER is 1 error / 11 words
    assert word_error_rate(refs, hyps) == pytest.approx(1 / 11)
    assert word_errors(refs, hyps) == (1, 11)


def test_wer_bad_input():
    with pytest.raises(ValueError, match="pair up"):
        word_error_rate(["a"], ["a", "b"])
    assert word_error_rate([""], [""]) == 0.0
    # bare strings were scored character by character (0.0 here, whatever the words)
    with pytest.raises(TypeError, match="refs must be a list of texts"):
        word_error_rate("the cat", ["the dog"])
    with pytest.raises(TypeError, match="hyps must be a list of texts"):
        char_error_rate(["the cat"], "the dog")
    with pytest.raises(TypeError, match=r"hyps\[1\] must be a str, got NoneType"):
        word_error_rate(["a", "b"], ["a", None])
