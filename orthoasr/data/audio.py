"""Audio files: header info, decoding to 16 kHz mono, resampling, writing wav.

WAV (PCM 8/16/24/32-bit, IEEE float 32/64, G.711 A-law and mu-law, WAVE_FORMAT_EXTENSIBLE,
RF64) is parsed here with no dependency: on 2 CPU cores it reads the corpus's 16-bit mono
files faster than `soundfile` (0.04 against 0.12 ms for 3 s) and as fast on long ones (10
min: 19 against 21 ms), with identical samples. FLAC headers are parsed here and FLAC audio is
decoded with `soundfile`; MP3 and Ogg (Vorbis, Opus) files are read by `soundfile` alone
(the libsndfile its wheels bring decodes them; `soundfile` is imported only when such a
file is read). Resampling: soxr.
"""

from __future__ import annotations

import os
import struct
import wave
from dataclasses import dataclass

import numpy as np
import soxr
import torch

SAMPLE_RATE = 16000
MIN_FILE_RATE = 1000    # Hz: telephone speech is 8 kHz; a file's rate under this is no audio's
OGG_EXTENSIONS = (".ogg", ".oga", ".opus")      # .oga: Ogg audio, as voice messages are named
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3") + OGG_EXTENSIONS
FORMAT_NAMES = {".flac": "FLAC", ".mp3": "MP3", ".ogg": "Ogg", ".oga": "Ogg",  # soundfile's
                ".opus": "Opus"}


