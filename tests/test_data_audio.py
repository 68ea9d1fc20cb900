import importlib.util
import re
import struct

import numpy as np
import pytest

from orthoasr.data import (
    AudioError,
    audio_info,
    downmix,
    load_audio,
    read_audio,
    resample,
    write_wav,
)
from orthoasr.data.audio import FORMAT_NAMES


def _tone(freq, rate, seconds, phase=0.0):
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * freq * t + phase).astype(np.float32)


def _write_raw_wav(path, data: bytes, rate, channels, bits, tag=1):
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE")
        f.write(b"LIST" + struct.pack("<I", 4) + b"INFO")        # a chunk to skip
        f.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        f.write(b"data" + struct.pack("<I", len(data)) + data)


@pytest.mark.parametrize("orig", [8000, 16000, 22050, 44100, 48000, 11025])
def test_resample_tone_matches_analytic(orig):
    x = _tone(440.0, orig, 0.5)
    y = resample(x, orig, 16000)
    assert len(y) == -(-len(x) * 16000 // orig)
    ref = _tone(440.0, 16000, len(y) / 16000)[:len(y)]
    assert np.abs(y - ref)[300:-300].max() < 2e-3


def test_resample_removes_content_above_new_nyquist():
    x = _tone(10000.0, 22050, 0.5)            # above 8 kHz: must not alias into the output
    y = resample(x, 22050, 16000)
    assert np.sqrt(np.mean(y[300:-300] ** 2)) < 1e-2


def test_wav_round_trip_int16(tmp_path):
    x = 0.5 * _tone(1000.0, 16000, 0.3)
    write_wav(tmp_path / "a.wav", x, 16000)
    info = audio_info(tmp_path / "a.wav")
    assert (info.sample_rate, info.num_frames, info.channels) == (16000, len(x), 1)
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype.is_floating_point and y.dim() == 1 and len(y) == len(x)
    assert np.abs(y.numpy() - x).max() < 1.0 / 32767 + 1e-6


def test_a_wav_whose_data_size_was_never_filled_in_is_read_to_its_end(tmp_path):
    """A writer cut off before it came back to fill in the sizes (a crashed recorder,
    Python's `wave` writing to a pipe) leaves 0 as the data chunk's size: 1 s of samples
    read as none, so its transcript was "" without a word. Read to the end, as ffmpeg
    reads it, and as the placeholders of streamed wavs are."""
    x = 0.5 * _tone(440.0, 16000, 1.0)
    data = np.round(x * 32767).astype("<i2").tobytes()
    _write_raw_wav(tmp_path / "a.wav", data, 16000, 1, 16)
    raw = bytearray((tmp_path / "a.wav").read_bytes())
    at = raw.index(b"data") + 4
    raw[at:at + 4] = struct.pack("<I", 0)
    raw[4:8] = struct.pack("<I", 36)                # the RIFF size as first written
    (tmp_path / "unfinished.wav").write_bytes(bytes(raw))
    assert audio_info(tmp_path / "unfinished.wav").num_frames == 16000
    np.testing.assert_array_equal(load_audio(tmp_path / "unfinished.wav"),
                                  load_audio(tmp_path / "a.wav"))
    _write_raw_wav(tmp_path / "empty.wav", b"", 16000, 1, 16)    # nothing after it: none
    assert len(load_audio(tmp_path / "empty.wav")) == 0


@pytest.mark.parametrize("kind", [b"RF64", b"BW64"])
def test_an_rf64_wav_is_read(tmp_path, kind):
    """RF64 (EBU Tech 3306; BW64, ITU-R BS.2088): the WAV of recorders that may pass 4 GB,
    its sizes in a ds64 chunk. It was refused as 'not a RIFF/WAVE file'. Cut short, it is
    refused as a truncated wav is."""
    soundfile = pytest.importorskip("soundfile")
    x = 0.5 * _tone(440.0, 48000, 0.5)
    soundfile.write(tmp_path / "rf64.wav", np.stack([x, -x], 1), 48000, format="RF64",
                    subtype="PCM_24")
    data = (tmp_path / "rf64.wav").read_bytes()
    expected = soundfile.read(tmp_path / "rf64.wav", dtype="float32")[0]
    assert data[:4] == b"RF64" and expected.shape == (len(x), 2)
    (tmp_path / "rf64.wav").write_bytes(kind + data[4:])
    info = audio_info(tmp_path / "rf64.wav")
    assert (info.sample_rate, info.num_frames, info.channels) == (48000, len(x), 2)
    np.testing.assert_array_equal(read_audio(tmp_path / "rf64.wav")[0], expected)
    (tmp_path / "cut.wav").write_bytes(kind + data[4:-3000])
    with pytest.raises(AudioError, match=r"cut.wav: truncated wav: its header declares 0.500 s"):
        load_audio(tmp_path / "cut.wav")


@pytest.mark.parametrize("bits,tag", [(8, 1), (24, 1), (32, 1), (32, 3), (64, 3)])
def test_wav_encodings_and_stereo(tmp_path, bits, tag):
    rate = 22050
    left, right = 0.5 * _tone(300.0, rate, 0.2), 0.25 * _tone(500.0, rate, 0.2)
    stereo = np.stack([left, right], axis=1)
    if tag == 3:
        data = stereo.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        data = np.round(stereo * 127 + 128).astype(np.uint8).tobytes()
    elif bits == 24:
        ints = np.round(stereo * (2 ** 23 - 1)).astype(np.int32).reshape(-1)
        data = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        data = np.round(stereo * (2 ** 31 - 1)).astype("<i4").tobytes()
    _write_raw_wav(tmp_path / "s.wav", data, rate, 2, bits, tag)
    samples, got_rate = read_audio(tmp_path / "s.wav")
    assert got_rate == rate and samples.shape == stereo.shape
    tol = 1.5 / 127 if bits == 8 else 1e-5
    assert np.abs(samples - stereo).max() < tol
    mono = load_audio(tmp_path / "s.wav")                      # averaged, resampled to 16 kHz
    assert len(mono) == -(-len(left) * 16000 // rate)
    expected = resample((left + right) / 2, rate, 16000)
    assert np.abs(mono.numpy() - expected).max() < max(tol, 1e-4)


def _write_float_wav(path, channels: np.ndarray, rate):
    """channels [frames, channels] float32 as an IEEE float wav."""
    _write_raw_wav(path, channels.astype("<f4").tobytes(), rate, channels.shape[1], 32, 3)


def test_channels_that_cancel_are_not_averaged_to_silence(tmp_path):
    """A channel wired in opposite polarity (right = -left, or nearly: -0.9 x left plus
    hiss) averaged to silence, and the file transcribed as empty without a word: the
    loudest channel is read instead. Channels that do not oppose each other are averaged:
    different sounds, one channel silent, a 5.1 file's centre channel alone."""
    rate = 22050
    voice = 0.5 * _tone(300.0, rate, 0.3) * _tone(3.0, rate, 0.3, phase=0.5)
    hiss = 1e-3 * np.random.default_rng(0).standard_normal(len(voice)).astype(np.float32)
    other = 0.25 * _tone(500.0, rate, 0.3)
    louder = 1.2 * voice
    cases = {"inverted": ([voice, -voice], voice),
             "nearly": ([voice, -0.9 * voice + hiss], voice),
             "louder_right": ([-voice, louder + hiss], louder + hiss),
             "different": ([voice, other], (voice + other) / 2),
             "one_silent": ([voice, 0 * voice], voice / 2),
             "centre_alone": ([0 * voice, 0 * voice, voice, 0 * voice, 0 * voice, 0 * voice],
                              voice / 6)}
    for name, (channels, expected) in cases.items():
        _write_float_wav(tmp_path / f"{name}.wav", np.stack(channels, axis=1), rate)
        mono = load_audio(tmp_path / f"{name}.wav").numpy()
        np.testing.assert_allclose(mono, resample(expected, rate, 16000), atol=1e-5,
                                   err_msg=name)
    empty = np.zeros((0, 2), np.float32)
    assert downmix(empty).shape == (0,)
    offset = np.stack([voice + 0.2, -voice + 0.2], axis=1)     # a DC offset is not sound
    np.testing.assert_allclose(downmix(offset), voice + 0.2, atol=1e-6)


def test_downmix_names_samples_that_are_not_frames_by_channels():
    """downmix, which the Recognizer's refusal of a [samples, channels] waveform names, failed
    on a 1-D wave with numpy's IndexError ('tuple index out of range') and mixed a batch
    [B, frames, channels] over its frames, without a word."""
    for shape in ((5,), (2, 5, 2)):
        with pytest.raises(ValueError, match=re.escape(
                f"samples must be [frames, channels], got shape {shape}")):
            downmix(np.zeros(shape, np.float32))


def test_flac_read_and_header(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    x = 0.3 * _tone(700.0, 44100, 0.4)
    soundfile.write(tmp_path / "a.flac", np.stack([x, x], 1), 44100, subtype="PCM_16")
    info = audio_info(tmp_path / "a.flac")                     # parsed from STREAMINFO
    assert (info.sample_rate, info.num_frames, info.channels) == (44100, len(x), 2)
    y = load_audio(tmp_path / "a.flac")
    assert len(y) == -(-len(x) * 16000 // 44100)
    assert np.abs(y.numpy() - resample(x, 44100, 16000)).max() < 1e-3


def test_a_flac_stream_of_unknown_length_is_decoded(tmp_path):
    """A FLAC file whose STREAMINFO gives no length (0 samples, as `flac -` writing to a
    pipe leaves it): libsndfile takes it as 2**63 - 1 frames, and soundfile.read failed with
    numpy's 'array is too big' (a ValueError, which stopped `orthoasr transcribe`'s other
    files too). It decodes to its samples; cut short, it is refused."""
    soundfile = pytest.importorskip("soundfile")
    x = 0.3 * _tone(440.0, 16000, 3.0)
    soundfile.write(tmp_path / "a.flac", x, 16000)
    data = bytearray((tmp_path / "a.flac").read_bytes())
    packed = int.from_bytes(data[18:26], "big")         # STREAMINFO's rate ... total samples
    data[18:26] = (packed >> 36 << 36).to_bytes(8, "big")
    (tmp_path / "streamed.flac").write_bytes(bytes(data))
    assert audio_info(tmp_path / "streamed.flac").num_frames == 48000
    np.testing.assert_array_equal(load_audio(tmp_path / "streamed.flac"),
                                  load_audio(tmp_path / "a.flac"))
    (tmp_path / "cut.flac").write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(AudioError, match="cut.flac: cannot decode FLAC: .*lost sync"):
        load_audio(tmp_path / "cut.flac")


@pytest.mark.parametrize("name,rate,options", [
    ("a.mp3", 22050, {"format": "MP3"}),
    ("a.ogg", 16000, {"format": "OGG", "subtype": "VORBIS"}),
    ("a.opus", 48000, {"format": "OGG", "subtype": "OPUS"}),
    ("voice.oga", 48000, {"format": "OGG", "subtype": "OPUS"})])     # a voice message's name
def test_lossy_formats_read_through_soundfile(tmp_path, name, rate, options):
    """MP3 and Ogg: the header's length is the decoded length, and the 16 kHz samples are
    the tone's within what lossy coding changes (-20 dB)."""
    soundfile = pytest.importorskip("soundfile")
    x = 0.3 * _tone(700.0, rate, 1.3)
    soundfile.write(tmp_path / name, np.stack([x, 0.5 * x], 1), rate, **options)
    info = audio_info(tmp_path / name)
    data, read_rate = read_audio(tmp_path / name)
    assert (info.sample_rate, info.channels) == (read_rate, 2) == (rate, 2)
    assert info.num_frames == data.shape[0] and abs(data.shape[0] - len(x)) <= 0.1 * rate
    y = load_audio(tmp_path / name).numpy()
    expected = resample(0.75 * x, rate, 16000)
    # encoders add delay: compare at the best alignment within 60 ms
    errors = [np.square(y[max(0, s):][:len(expected) - 1600] -
                        expected[max(0, -s):][:len(expected) - 1600]).mean()
              for s in range(-960, 961, 8)]
    assert min(errors) < 0.01 * np.square(expected).mean()


def test_a_truncated_mp3_is_refused_not_decoded_in_part(tmp_path):
    """libsndfile decodes an MP3 cut short to what is left, without an error: its header's
    length says that audio is missing, and the file is refused as a truncated wav is."""
    soundfile = pytest.importorskip("soundfile")
    soundfile.write(tmp_path / "whole.mp3", 0.3 * _tone(440.0, 16000, 3.0), 16000,
                    format="MP3")
    data = (tmp_path / "whole.mp3").read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[:len(data) // 2])
    assert len(load_audio(tmp_path / "whole.mp3")) == 48000
    assert audio_info(tmp_path / "cut.mp3").num_frames == 48000     # the header's claim
    with pytest.raises(AudioError, match=r"cut.mp3: truncated MP3: its header declares 3.000 "
                                         r"s of audio, 1\.\d+ s could be decoded"):
        load_audio(tmp_path / "cut.mp3")


def test_mp3_files_joined_end_to_end_are_refused_not_decoded_in_part(tmp_path):
    """`cat a.mp3 b.mp3 > ab.mp3`: libsndfile stops at the length the first frame's header
    declares, so the second file was dropped without a word (1 s of 2); the file's frames
    are counted now. A whole file with cover art and an ID3v1 tag still reads."""
    soundfile = pytest.importorskip("soundfile")
    for name, tone in (("a.mp3", 440.0), ("b.mp3", 660.0)):
        soundfile.write(tmp_path / name, 0.3 * _tone(tone, 16000, 1.0), 16000, format="MP3")
    (tmp_path / "ab.mp3").write_bytes((tmp_path / "a.mp3").read_bytes()
                                      + (tmp_path / "b.mp3").read_bytes())
    with pytest.raises(AudioError, match=r"ab.mp3: libsndfile decodes 1.000 s of the 2\.\d+ s "
                                         r"of audio in its MP3 frames \(MP3 files joined end "
                                         r"to end, or a VBR file without a Xing header\)"):
        load_audio(tmp_path / "ab.mp3")
    cover = b"APIC" + (5000).to_bytes(4, "big") + bytes(5002)          # syncsafe: < 2**21
    id3v2 = b"ID3\x03\x00\x00" + bytes([0, 0, len(cover) >> 7, len(cover) & 0x7F]) + cover
    (tmp_path / "tagged.mp3").write_bytes(id3v2 + (tmp_path / "a.mp3").read_bytes()
                                          + b"TAG" + bytes(125))
    np.testing.assert_array_equal(load_audio(tmp_path / "tagged.mp3"),
                                  load_audio(tmp_path / "a.mp3"))


def test_a_vbr_mp3_without_a_length_header_is_read_whole_or_refused(tmp_path):
    """Without its Xing header a VBR file's length is libsndfile's estimate from the first
    frame's bitrate: after 1 s of silence it declared 9.4 s of 3.1, and the whole file was
    refused as truncated; after 1 s of noise 1.5 s, and the rest was dropped without a
    word. Its frames are counted instead: the first is read whole, the second refused, and
    either cut inside a frame is truncated."""
    soundfile = pytest.importorskip("soundfile")
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    for name, x in (("quiet_first.mp3", np.concatenate([0 * noise, 0.3 * noise, 0.3 * noise])),
                    ("loud_first.mp3", np.concatenate([0.3 * noise, 1e-3 * noise, 1e-3 * noise]))):
        soundfile.write(tmp_path / name, x, 16000, format="MP3", bitrate_mode="VARIABLE")
        data = (tmp_path / name).read_bytes()
        assert b"Xing" in data[:200]
        bare = data[data.find(data[:2], 4):]                    # less the first (Xing) frame
        (tmp_path / f"bare_{name}").write_bytes(bare)
        (tmp_path / f"cut_{name}").write_bytes(bare[:len(bare) // 2])
        with pytest.raises(AudioError, match=rf"cut_{name}: truncated MP3: its last frame is "
                                             r"cut short; [01]\.\d+ s could be decoded"):
            load_audio(tmp_path / f"cut_{name}")
    assert abs(len(load_audio(tmp_path / "bare_quiet_first.mp3")) - 48000) < 2000
    with pytest.raises(AudioError, match=r"bare_loud_first.mp3: libsndfile decodes 1\.\d+ s of "
                                         r"the 3\.\d+ s of audio in its MP3 frames"):
        load_audio(tmp_path / "bare_loud_first.mp3")


@pytest.mark.parametrize("name, subtype", [("whole.opus", "OPUS"), ("whole.ogg", "VORBIS")])
def test_a_truncated_ogg_file_is_refused_not_decoded_in_part(tmp_path, name, subtype):
    """An Ogg Opus file declares no length, and libsndfile counts a Vorbis file's from its
    last page: cut short, either decoded to what was left without an error. A stream must
    end on a whole page marked end-of-stream, as every encoder writes it; bytes after that
    page are left alone."""
    soundfile = pytest.importorskip("soundfile")
    whole = tmp_path / name
    soundfile.write(whole, 0.3 * _tone(440.0, 48000, 3.0), 48000, format="OGG",
                    subtype=subtype)
    data = whole.read_bytes()
    assert abs(len(load_audio(whole)) - 48000) < 400
    pages = [i for i in range(len(data)) if data[i:i + 4] == b"OggS"]
    suffix = whole.suffix
    for cut in (len(data) // 2, pages[len(pages) // 2]):     # inside a page, between two
        (tmp_path / f"cut{suffix}").write_bytes(data[:cut])
        with pytest.raises(AudioError, match=rf"cut{suffix}: truncated {FORMAT_NAMES[suffix]}: "
                                             r"its last Ogg page is cut short or does not end "
                                             r"the stream; [01]\.\d+ s could be decoded"):
            load_audio(tmp_path / f"cut{suffix}")
    (tmp_path / f"tail{suffix}").write_bytes(data + b"\0" * 100)
    assert len(load_audio(tmp_path / f"tail{suffix}")) == len(load_audio(whole))


@pytest.mark.parametrize("suffix, subtype", [(".opus", "OPUS"), (".ogg", "VORBIS")])
def test_chained_ogg_streams_are_refused_not_decoded_in_part(tmp_path, suffix, subtype):
    """Ogg streams one after another (`cat a.ogg b.ogg`, or an internet radio recording,
    which starts a stream at each new song): libsndfile decoded the first alone (1 s of 2)
    without a word. A stream begun after another one's pages is refused."""
    soundfile = pytest.importorskip("soundfile")
    for name, tone in (("a", 440.0), ("b", 660.0)):
        soundfile.write(tmp_path / f"{name}{suffix}", 0.3 * _tone(tone, 48000, 1.0), 48000,
                        format="OGG", subtype=subtype)
    joined = tmp_path / f"ab{suffix}"
    joined.write_bytes((tmp_path / f"a{suffix}").read_bytes()
                       + (tmp_path / f"b{suffix}").read_bytes())
    with pytest.raises(AudioError, match=rf"ab{suffix}: 2 Ogg streams one after another "
                                         r"\(files joined end to end\): libsndfile decodes "
                                         r"the first alone \(1\.\d+ s\)"):
        load_audio(joined)
    assert abs(len(load_audio(tmp_path / f"a{suffix}")) - 16000) < 200


def test_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="missing.wav: audio file not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(AudioError, match="folder.wav: a directory, not an audio file"):
        load_audio(tmp_path / "folder.wav")
    (tmp_path / "a.aac").write_bytes(b"\xff\xf1....")
    with pytest.raises(AudioError, match=r"a.aac: unsupported audio format '.aac'"):
        load_audio(tmp_path / "a.aac")
    # a folder or a missing file is named as such whatever its name's suffix
    (tmp_path / "recordings").mkdir()
    with pytest.raises(AudioError, match="recordings: a directory, not an audio file .*find"):
        load_audio(tmp_path / "recordings")
    with pytest.raises(AudioError, match="no_suffix: audio file not found"):
        load_audio(tmp_path / "no_suffix")
    if importlib.util.find_spec("soundfile"):
        for name, kind in (("junk.mp3", "MP3"), ("junk.ogg", "Ogg"), ("junk.opus", "Opus")):
            (tmp_path / name).write_bytes(b"not audio, " * 40)
            with pytest.raises(AudioError, match=f"{name}: libsndfile cannot read it as "
                                                  rf"{kind} audio \(corrupt, or not {kind}\)"):
                load_audio(tmp_path / name)
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all")
    with pytest.raises(AudioError, match="junk.wav: not a RIFF/WAVE file$"):
        audio_info(tmp_path / "junk.wav")
    (tmp_path / "flac.wav").write_bytes(b"fLaC" + bytes(60))        # a FLAC file misnamed
    with pytest.raises(AudioError, match=r"flac.wav: not a RIFF/WAVE file \(it starts like "
                                         r"FLAC audio: name it .flac\)"):
        audio_info(tmp_path / "flac.wav")
    (tmp_path / "junk.flac").write_bytes(b"nope")
    with pytest.raises(AudioError, match="junk.flac: not a FLAC file"):
        audio_info(tmp_path / "junk.flac")
    _write_raw_wav(tmp_path / "adpcm.wav", b"\0" * 100, 8000, 1, 4, tag=0x11)
    with pytest.raises(AudioError, match=r"adpcm.wav: unsupported wav encoding \(format tag 17"):
        load_audio(tmp_path / "adpcm.wav")
    _write_raw_wav(tmp_path / "alaw16.wav", b"\0" * 100, 8000, 1, 16, tag=6)
    with pytest.raises(AudioError, match="alaw16.wav: unsupported wav sample size 16 bits"):
        load_audio(tmp_path / "alaw16.wav")


def test_g711_wavs_decode_to_the_itu_values(tmp_path):
    """A-law and mu-law wavs (telephony): each code to its 16-bit value / 32768, the ITU
    G.711 table's; libsndfile's reading of the same files where it is installed."""
    codes = bytes(range(256))
    for tag, codec, known in ((6, "alaw", {0xD5: 8, 0x55: -8, 0xAA: 32256, 0x2A: -32256,
                                           0x00: -5504, 0x80: 5504}),
                              (7, "ulaw", {0xFF: 0, 0x00: -32124, 0x80: 32124, 0xF0: 120})):
        path = tmp_path / f"{codec}.wav"
        _write_raw_wav(path, codes, 8000, 1, 8, tag=tag)
        data, rate = read_audio(path)
        assert rate == 8000 and data.shape == (256, 1) and data.dtype == np.float32
        for code, value in known.items():
            assert data[code, 0] * 32768 == value, (codec, hex(code))
        flipped = np.arange(256) ^ 0x80                  # the sign bit: the same magnitude
        np.testing.assert_array_equal(data[flipped, 0], -data[:, 0])
        if importlib.util.find_spec("soundfile"):
            import soundfile
            expected, _ = soundfile.read(path, dtype="float32", always_2d=True)
            np.testing.assert_array_equal(data, expected)


def test_a_header_rate_no_audio_has_is_refused_before_resampling(tmp_path):
    """A damaged header's rate (8 Hz) made load_audio resample 1 s of samples into 2,000 s
    (a 32 kB file into 128 MB, a long one into the machine's memory): refused, naming the
    rate; 1 kHz and up (telephone speech is 8 kHz) still read."""
    samples = (_tone(3.0, 8, 1.0) * 16000).astype("<i2").tobytes() * 2000
    _write_raw_wav(tmp_path / "bad.wav", samples, 8, 1, 16)
    with pytest.raises(AudioError, match=r"bad.wav: its header's sample rate, 8 Hz, is not "
                                         r"audio's .* 2000 times longer"):
        load_audio(tmp_path / "bad.wav")
    write_wav(tmp_path / "low.wav", _tone(100.0, 1000, 0.5), 1000)
    assert len(load_audio(tmp_path / "low.wav")) == 8000


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".ogg"])
def test_an_empty_file_is_named_empty(tmp_path, suffix):
    """A 0-byte file (a copy or download cut off at its start) was "not a RIFF/WAVE file",
    "not a FLAC file", or corrupt MP3 or Ogg audio."""
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=rf"^{path}: empty file \(0 bytes\)$"):
        load_audio(path)
