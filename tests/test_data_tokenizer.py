import pickle

import pytest

from orthoasr.data import Tokenizer, normalize_text
from orthoasr.data.sentences import SentenceGenerator


@pytest.fixture(scope="module")
def texts():
    generator = SentenceGenerator(seed=5)
    return [generator.sentence() for _ in range(1500)]


@pytest.fixture(scope="module")
def tokenizer(texts, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "bpe.model"
    tok = Tokenizer.train(texts, vocab_size=200, model_path=path)
    assert path.exists()
    return tok


def test_round_trip_and_blank(tokenizer, texts):
    assert tokenizer.vocab_size == 200                         # blank included
    for text in texts[:200]:
        ids = tokenizer.encode(text)
        assert ids and min(ids) >= 1 and max(ids) < tokenizer.vocab_size
        assert tokenizer.decode(ids) == normalize_text(text)
    ids = tokenizer.encode("the old dog")
    with_blanks = [0] + [i for t in ids for i in (t, 0)]
    assert tokenizer.decode(with_blanks) == "the old dog"


def test_unseen_words_round_trip(tokenizer):
    # every letter was seen in training, so new words split into known pieces
    assert tokenizer.decode(tokenizer.encode("Quizzical vexed jumbo")) == "quizzical vexed jumbo"


def test_characters_of_long_texts_get_pieces():
    """A transcript over sentencepiece's default max_sentence_length (4192 bytes) still
    counts in training: its characters found nowhere else encode to pieces, not to the
    unknown piece (id 1), and it round-trips."""
    long_text = " ".join(["gamma"] * 900 + ["ωmega"])
    tok = Tokenizer.train(["hello world", "the cat sat", long_text], vocab_size=40)
    assert len(long_text.encode()) > 4192
    ids = tok.encode(long_text)
    assert 1 not in ids                         # sentencepiece's unk_id 0, ours 1
    assert tok.decode(ids) == long_text


def test_serialisation(tokenizer, tmp_path, texts):
    blob = tokenizer.to_bytes()
    again = Tokenizer.from_bytes(blob)
    clone = pickle.loads(pickle.dumps(tokenizer))
    tokenizer.save(tmp_path / "copy.model")
    loaded = Tokenizer(tmp_path / "copy.model")
    for other in (again, clone, loaded):
        assert other.vocab_size == tokenizer.vocab_size
        assert [other.encode(t) for t in texts[:50]] == [tokenizer.encode(t) for t in texts[:50]]


def test_small_corpus_soft_vocab_limit():
    tok = Tokenizer.train(["a b c", "abc cab"], vocab_size=1000)
    assert 3 <= tok.vocab_size < 1000
    assert tok.decode(tok.encode("cab abc")) == "cab abc"


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(["hello"], vocab_size=2)
    pangram = ["the quick brown fox jumps over the lazy dog"]      # 26 letters and a boundary
    with pytest.raises(ValueError, match=r"must be >= 29 for these texts: .* their 27 "
                                         r"characters .*; got 28"):
        Tokenizer.train(pangram, vocab_size=28)
    assert Tokenizer.train(pangram, vocab_size=29).vocab_size == 29
    with pytest.raises(ValueError, match="no non-empty text"):
        Tokenizer.train(["...", ""], vocab_size=50)
    with pytest.raises(ValueError, match="exactly one"):
        Tokenizer()