class AudioError(ValueError):
    """An audio file is missing, unreadable or in a format we do not read."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    num_frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.sample_rate


# ------------------------------------------------------------------------- headers

def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, length and channel count from the file header (no decoding)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        raise AudioError(f"{path}: a directory, not an audio file (pass its files, e.g. "
                         f"`find {path} -name '*.wav' | orthoasr transcribe ... -`)")
    if not os.path.isfile(path):
        raise AudioError(f"{path}: audio file not found")
    if ext not in AUDIO_EXTENSIONS:
        raise AudioError(f"{path}: unsupported audio format {ext!r} "
                         f"(supported: {', '.join(AUDIO_EXTENSIONS)})")
    if os.path.getsize(path) == 0:      # a copy or download cut off at its start
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        if ext == ".wav":
            fmt = _wav_format(path)
            return AudioInfo(fmt.sample_rate, fmt.data_size // fmt.block_align, fmt.channels)
        if ext == ".flac":
            return _flac_info(path)
        return _soundfile_info(path)
    except OSError as err:
        raise AudioError(f"{path}: cannot read audio file: {err}") from err


@dataclass(frozen=True)
class _WavFormat:
    codec: str            # "pcm", "float", "alaw" or "ulaw"
    channels: int
    sample_rate: int
    bits: int
    block_align: int
    data_offset: int
    data_size: int


# format tag -> codec, and the sample sizes read of each (G.711 A-law and mu-law: telephony's
# 8-bit companded samples, common in call recordings)
WAV_CODECS = {1: "pcm", 3: "float", 6: "alaw", 7: "ulaw"}
WAV_SAMPLE_BITS = {"pcm": (8, 16, 24, 32), "float": (32, 64), "alaw": (8,), "ulaw": (8,)}


# what a file named .wav may really be: (its first bytes, the format, the suffix to give it)
OTHER_FORMATS = ((b"fLaC", "FLAC", ".flac"), (b"ID3", "MP3", ".mp3"), (b"\xff\xfb", "MP3", ".mp3"),
                 (b"\xff\xf3", "MP3", ".mp3"), (b"OggS", "Ogg", ".ogg, .oga or .opus"))


# writers that stream a wav (size unknown when the header is written) put 0xFFFFFFFF or
# 0x7FFFFFFF-ish placeholders in the data chunk size: sizes from here up mean "to the end";
# so does 0, which a writer cut off before it filled the size in leaves (a crashed
# recorder; Python's `wave` writing to a pipe), as ffmpeg reads it
STREAMED_DATA_SIZE = 0x7FFF0000
# RF64 / BW64 (EBU Tech 3306, ITU-R BS.2088: recorders' wavs that may pass 4 GB): a RIFF
# whose 32-bit sizes are this, the real ones in a ds64 chunk before the data
WAV_MAGICS, RF64_SIZE = (b"RIFF", b"RF64", b"BW64"), 0xFFFFFFFF


def _wav_format(path: str) -> _WavFormat:
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in WAV_MAGICS or head[8:12] != b"WAVE":
            looks = next((f" (it starts like {kind} audio: name it {suffix})"
                          for magic, kind, suffix in OTHER_FORMATS if head.startswith(magic)),
                         "")
            raise AudioError(f"{path}: not a RIFF/WAVE file{looks}")
        file_size = os.fstat(f.fileno()).st_size
        fmt, ds64_data_size = None, None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise AudioError(f"{path}: wav file has no data chunk")
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                body = f.read(size)
                if len(body) < 16:
                    raise AudioError(f"{path}: wav fmt chunk is truncated")
                tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:16])
                if tag == 0xFFFE and len(body) >= 26:    # WAVE_FORMAT_EXTENSIBLE
                    tag = struct.unpack("<H", body[24:26])[0]
                codec = WAV_CODECS.get(tag)
                if codec is None:
                    raise AudioError(f"{path}: unsupported wav encoding (format tag {tag}); "
                                     "PCM integer, IEEE float, A-law or mu-law only")
                if bits not in WAV_SAMPLE_BITS[codec]:
                    raise AudioError(f"{path}: unsupported wav sample size {bits} bits")
                if channels < 1 or rate < 1 or block_align != channels * bits // 8:
                    raise AudioError(f"{path}: malformed wav fmt chunk")
                fmt = (codec, channels, rate, bits, block_align)
                if size % 2:
                    f.seek(1, 1)
            elif cid == b"ds64":                # RF64's 64-bit sizes: riff, data, ...
                body = f.read(size + size % 2)
                if len(body) >= 16:
                    ds64_data_size = struct.unpack("<Q", body[8:16])[0]
            elif cid == b"data":
                if fmt is None:
                    raise AudioError(f"{path}: wav data chunk before fmt chunk")
                offset = f.tell()
                present = file_size - offset
                if size == RF64_SIZE and ds64_data_size is not None:
                    size = ds64_data_size
                elif size == 0 or size >= STREAMED_DATA_SIZE:
                    size = present              # a streamed or unfinished file's placeholder
                if present < size:
                    rate, align = fmt[2], fmt[4]
                    raise AudioError(f"{path}: truncated wav: its header declares "
                                     f"{size / align / rate:.3f} s of audio, the file holds "
                                     f"{present / align / rate:.3f} s")
                return _WavFormat(*fmt, data_offset=offset, data_size=size)
            else:
                f.seek(size + size % 2, 1)


def _flac_info(path: str) -> AudioInfo:
    with open(path, "rb") as f:
        head = f.read(4)
        if head[:3] == b"ID3":                    # skip an ID3v2 tag
            rest = f.read(6)
            size = 0
            for byte in rest[2:6]:
                size = (size << 7) | (byte & 0x7F)
            f.seek(10 + size)
            head = f.read(4)
        if head != b"fLaC":
            raise AudioError(f"{path}: not a FLAC file")
        block = f.read(4)
        if len(block) < 4 or block[0] & 0x7F != 0:
            raise AudioError(f"{path}: FLAC file has no STREAMINFO block")
        info = f.read(34)
        if len(info) < 34:
            raise AudioError(f"{path}: FLAC STREAMINFO is truncated")
    packed = int.from_bytes(info[10:18], "big")
    rate = packed >> 44
    channels = ((packed >> 41) & 0x7) + 1
    frames = packed & ((1 << 36) - 1)
    if rate == 0:
        raise AudioError(f"{path}: FLAC header has sample rate 0")
    if frames == 0:                               # length unknown in the header: decode
        frames = _read_with_soundfile(path)[0].shape[0]
    return AudioInfo(rate, frames, channels)


def _soundfile_info(path: str) -> AudioInfo:
    """An MP3 or Ogg file's rate, length and channels, from libsndfile."""
    name = _format_name(path)
    try:
        info = _soundfile(path).info(path)
    except RuntimeError as err:                   # soundfile.LibsndfileError
        # libsndfile says "File does not exist" of files it cannot parse; this one exists
        raise AudioError(f"{path}: libsndfile cannot read it as {name} audio (corrupt, or "
                         f"not {name})") from err
    if info.samplerate < 1 or info.channels < 1:
        raise AudioError(f"{path}: malformed {name} header")
    return AudioInfo(info.samplerate, info.frames, info.channels)


# ------------------------------------------------------------------------- decoding

