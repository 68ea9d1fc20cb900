"""Word timestamps (orthoasr.timestamps): tokens grouped into words by their texts, and
`Recognizer.transcribe(..., timestamps=True)` / `orthoasr transcribe --format json` placing
each word on its frames, counted from the recording's start across silences and pieces."""

import json
import random

import numpy as np
import pytest
import torch
from test_train import level_swings
from test_transcribe import FrameLocalModel, LabelTokenizer

from orthoasr import Recognizer
from orthoasr.cli import main as cli_main
from orthoasr.data import Tokenizer
from orthoasr.silence import voiced_spans
from orthoasr.timestamps import Transcript, Word, label_texts, word_frames

soundfile = pytest.importorskip("soundfile")
RATE = 16000
SENTENCES = ["put the red ball under the table now", "bring one yellow ball behind the door",
             "set seven purple plates beside the floor again"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A real sentencepiece BPE of 40 labels: whole-word pieces ("▁ball"), word starts
    ("▁pu"), inner pieces ("ll"), the bare word boundary "▁" and the unknown piece."""
    return Tokenizer.train(SENTENCES, vocab_size=40)


class ScriptedModel(torch.nn.Module):
    """A stand-in acoustic model that gives output frame f of every clip it decodes (a
    recording, a voiced segment or a piece of one) the label script[f], and the blank past
    the script's end."""

    cfg = type("Config", (), {"num_mel_bins": 80, "feature_norm": "utterance",
                              "remove_dc": False})

    def __init__(self, script: list[int], vocab_size: int):
        super().__init__()
        self.script, self.vocab_size = script, vocab_size
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, feats, lengths):
        labels = torch.zeros(feats.shape[1] // 4, dtype=torch.long)
        said = self.script[:len(labels)]
        labels[:len(said)] = torch.tensor(said, dtype=torch.long)
        log_probs = torch.nn.functional.one_hot(labels, self.vocab_size).float().log()
        return log_probs.expand(len(feats), -1, -1), torch.div(lengths, 4,
                                                               rounding_mode="floor")


def script(tokenizer, words: dict[str, int]) -> list[int]:
    """Frame labels saying each word from its frame on: each of its tokens for two frames,
    then a blank; a word of n tokens spans frames [first, first + 3n - 1)."""
    labels: list[int] = []
    for word, first in words.items():
        labels += [0] * (first - len(labels))
        for token in tokenizer.encode(word):
            labels += [token, token, 0]
    return labels


def scripted(tokenizer, words: dict[str, int], **options) -> Recognizer:
    return Recognizer(ScriptedModel(script(tokenizer, words), tokenizer.vocab_size),
                      tokenizer, **{"chunk_seconds": None, **options})


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    samples = round(RATE * seconds)
    return np.random.default_rng(seed).standard_normal(samples).astype(np.float32) * 0.1 * \
        level_swings(samples)


def test_words_group_tokens_by_their_texts():
    """A word runs from its first token (word boundaries alone just before it count) to
    its last character's token; words split wherever a token's text has whitespace."""
    texts = ["", " pu", "t", " the", " ", "r", "ed", " ⁇ ", "all", "  "]
    runs = [(1, 2, 4), (2, 5, 6), (3, 8, 9), (4, 11, 12), (5, 12, 14), (6, 15, 16),
            (7, 20, 21), (8, 23, 25), (9, 26, 27), (4, 28, 29), (2, 30, 32), (4, 33, 34)]
    assert word_frames(runs, texts) == [("put", 2, 6), ("the", 8, 9), ("red", 11, 16),
                                        ("⁇", 20, 21), ("all", 23, 25), ("t", 26, 32)]
    assert word_frames(runs[1:2] + runs[:1], texts) == [("t", 5, 6), ("pu", 2, 4)]
    assert word_frames([], texts) == [] and word_frames([(4, 0, 1), (9, 1, 2)], texts) == []


def test_label_texts_read_as_the_tokenizer_decodes(tokenizer):
    """Words from the labels' texts are the decoded text's words, for any sequence of
    labels: the unknown piece, "▁" alone and in runs, a word piece first."""
    texts = label_texts(tokenizer)
    assert len(texts) == tokenizer.vocab_size and texts[0] == ""
    assert {" ", " ⁇ ", " ball", "ll"} <= set(texts)
    pick = random.Random(0)
    for _ in range(2000):
        labels = [pick.randrange(1, tokenizer.vocab_size) for _ in range(pick.randrange(9))]
        runs = [(label, f, f + 1) for f, label in enumerate(labels)]
        assert [w for w, _, _ in word_frames(runs, texts)] == tokenizer.decode(labels).split()
    assert label_texts(LabelTokenizer())[:3] == ["", " 1", " 2"]
    silent = type("Silent", (), {"vocab_size": 3, "decode": lambda self, ids: " "})()
    with pytest.raises(ValueError, match="decodes every label to whitespace"):
        label_texts(silent)


def test_words_land_on_their_frames(tokenizer):
    """One clip decoded whole: a word starts at its first token's first 40 ms frame and
    ends with its last token's last frame."""
    said = {"put": 3, "the": 20, "red": 33, "ball": 50}
    assert [len(tokenizer.encode(w)) for w in said] == [2, 1, 4, 1]    # "▁", "r", "e", "d"
    rec = scripted(tokenizer, said, silence_db=None)
    [transcript] = rec.transcribe([noise(3.0)], timestamps=True)
    assert transcript == Transcript("put the red ball", [
        Word("put", 0.12, 0.32), Word("the", 0.8, 0.88), Word("red", 1.32, 1.76),
        Word("ball", 2.0, 2.08)])
    # "▁" opens the word after it, and does not end the one before it
    red = tokenizer.encode("red")
    rec.model.script = [0, red[0], 0, *red[1:], red[0], 0]
    assert rec.transcribe([noise(1.0)], timestamps=True)[0].words == [Word("red", 0.04, 0.24)]


def test_a_bare_word_boundary_leaves_one_space_between_words(tokenizer):
    """The model may emit "▁" alone before a word that starts with its own boundary
    ("▁the"): sentencepiece decodes that as two spaces; the text keeps one, so its words
    join into it."""
    boundary = tokenizer.encode("red")[0]
    [ball], [the] = tokenizer.encode("ball"), tokenizer.encode("the")
    assert tokenizer.decode([ball, boundary, the]) == "ball  the"
    rec = scripted(tokenizer, {}, silence_db=None)
    rec.model.script = [ball, 0, boundary, 0, the, 0]
    [transcript] = rec.transcribe([noise(1.0)], timestamps=True)
    assert transcript == Transcript("ball the", [Word("ball", 0.0, 0.04),
                                                 Word("the", 0.08, 0.2)])


def test_words_are_timed_from_the_recordings_start_across_silences(tokenizer):
    """Leading silence and a pause: each voiced segment (from 20 ms before its sound) is
    decoded alone, its frames counted from the segment's first sample."""
    gap = np.zeros(RATE // 2, np.float32)
    recording = np.concatenate([gap, noise(1.0), gap[:6400], noise(1.2, seed=1)])
    assert voiced_spans(torch.from_numpy(recording)) == [(7680, 24320), (30080, 49600)]
    rec = scripted(tokenizer, {"put": 1, "red": 10})          # frames [1, 6) and [10, 21)
    words = [Word("put", 0.52, 0.72), Word("red", 0.88, 1.32),
             Word("put", 1.92, 2.12), Word("red", 2.28, 2.72)]
    alone = Transcript("put red", [Word("put", 0.04, 0.24), Word("red", 0.4, 0.84)])
    items = [recording, noise(1.0), np.zeros(100, np.float32)]
    expected = [Transcript("put red put red", words), alone, Transcript("", [])]
    assert rec.transcribe(items, timestamps=True) == expected
    assert list(rec.transcribe_iter(items, 0, timestamps=True)) == expected
    assert rec.transcribe(items) == [t.text for t in expected]


def test_words_are_timed_across_pieces_and_segments():
    """A 9 s recording after 0.5 s of silence, decoded in 1 s pieces from its voiced
    segment (0.48 s on), against the whole recording decoded in one piece from its first
    sample: the stand-in model's labels depend on one frame each, so the words after the
    silence's own fall on the same frames."""
    clip = np.concatenate([np.zeros(RATE // 2, np.float32), noise(9.0)])
    whole = Recognizer(FrameLocalModel(), LabelTokenizer(), chunk_seconds=None,
                       silence_db=None).transcribe([clip], timestamps=True)[0]
    pieces = Recognizer(FrameLocalModel(), LabelTokenizer(), chunk_seconds=1.0,
                        context_seconds=0.2, batch_frames=700).transcribe([clip],
                                                                          timestamps=True)[0]
    assert len(pieces.words) > 100
    assert whole.words[0] == Word("1", 0.0, 0.48)       # the silence: no feature rises
    assert pieces.words == whole.words[1:]
    for transcript in (whole, pieces):
        assert " ".join(word.text for word in transcript.words) == transcript.text


@pytest.fixture
def scripted_cli(monkeypatch, tokenizer, tmp_path):
    """`orthoasr transcribe --checkpoint any ...` with a scripted model saying "put red"
    in each voiced segment, on two files, the first after 0.5 s of silence."""
    monkeypatch.setattr(Recognizer, "from_checkpoint", classmethod(
        lambda cls, path, budget, device, **options: scripted(
            tokenizer, {"put": 1, "red": 10}, **{**options, "chunk_seconds": None})))
    files = [str(tmp_path / "late.wav"), str(tmp_path / "early.wav")]
    soundfile.write(files[0], np.concatenate([np.zeros(RATE // 2), noise(1.0)]), RATE,
                    subtype="FLOAT")
    soundfile.write(files[1], noise(1.0, seed=1), RATE, subtype="FLOAT")
    return files


def test_cli_prints_json_lines_with_word_times(scripted_cli, capsys, tmp_path):
    missing = str(tmp_path / "missing.wav")
    late, early = scripted_cli
    with pytest.raises(SystemExit) as exit:
        cli_main(["transcribe", "--checkpoint", "any", "--format", "json", late, missing,
                  early])
    assert exit.value.code == 1
    out, err = capsys.readouterr()
    assert f"cannot read {missing}: audio file not found" in err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"path": late, "text": "put red", "words": [
            {"word": "put", "start": 0.52, "end": 0.72},
            {"word": "red", "start": 0.88, "end": 1.32}]},
        {"path": early, "text": "put red", "words": [
            {"word": "put", "start": 0.04, "end": 0.24},
            {"word": "red", "start": 0.4, "end": 0.84}]}]
    for flags in ([], ["--format", "text"]):
        cli_main(["transcribe", "--checkpoint", "any", *flags, late, early])
        assert capsys.readouterr().out.splitlines() == [f"{late}\tput red",
                                                        f"{early}\tput red"]
    with pytest.raises(SystemExit) as exit:
        cli_main(["transcribe", "--checkpoint", "any", "--format", "xml", late])
    assert exit.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err

