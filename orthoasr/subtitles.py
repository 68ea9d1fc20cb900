"""Subtitles of a transcript: its words grouped into cues, written as SubRip (.srt) or
WebVTT (.vtt).

    srt(cues(transcript))
    # 1
    # 00:00:00,520 --> 00:00:02,080
    # put the red ball
    #
    # ...

A cue holds consecutive words, from its first word's start to its last word's end (where the
model emitted them, orthoasr.timestamps: to 40 ms, often a little after the sound). The
defaults follow common subtitling guidelines: at most two lines of at most 42 characters
(Netflix's and many broadcasters' line length; a cue's text is broken into lines at the
space that makes them most even) shown for at most 6 s (guidelines cap a cue at 6-7 s). A
pause of 0.4 s or more starts a new cue, so that a cue is not left on screen over a
silence: between the demo's test clips joined by 0.5 s of zeros the last word of one clip
and the first of the next are 0.46 s apart (the silence splitter keeps 20 ms at each
segment's edges), while a word's tokens are emitted within it.
"""

from __future__ import annotations

from typing import NamedTuple

from .checks import check_number
from .timestamps import Transcript

LINE_CHARS, MAX_LINES, MAX_SECONDS, MAX_GAP_SECONDS = 42, 2, 6.0, 0.4


class Cue(NamedTuple):
    """Text shown from start to end, in seconds from the start of the recording; its lines
    are separated by newlines."""
    start: float
    end: float
    text: str


def cues(transcript: Transcript, line_chars: int = LINE_CHARS, max_lines: int = MAX_LINES,
         max_seconds: float = MAX_SECONDS, max_gap: float = MAX_GAP_SECONDS) -> list[Cue]:
    """transcript's words in cues, in order: a word starts a new cue when it begins max_gap
    seconds or more after the previous word's end, or when adding it would make the cue
    longer than max_seconds or its text more than max_lines lines of at most line_chars
    characters (`lines`). A word beyond those limits alone is a cue of its own. No words:
    no cues."""
    check_number("line_chars", line_chars, above=0, what="number of characters")
    check_number("max_lines", max_lines, above=0, what="number of lines")
    check_number("max_seconds", max_seconds, above=0, what="number of seconds")
    check_number("max_gap", max_gap, above=0, what="number of seconds")
    groups: list[tuple[float, float, list[str]]] = []     # (start, end, words)
    for word in transcript.words:
        if groups:
            start, end, words = groups[-1]
            if word.start - end < max_gap and word.end - start <= max_seconds and \
                    len(lines([*words, word.text], line_chars)) <= max_lines:
                groups[-1] = (start, word.end, [*words, word.text])
                continue
        groups.append((word.start, word.end, [word.text]))
    return [Cue(start, end, "\n".join(lines(words, line_chars)))
            for start, end, words in groups]


def lines(words: list[str], line_chars: int) -> list[str]:
    """words as the fewest lines of at most line_chars characters that greedy filling gives
    (a longer word alone on its line), those lines then evened out: each break moved to the
    space that makes the longest line shortest, no line growing past line_chars."""
    greedy: list[list[str]] = []
    for word in words:
        if greedy and len(" ".join([*greedy[-1], word])) <= line_chars:
            greedy[-1].append(word)
        else:
            greedy.append([word])
    if len(greedy) != 2:          # one line; or more, which a cue holds only by its limits
        return [" ".join(line) for line in greedy]
    splits = [(" ".join(words[:k]), " ".join(words[k:])) for k in range(1, len(words))]
    fitting = [pair for pair in splits if max(map(len, pair)) <= line_chars] or \
        [(" ".join(greedy[0]), " ".join(greedy[1]))]
    return list(min(fitting, key=lambda pair: max(map(len, pair))))


def srt(cues: list[Cue]) -> str:
    """SubRip: each cue its number (from 1), `HH:MM:SS,mmm --> HH:MM:SS,mmm`, its text and a
    blank line. No cues: ""."""
    return "".join(f"{number}\n{clock(cue.start, ',')} --> {clock(cue.end, ',')}\n{cue.text}\n\n"
                   for number, cue in enumerate(cues, 1))


def vtt(cues: list[Cue]) -> str:
    """WebVTT: the `WEBVTT` header and a blank line, then each cue `HH:MM:SS.mmm -->
    HH:MM:SS.mmm`, its text (&, < and > escaped) and a blank line."""
    escaped = (cue.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               for cue in cues)
    return "WEBVTT\n\n" + "".join(
        f"{clock(cue.start, '.')} --> {clock(cue.end, '.')}\n{text}\n\n"
        for cue, text in zip(cues, escaped))


def clock(seconds: float, separator: str) -> str:
    """seconds >= 0 as HH:MM:SS<separator>mmm, rounded to ms as round(seconds, 3) rounds
    (the times of `--format json`); the hours take more than two digits past 99."""
    milliseconds = round(round(seconds, 3) * 1000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{milliseconds // 1000:02d}{separator}" \
           f"{milliseconds % 1000:03d}"


__all__ = ["Cue", "cues", "lines", "srt", "vtt", "LINE_CHARS", "MAX_LINES", "MAX_SECONDS",
           "MAX_GAP_SECONDS"]