def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode a wav, flac, mp3, ogg or opus file. Returns (samples float32 [frames, channels]
    in [-1, 1], rate)."""
    path = os.fspath(path)
    info = audio_info(path)          # checks existence, extension and header
    try:
        if path.lower().endswith(".wav"):
            return _read_wav(path), info.sample_rate
        data, rate = _read_with_soundfile(path)
    except OSError as err:
        raise AudioError(f"{path}: cannot read audio file: {err}") from err
    _check_complete(path, data.shape[0], info)
    return data, rate


# an MP3 decoder may end up to one MP3 frame (1152 samples) off its header's count
DECODER_SLACK_FRAMES = 1152


def _check_complete(path: str, decoded: int, info: AudioInfo) -> None:
    """Refuse a file whose audio stops short of the length its header declares, or an Ogg
    file whose stream has no end, as a truncated wav is refused: libsndfile decodes an MP3,
    Vorbis or Opus file cut in half to its first half without an error, and its transcript
    would lack the rest without a word. An MP3's frames are counted too: libsndfile stops
    at the length it reads from the first frame, so it decodes MP3 files joined end to end
    (`cat a.mp3 b.mp3`) to the first alone, and a VBR file without a length header to its
    estimate from the first frame's bitrate (3.1 of 6 s; 25.5 s were declared of 7 s,
    which refused a whole file)."""
    rate = info.sample_rate
    mp3 = _mp3_frames(path) if path.lower().endswith(".mp3") else None   # None: not counted
    if (mp3 is None or mp3.length_header) and decoded < info.num_frames - DECODER_SLACK_FRAMES:
        raise AudioError(f"{path}: truncated {_format_name(path)}: its header declares "
                         f"{info.num_frames / rate:.3f} s of audio, {decoded / rate:.3f} s "
                         "could be decoded")
    if mp3 is not None and not mp3.length_header and mp3.cut:
        raise AudioError(f"{path}: truncated MP3: its last frame is cut short; "
                         f"{decoded / rate:.3f} s could be decoded")
    if mp3 is not None and mp3.samples > decoded + MP3_FRAMES_SLACK:
        raise AudioError(f"{path}: libsndfile decodes {decoded / rate:.3f} s of the "
                         f"{mp3.samples / rate:.3f} s of audio in its MP3 frames (MP3 files "
                         "joined end to end, or a VBR file without a Xing header): convert "
                         "it to WAV or FLAC, e.g. with ffmpeg")
    if path.lower().endswith(OGG_EXTENSIONS):
        ends, links = _ogg_pages(path)
        if not ends:
            raise AudioError(f"{path}: truncated {_format_name(path)}: its last Ogg page is "
                             f"cut short or does not end the stream; {decoded / rate:.3f} s "
                             "could be decoded")
        if links > 1:
            raise AudioError(f"{path}: {links} Ogg streams one after another (files joined "
                             "end to end): libsndfile decodes the first alone "
                             f"({decoded / rate:.3f} s): convert it to WAV or FLAC, e.g. with "
                             "ffmpeg")


# MPEG audio frame headers (ISO 11172-3, 13818-3 and MPEG 2.5): the version bits' sample
# rates, and the kbit/s of bitrate indexes 1-14 by (MPEG 1 or not, layer)
MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
MPEG_KBPS = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
# the tags that make an MP3's first frame a header of its length (frame count), not audio
MP3_LENGTH_TAGS = (b"Xing", b"Info", b"VBRI")
# an encoder's delay and padding (LAME: 1105 samples and up to a frame and a half), which a
# decoder drops and a count of the frames does not
MP3_FRAMES_SLACK = 3 * 1152


@dataclass(frozen=True)
class _Mp3Frames:
    samples: int            # per channel, in the frames of audio the file holds in a row
    length_header: bool     # whether its first frame declares the length (else libsndfile
                            # estimates it from that frame's bitrate and the file's size)
    cut: bool               # whether the last frame runs past the file's end


def _mpeg_frame(head: bytes) -> tuple[int, int] | None:
    """An MPEG audio frame header's (frame bytes, samples per channel); None if `head` is
    not one (or is a free-format frame, whose size it does not give)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version, layer = (head[1] >> 3) & 3, 4 - ((head[1] >> 1) & 3)
    bitrate, rate, padding = head[2] >> 4, (head[2] >> 2) & 3, (head[2] >> 1) & 1
    if version == 1 or layer == 4 or bitrate in (0, 15) or rate == 3:
        return None
    mpeg1 = version == 3
    bits_per_second = 1000 * MPEG_KBPS[mpeg1, layer][bitrate - 1]
    rate = MPEG_RATES[version][rate]
    if layer == 1:
        return (12 * bits_per_second // rate + padding) * 4, 384
    samples = 576 if layer == 3 and not mpeg1 else 1152
    return samples // 8 * bits_per_second // rate + padding, samples


def _id3v2_size(data: bytes, pos: int) -> int:
    """The bytes of the ID3v2 tag at `pos` (0 if none there): its 10-byte header, its
    syncsafe size, and a 10-byte footer if flagged."""
    if data[pos:pos + 3] != b"ID3" or len(data) < pos + 10:
        return 0
    size = 0
    for byte in data[pos + 6:pos + 10]:
        size = (size << 7) | (byte & 0x7F)
    return 10 + size + (10 if data[pos + 5] & 0x10 else 0)


# how far past its ID3v2 tag an MP3's first frame is looked for
MP3_SYNC_BYTES = 1 << 16


def _first_mpeg_frame(data: bytes, start: int) -> int | None:
    """Where the first MPEG audio frame from `start` is: a frame header followed by another
    (or by the file's end), so that junk bytes that look like one are passed over. None if
    there is none in MP3_SYNC_BYTES."""
    for pos in range(start, min(len(data) - 3, start + MP3_SYNC_BYTES)):
        frame = _mpeg_frame(data[pos:pos + 4])
        if frame is not None and (pos + frame[0] == len(data) or
                                  _mpeg_frame(data[pos + frame[0]:pos + frame[0] + 4])):
            return pos
    return None


def _mp3_frames(path: str) -> _Mp3Frames | None:
    """Walk an MP3 file's frame headers (skipping ID3v2 tags, where files were joined too)
    from its first frame to the first bytes that are not one (an ID3v1 or APE tag, the
    end); None if no frame is found. On 2 CPU cores: 25 ms for 10 minutes at 44.1 kHz,
    whose decoding took 0.3 s."""
    with open(path, "rb") as f:
        data = f.read()
    first = _first_mpeg_frame(data, _id3v2_size(data, 0))
    if first is None:
        return None
    length_header = any(t in data[first + 4:first + 48] for t in MP3_LENGTH_TAGS)
    pos, samples, cut = first, 0, False
    while pos + 4 <= len(data):
        tag = _id3v2_size(data, pos)
        if tag:
            pos += tag
            continue
        frame = _mpeg_frame(data[pos:pos + 4])
        if frame is None:
            break
        if pos + frame[0] > len(data):
            cut = True
            break
        if pos != first or not length_header:       # that frame holds the header, no audio
            samples += frame[1]
        pos += frame[0]
    return _Mp3Frames(samples, length_header, cut)


OGG_PAGE_HEADER = 27            # a page's bytes before its segment table
OGG_BEGINNING_OF_STREAM = 0x02  # the header-type flag of a stream's first page
OGG_END_OF_STREAM = 0x04        # the header-type flag of a stream's last page


def _ogg_pages(path: str) -> tuple[bool, int]:
    """Whether an Ogg file's pages are whole up to a page marked end-of-stream, and how
    many streams it holds one after another (chained: each begun after the pages of the one
    before; streams multiplexed side by side begin together and count once). Encoders mark
    a stream's last page so; a file cut short ends in part of a page or on an unmarked
    one, and its length cannot be checked otherwise (Ogg Opus declares none, and libsndfile
    counts a Vorbis file's length from its last page). libsndfile decodes the first of
    chained streams alone, as `cat a.ogg b.ogg` or an internet radio recording makes them.
    Bytes after a marked page are left alone."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos, flags, links = 0, 0, 0
        while pos < size:
            f.seek(pos)
            head = f.read(OGG_PAGE_HEADER)
            if len(head) < OGG_PAGE_HEADER or head[:4] != b"OggS":
                break
            lacing = f.read(head[26])           # each segment's size in bytes
            pos += OGG_PAGE_HEADER + len(lacing) + sum(lacing)
            if len(lacing) < head[26] or pos > size:
                return False, links             # the page runs past the file's end
            if head[5] & OGG_BEGINNING_OF_STREAM and not flags & OGG_BEGINNING_OF_STREAM:
                links += 1                      # the first page of a link of the chain
            flags = head[5]
        return bool(flags & OGG_END_OF_STREAM), links


def _read_wav(path: str) -> np.ndarray:
    fmt = _wav_format(path)
    frames = fmt.data_size // fmt.block_align
    with open(path, "rb") as f:
        f.seek(fmt.data_offset)
        raw = f.read(frames * fmt.block_align)
    width = fmt.bits // 8
    if fmt.codec == "float":
        data = np.frombuffer(raw, dtype="<f4" if width == 4 else "<f8").astype(np.float32)
    elif fmt.codec in ("alaw", "ulaw"):
        data = G711_TABLES[fmt.codec][np.frombuffer(raw, dtype=np.uint8)]
    elif width == 1:                              # 8-bit wav is unsigned
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        data = ints.astype(np.float32) / float(1 << 23)
    else:
        dtype = "<i2" if width == 2 else "<i4"
        data = np.frombuffer(raw, dtype=dtype).astype(np.float32) / float(1 << (8 * width - 1))
    return data.reshape(frames, fmt.channels)


def _g711_table(codec: str) -> np.ndarray:
    """The 256 float32 samples (a 16-bit value / 32768) that the G.711 codes 0-255 stand
    for: each code holds a sign, a 3-bit segment (exponent) and a 4-bit step in it."""
    codes = np.arange(256)
    if codec == "ulaw":                     # bits stored inverted; a bias of 0x84 (132)
        u = ~codes & 0xFF
        exponent, step = (u >> 4) & 7, u & 0x0F
        magnitude = (((step << 3) + 0x84) << exponent) - 0x84
        negative = (u & 0x80) != 0
    else:                                   # A-law: even bits inverted; sign bit set: positive
        a = codes ^ 0x55
        exponent, step = (a >> 4) & 7, a & 0x0F
        magnitude = np.where(exponent == 0, (step << 4) + 8,
                             ((step << 4) + 0x108) << np.maximum(exponent - 1, 0))
        negative = (a & 0x80) == 0
    return (np.where(negative, -magnitude, magnitude) / 32768.0).astype(np.float32)


G711_TABLES = {codec: _g711_table(codec) for codec in ("alaw", "ulaw")}


# libsndfile's length of a FLAC stream whose header gives none (0 samples: written to a
# pipe): soundfile.read would allocate that many frames
UNKNOWN_FRAMES = 2 ** 63 - 1
BLOCK_FRAMES = 1 << 16


def _read_with_soundfile(path: str) -> tuple[np.ndarray, int]:
    soundfile = _soundfile(path)
    try:
        with soundfile.SoundFile(path) as f:
            if f.frames == UNKNOWN_FRAMES:
                return _read_to_the_end(f), f.samplerate
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except RuntimeError as err:                   # soundfile.LibsndfileError
        raise AudioError(f"{path}: cannot decode {_format_name(path)}: {err}") from err
    return data, rate


def _read_to_the_end(f) -> np.ndarray:
    """An open soundfile.SoundFile of unknown length: float32 [frames, channels], read in
    blocks until one comes short. soundfile seeks to where each read ended, which fails
    past the end of a stream of unknown length, after the block's samples are read: so
    each block is NaN until read (decoded samples are finite), and that failure ends it."""
    blocks = []
    while True:
        block = np.full((BLOCK_FRAMES, f.channels), np.nan, np.float32)
        try:
            frames = len(f.read(BLOCK_FRAMES, dtype="float32", always_2d=True, out=block))
        except RuntimeError as err:
            if "psf_fseek" not in str(err):       # a decoding error: a file cut short
                raise
            unread = np.isnan(block[:, 0])
            frames = int(unread.argmax()) if unread.any() else BLOCK_FRAMES
        blocks.append(block[:frames])
        if frames < BLOCK_FRAMES:
            return np.concatenate(blocks)


def _soundfile(path: str):
    try:
        import soundfile
    except ImportError as err:
        raise AudioError(f"{path}: reading {_format_name(path)} needs the `soundfile` package "
                         "(pip install soundfile)") from err
    return soundfile


def _format_name(path: str) -> str:
    return FORMAT_NAMES[os.path.splitext(path)[1].lower()]


# N channels that do not oppose each other (no negative correlations) have a mean whose
# power is at least 1/N of the channels' mean power (1/N exactly: N unrelated sounds, or one
# channel live of N); a mean this many dB under that bound is channels cancelling (stereo:
# a correlation under -0.9), as a channel wired in opposite polarity makes them
CANCELLED_DB = 10.0


def downmix(samples: np.ndarray) -> np.ndarray:
    """samples [frames, channels] -> [frames]: the channels' mean, unless they cancel in it
    (CANCELLED_DB): then the loudest channel. Averaged, right = -left is silence, and the
    file's transcript would be empty without a word. Powers are taken about each signal's
    mean, so that a DC offset is not sound."""
    if samples.ndim != 2:       # else a 1-D wave: an IndexError; a batch: mixed wrongly
        raise ValueError(f"samples must be [frames, channels], got shape "
                         f"{tuple(samples.shape)}")
    if samples.shape[1] == 1 or not len(samples):
        return samples.mean(axis=1)
    mean = samples.mean(axis=1)
    powers = samples.var(axis=0)
    bound = powers.mean() / samples.shape[1]
    if mean.var() < bound * 10.0 ** (-CANCELLED_DB / 10):
        return samples[:, int(powers.argmax())]
    return mean


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode `path` to a float32 mono tensor [samples] at `sample_rate` (channels mixed by
    `downmix`)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate must be an int >= 1 (Hz), got {sample_rate!r}")
    data, rate = read_audio(path)
    if rate < MIN_FILE_RATE:        # a damaged header: 1 s at 8 Hz would become 2,000 s
        raise AudioError(f"{path}: its header's sample rate, {rate} Hz, is not audio's (under "
                         f"{MIN_FILE_RATE} Hz; a damaged header?): resampled to "
                         f"{sample_rate} Hz it would be {sample_rate / rate:.0f} times longer")
    mono = downmix(data)
    return torch.from_numpy(np.ascontiguousarray(resample(mono, rate, sample_rate)))


# samples are in [-1, 1]; hot or clipped float audio and unit-variance noise peak under
# this, 16-bit samples passed as floats without the / 32768 far over it
MAX_PEAK = 10.0


def waveform_problem(wave: torch.Tensor) -> str | None:
    """Why a 1-D float waveform (S,) cannot be decoded, as words to follow its name; None if
    it can. A NaN sample spreads over its whole utterance's features: the transcript would
    come out empty. Samples at 16-bit PCM's scale pass the splitter's -80 dBFS floor
    (silent_dbfs) 90 dB too loud, so a muted microphone's dither is decoded into words."""
    if not bool(torch.isfinite(wave).all()):
        return "holds NaN or inf samples"
    peak = float(wave.detach().abs().max()) if len(wave) else 0.0
    if peak > MAX_PEAK:
        return (f"peaks at {peak:g}: samples are floats in [-1, 1] (16-bit PCM: samples / "
                f"32768; up to {MAX_PEAK:g} is taken)")
    return None


def load_checked_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE
                       ) -> torch.Tensor:
    """load_audio(path, sample_rate), and AudioError naming the file where the waveform
    cannot be decoded (waveform_problem): in training a NaN sample made the loss NaN, which
    stopped the run as a divergence; in eval or transcribe it made the clip's text empty."""
    wave = load_audio(path, sample_rate)
    problem = waveform_problem(wave)
    if problem is not None:
        raise AudioError(f"{path}: {problem}")
    return wave


# ------------------------------------------------------------------------- resampling

def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float signal with soxr (the SoX resampler, "HQ").

    soxr replaced a hand-written Kaiser-windowed polyphase filter: on 3 s of audio it is
    8-24x faster (22.05/44.1/48 -> 16 kHz: 0.5 ms against 4-9 ms on 2 CPU cores) and ~100x
    more accurate (a 1 kHz tone within 2e-7 rms; a 9 kHz tone taken to 16 kHz leaves 6e-8
    rms of alias, against 5e-3). Output length: ceil(len(x) * new / orig), as before (soxr
    may stop one sample short; that sample, past the signal's end, is 0).
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    x = np.asarray(x, dtype=np.float32)
    if orig_rate == new_rate:
        return x.copy()
    y = soxr.resample(x, orig_rate, new_rate, quality="HQ").astype(np.float32, copy=False)
    n_out = -(-len(x) * new_rate // orig_rate)
    return np.pad(y[:n_out], (0, max(0, n_out - len(y))))


# ------------------------------------------------------------------------- writing

def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM; float input is taken as [-1, 1] and clipped."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        samples = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype("<i2").tobytes())
