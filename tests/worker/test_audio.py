"""Decoding edge: every listed format, resampling, channel layout and every kind of bad input."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from worker.audio import (
    check_decode_complete,
    check_samples,
    load_mono,
    load_recording,
    ogg_page_crc,
    open_stream,
    resample,
    resolve_input,
    stream_blocks,
)
from worker.constants import ANALYSIS_SAMPLE_RATE, MAX_SAMPLE_PEAK
from worker.errors import (
    AudioDecodeError,
    InputNotAllowedError,
    TransientError,
    UnsupportedAudioError,
)

MAX_S = 4 * 3600.0


def tone(seconds: float, rate: int, freq_hz: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq_hz * t).astype(np.float32)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)


FORMATS = [
    ("WAV", "PCM_16", ".wav", 8000),
    ("WAV", "PCM_24", ".wav", 16000),
    ("WAV", "PCM_32", ".wav", 44100),
    ("WAV", "FLOAT", ".wav", 48000),
    ("WAV", "ULAW", ".wav", 8000),
    ("WAV", "ALAW", ".wav", 8000),
    ("FLAC", "PCM_16", ".flac", 22050),
    ("OGG", "VORBIS", ".ogg", 16000),
    ("OGG", "OPUS", ".opus", 48000),
    ("MP3", "MPEG_LAYER_III", ".mp3", 16000),
]


@pytest.mark.parametrize(("fmt", "subtype", "suffix", "rate"), FORMATS)
def test_every_format_decodes_to_analysis_rate(tmp_path: Path, fmt: str, subtype: str,
                                                suffix: str, rate: int) -> None:
    path = tmp_path / f"call{suffix}"
    sf.write(str(path), tone(2.0, rate, channels=2), rate, format=fmt, subtype=subtype)
    rec = load_recording(path, MAX_S)
    assert rec.n_channels == 2
    assert rec.source_sample_rate == rate
    assert rec.duration_s == pytest.approx(2.0, abs=0.1)  # lossy codecs pad a little
    for c, x in enumerate(rec.channels):
        assert x.dtype == np.float32
        assert x.size == pytest.approx(2.0 * ANALYSIS_SAMPLE_RATE, rel=0.05)
        # The tone's level survives decoding and resampling: channel c has amplitude 0.5*(c+1)/2.
        rms = float(np.sqrt(np.mean(x[800:-800] ** 2)))
        assert rms == pytest.approx(0.5 * (c + 1) / 2 / np.sqrt(2), rel=0.15)
    assert len(rec.sha256) == 64


def test_resample_keeps_a_telephone_band_tone() -> None:
    x = tone(1.0, 44100, freq_hz=1000.0)[:, 0]
    y = resample(x, 44100)
    assert y.size == ANALYSIS_SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) == pytest.approx(1000, abs=2)  # 1 Hz bins over 1 s


def test_mono_corpus_clip(callmood_corpora: Path) -> None:
    clip = callmood_corpora / "ravdess" / "audio" / "03-01-05-01-01-01-19.opus"
    x = load_mono(clip)
    assert x.ndim == 1 and x.dtype == np.float32
    assert 2.5 < x.size / ANALYSIS_SAMPLE_RATE < 6.0
    assert np.abs(x).max() > 0.01


# ---- bad input: each one is a clear InputError, never a crash -------------------------------

def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        load_recording(path, MAX_S)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match="cannot open"):
        load_recording(tmp_path / "nope.wav", MAX_S)


def test_non_audio_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("agent notes, not audio\n" * 50)
    with pytest.raises(AudioDecodeError, match="not a readable audio file"):
        load_recording(path, MAX_S)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.flac"
    path.write_bytes(np.random.default_rng(0).bytes(20_000))
    with pytest.raises(AudioDecodeError):
        load_recording(path, MAX_S)


def test_header_only_wav_has_no_frames(tmp_path: Path) -> None:
    full = tmp_path / "full.wav"
    sf.write(str(full), tone(1.0, 8000), 8000, subtype="ULAW")
    cut = tmp_path / "zero-length.wav"
    data = full.read_bytes()
    cut.write_bytes(data[: data.index(b"data") + 8])  # the header and not one sample
    with pytest.raises(AudioDecodeError, match=r"holds no audio frames$"):
        load_recording(cut, MAX_S)


def test_a_wav_whose_header_says_empty_names_the_repair(tmp_path: Path) -> None:
    """A recorder that crashed before rewriting its header leaves data length 0 and every
    sample after it: libsndfile reads nothing, and the reason says how to get them back."""
    import struct

    # WAVEX (WAVE_FORMAT_EXTENSIBLE): how ffmpeg writes 24-bit files; it got no repair hint
    for fmt, subtype in (("WAV", "PCM_16"), ("WAVEX", "PCM_24")):
        full = tmp_path / "full.wav"
        sf.write(str(full), tone(4.0, 8000), 8000, format=fmt, subtype=subtype)
        data = bytearray(full.read_bytes())
        at = data.index(b"data")
        data[4:8] = data[at + 4:at + 8] = struct.pack("<I", 0)
        crashed = tmp_path / "crashed.wav"
        crashed.write_bytes(bytes(data))
        for streamed in (False, True):
            with pytest.raises(AudioDecodeError, match="--ignore-length") as info:
                if streamed:
                    list(stream_blocks(open_stream(crashed, MAX_S), MAX_S))
                else:
                    load_recording(crashed, MAX_S)
            assert f"{len(data)} bytes" in str(info.value), (fmt, streamed)


@pytest.mark.parametrize("suffix,fmt,subtype", [(".wav", "WAV", "PCM_16"),
                                                 (".flac", "FLAC", "PCM_16"),
                                                 (".opus", "OGG", "OPUS")])
def test_truncated_file_fails_cleanly_or_keeps_what_is_there(tmp_path: Path, suffix: str,
                                                              fmt: str, subtype: str) -> None:
    full = tmp_path / f"full{suffix}"
    sf.write(str(full), tone(4.0, 16000), 16000, format=fmt, subtype=subtype)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    try:
        rec = load_recording(cut, MAX_S)
    except AudioDecodeError as e:
        assert cut.name in str(e)
    else:  # libsndfile decoded the part that is there: a sensible, shorter result
        assert 0.5 < rec.duration_s <= 4.0


def test_silent_file_decodes(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros((8000 * 3, 2), dtype=np.float32), 8000, subtype="ULAW")
    rec = load_recording(path, MAX_S)
    assert rec.duration_s == pytest.approx(3.0)
    assert all(float(np.abs(x).max()) < 1e-3 for x in rec.channels)


@pytest.mark.parametrize("rate", [1000, 768_000])
def test_absurd_sample_rate(tmp_path: Path, rate: int) -> None:
    path = tmp_path / "odd.wav"
    sf.write(str(path), np.zeros(rate // 10, dtype=np.float32), rate, subtype="PCM_16")
    with pytest.raises(UnsupportedAudioError, match="sample rate"):
        load_recording(path, MAX_S)


def test_more_than_two_channels(tmp_path: Path) -> None:
    path = tmp_path / "surround.wav"
    sf.write(str(path), tone(0.5, 8000, channels=6), 8000, subtype="PCM_16")
    with pytest.raises(UnsupportedAudioError, match="6 channels"):
        load_recording(path, MAX_S)


def test_non_finite_float_samples(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    data = tone(0.5, 8000)
    data[100] = np.nan
    sf.write(str(path), data, 8000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="NaN"):
        load_recording(path, MAX_S)


def test_float_samples_at_integer_scale_are_refused_not_clipped_to_noise(tmp_path: Path) -> None:
    loud = tone(0.5, 8000) * 3.0  # peak 1.5: a float WAV a little over full scale is kept
    sf.write(str(tmp_path / "hot.wav"), loud, 8000, subtype="FLOAT")
    assert np.abs(load_recording(tmp_path / "hot.wav", MAX_S).channels[0]).max() > 1.0
    path = tmp_path / "int-scale.wav"
    sf.write(str(path), tone(0.5, 8000) * 32767.0, 8000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match=r"int-scale\.wav has samples up to 1\.6\d*e\+04; "
                                               r"float samples must lie within \+-1\.0"):
        load_recording(path, MAX_S)
    with pytest.raises(AudioDecodeError, match=r"up to .* \(after 0\.0 s\)"):
        list(stream_blocks(open_stream(path, MAX_S), MAX_S))


def test_hour_long_file_is_refused_above_the_limit_and_read_below(tmp_path: Path) -> None:
    path = tmp_path / "hour.wav"
    hour = np.zeros((3600 * 8000, 2), dtype=np.int16)
    sf.write(str(path), hour, 8000, subtype="ULAW")
    with pytest.raises(UnsupportedAudioError, match="CALLMOOD_MAX_DURATION_S"):
        load_recording(path, max_duration_s=1800.0)
    rec = load_recording(path, max_duration_s=MAX_S)
    assert rec.duration_s == pytest.approx(3600.0)
    assert rec.channels[0].size == 3600 * ANALYSIS_SAMPLE_RATE


def test_file_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.wav"
    sf.write(str(path), tone(1.0, 8000), 8000, subtype="PCM_16")
    with pytest.raises(UnsupportedAudioError, match="CALLMOOD_MAX_FILE_BYTES"):
        load_recording(path, MAX_S, max_file_bytes=1000)


# ---- input roots --------------------------------------------------------------------------

def test_resolve_inside_root(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    target = tmp_path / "in" / "a.wav"
    target.write_bytes(b"x")
    assert resolve_input(str(target), [tmp_path / "in"]) == target.resolve()
    assert resolve_input(target.resolve().as_uri(), [tmp_path / "in"]) == target.resolve()


def test_dotdot_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "secret.wav").write_bytes(b"x")
    with pytest.raises(InputNotAllowedError, match="outside the input roots"):
        resolve_input(str(tmp_path / "in" / ".." / "secret.wav"), [tmp_path / "in"])


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "secret.wav").write_bytes(b"x")
    os.symlink(tmp_path / "secret.wav", tmp_path / "in" / "link.wav")
    with pytest.raises(InputNotAllowedError):
        resolve_input(str(tmp_path / "in" / "link.wav"), [tmp_path / "in"])


@pytest.mark.parametrize("uri", ["http://example.com/a.wav", "s3://bucket/a.wav", ""])
def test_other_schemes_are_refused(tmp_path: Path, uri: str) -> None:
    with pytest.raises(InputNotAllowedError):
        resolve_input(uri, [tmp_path])


def test_a_path_the_os_cannot_take_is_a_decode_error_and_no_duration(tmp_path: Path) -> None:
    from worker.audio import probe_duration_s, read_info

    # an embedded NUL makes os.stat raise ValueError, not OSError: the producer's probe must
    # still answer None (it once aborted the send and every recovery after it)
    assert probe_duration_s(f"file://{tmp_path}/a%00.wav") is None
    with pytest.raises(AudioDecodeError, match="cannot open"):
        read_info(tmp_path / "a\x00.wav")


def test_an_mp3_whose_header_overestimates_its_length_is_not_refused_by_it(
        tmp_path: Path) -> None:
    """A VBR MP3 without its Xing/Info frame (encoders that write as they record) that opens
    with silence: libsndfile sizes it from the first frame's bitrate, about twice its
    length. The decoded length decides; the header's estimate once failed the call."""

    rate = 8000
    noise = (0.3 * np.random.default_rng(0).standard_normal(rate * 100)).astype(np.float32)
    stripped = _vbr_mp3_without_xing(np.concatenate([np.zeros(rate * 20, np.float32), noise]),
                                     rate, tmp_path)
    header_s = sf.info(stripped).duration
    assert header_s > 150                                   # the estimate: ~2x the 120 s
    recording = load_recording(stripped, max_duration_s=150.0)
    assert recording.duration_s == pytest.approx(120.0, abs=0.5)
    assert open_stream(stripped, max_duration_s=150.0).file_bytes == stripped.stat().st_size
    # the decoded length still refuses a file that is too long
    with pytest.raises(UnsupportedAudioError, match="longer than the limit of 100 s"):
        load_recording(stripped, max_duration_s=100.0)
    # a producer sizes the task's time limits by the most the size allows (at 8 kbit/s here),
    # not by a header that may read far shorter than the call
    from worker.audio import probe_duration_s

    assert probe_duration_s(str(stripped)) == pytest.approx(8 * stripped.stat().st_size / 8000)
    # a size that even 256 kbit/s (the highest of any layer at 8 kHz) cannot fit under the
    # limit is refused before any decoding
    least_s = 8 * stripped.stat().st_size / 256_000
    with pytest.raises(UnsupportedAudioError, match=f"lasts at least {least_s:.0f} s by its size"):
        open_stream(stripped, max_duration_s=least_s * 0.9)


def _vbr_mp3_without_xing(x: npt.NDArray[np.float32], rate: int, tmp_path: Path) -> Path:
    """``x`` as a VBR MP3 (8 kHz: MPEG-2.5 layer III) less its first frame, the Xing/Info one
    that holds the true length: what an encoder writing as it records leaves."""
    vbr = tmp_path / "vbr.mp3"
    sf.write(vbr, x, rate, format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="VARIABLE")
    data = vbr.read_bytes()
    header = int.from_bytes(data[:4], "big")
    assert header >> 21 == 0x7FF and data.find(b"Xing") < 200   # its first frame is the Xing one
    # MPEG-2.5 layer III at 8 kHz: 72 * bitrate / rate bytes (+ padding) per frame
    bitrates = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]
    first = 72 * bitrates[(header >> 12) & 15] * 1000 // rate + ((header >> 9) & 1)
    stripped = tmp_path / "noxing.mp3"
    stripped.write_bytes(data[first:])
    return stripped


def test_an_mp3_whose_header_underestimates_its_length_fails_not_cut_short(
        tmp_path: Path) -> None:
    """The other way round: a VBR MP3 without its Xing/Info frame that opens loud is sized at
    about half its length, and libsndfile stops decoding there, on both paths. Stored, the
    call would be done with half its audio; it fails with the reason instead."""
    from worker.audio import mp3_layer3_frames
    from worker.segmentation import SegmentationConfig
    from worker.stream import streamed_spans
    from worker.vad import VadConfig

    rate = 8000
    rng = np.random.default_rng(0)
    loud = np.clip(0.5 * rng.standard_normal(rate * 20), -1, 1).astype(np.float32)
    quiet = (0.001 * rng.standard_normal(rate * 100)).astype(np.float32)
    stripped = _vbr_mp3_without_xing(np.concatenate([loud, quiet]), rate, tmp_path)
    assert sf.info(stripped).duration < 70                  # the header's estimate
    held = mp3_layer3_frames(stripped.read_bytes())
    assert held is not None and held / rate == pytest.approx(120.0, abs=0.3)
    with pytest.raises(AudioDecodeError, match=r"decoded 60\.\d s of it, yet its MPEG frames "
                                               r"hold 120\.\d s"):
        load_recording(stripped, max_duration_s=150.0)
    with pytest.raises(AudioDecodeError, match="Xing"):    # the streamed path's first pass
        streamed_spans(open_stream(stripped, max_duration_s=150.0), 150.0, VadConfig(),
                       SegmentationConfig())
    # with its Xing frame the same audio decodes whole, and the walk agrees within a frame
    intact = tmp_path / "vbr.mp3"
    assert load_recording(intact, max_duration_s=150.0).duration_s == pytest.approx(120.0,
                                                                                    abs=0.1)
    assert mp3_layer3_frames(intact.read_bytes()) == held + 576
    # an ID3v2 tag in front and junk after the last frame change nothing; no frame: None
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10)
    assert mp3_layer3_frames(tag + stripped.read_bytes() + b"TAG" + bytes(125)) == held
    assert mp3_layer3_frames(bytes(4096)) is None


def _stale(source: Path, target: Path, listed_bytes: int) -> Path:
    """``source``'s bytes with its data chunk (and RIFF size) rewritten to ``listed_bytes``."""
    data = bytearray(source.read_bytes())
    at = data.find(b"data")
    data[at + 4:at + 8] = listed_bytes.to_bytes(4, "little")
    data[4:8] = (at + 8 + listed_bytes - 8).to_bytes(4, "little")
    target.write_bytes(bytes(data))
    return target


def _with_tail(source: Path, target: Path, tail: bytes) -> Path:
    """``source``'s bytes with ``tail`` appended and the RIFF size counting it."""
    data = bytearray(source.read_bytes() + tail)
    data[4:8] = (len(data) - 8).to_bytes(4, "little")
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("subtype", ["PCM_16", "WAVEX"])
def test_a_wav_whose_header_lists_part_of_its_data_fails_rather_than_cut_short(
        tmp_path: Path, subtype: str) -> None:
    """A recorder that last rewrote its header at 10 s of a 60 s call: libsndfile reads 10 s,
    and the call was stored as done with duration_s 10. WAVE_FORMAT_EXTENSIBLE too (ffmpeg's
    24-bit and multichannel files), which libsndfile names WAVEX."""
    from worker.audio import wav_layout

    rate = 8000
    x = (0.1 * np.random.default_rng(0).standard_normal((rate * 60, 2))).astype(np.float32)
    whole = tmp_path / "whole.wav"
    if subtype == "WAVEX":
        sf.write(whole, x, rate, format="WAVEX", subtype="PCM_16")
    else:
        sf.write(whole, x, rate, subtype="PCM_16")
    stale = _stale(whole, tmp_path / "stale.wav", 10 * rate * 2 * 2)
    assert sf.info(stale).duration == pytest.approx(10.0)
    layout = wav_layout(stale)
    assert (layout.unlisted_bytes, layout.bytes_per_s) == ((60 - 10) * rate * 2 * 2, rate * 2 * 2)
    for load in (load_recording, open_stream):
        with pytest.raises(AudioDecodeError, match=r"lists 10\.0 s of audio, yet 1600000 more "
                                                   r"bytes \(~50 s\).*sox --ignore-length"):
            load(stale, max_duration_s=3600.0)
    assert wav_layout(whole).unlisted_bytes == 0


@pytest.mark.parametrize(("fmt", "subtype", "channels"), [("WAV", "PCM_16", 1),
                                                        ("WAV", "ULAW", 2),
                                                        ("WAVEX", "PCM_24", 2)])
def test_a_wav_cut_short_fails_rather_than_be_stored_as_half_a_call(
        tmp_path: Path, fmt: str, subtype: str, channels: int) -> None:
    """A copy or upload that stopped half-way: the header still lists the whole call and
    libsndfile reads the half that is there without a word, so the call was stored as done
    with half its duration. A cut of a few samples (under DECODE_SHORTFALL_MAX_S) is read."""
    from worker.audio import DECODE_SHORTFALL_MAX_S, wav_layout

    rate = 8000
    x = (0.1 * np.random.default_rng(2).standard_normal((rate * 20, channels))).astype(np.float32)
    whole = tmp_path / "whole.wav"
    sf.write(whole, x, rate, format=fmt, subtype=subtype)
    raw = whole.read_bytes()
    layout = wav_layout(whole)
    assert (layout.missing_bytes, layout.unlisted_bytes) == (0, 0)
    assert layout.data_bytes / layout.bytes_per_s == pytest.approx(20.0)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(raw[: len(raw) // 2])
    assert wav_layout(cut).missing_bytes == len(raw) - len(raw) // 2
    for load in (load_recording, open_stream):
        with pytest.raises(AudioDecodeError, match=r"cut\.wav: its WAV header lists 20\.0 s of "
                                                   r"audio, yet the file ends after 10\.0 s: "
                                                   r"cut short"):
            load(cut, max_duration_s=3600.0)
    # inside the allowance read as it is; a little past it refused
    nearly = tmp_path / "nearly.wav"
    nearly.write_bytes(raw[: len(raw) - int(DECODE_SHORTFALL_MAX_S * layout.bytes_per_s / 2)])
    assert load_recording(nearly, max_duration_s=3600.0).duration_s == pytest.approx(20.0,
                                                                                     abs=0.2)
    over = tmp_path / "over.wav"
    over.write_bytes(raw[: len(raw) - int(DECODE_SHORTFALL_MAX_S * layout.bytes_per_s * 1.5)])
    with pytest.raises(AudioDecodeError, match="cut short"):
        load_recording(over, max_duration_s=3600.0)
    # a writer that could not seek back leaves a placeholder for the length: ffmpeg, sox and
    # arecord writing to a pipe; read to the end of the file, on both paths
    for placeholder in (0xFFFFFFFF, 0x7FFFF000, 0x7FFFFF00, 0x80000000):
        streamed = bytearray(raw[: len(raw) // 2])
        at = streamed.index(b"data")
        streamed[at + 4:at + 8] = placeholder.to_bytes(4, "little")
        piped = tmp_path / "piped.wav"
        piped.write_bytes(bytes(streamed))
        assert wav_layout(piped).missing_bytes == 0, hex(placeholder)
        assert load_recording(piped, max_duration_s=3600.0).duration_s == pytest.approx(
            10.0, abs=0.1)
        list(stream_blocks(open_stream(piped, max_duration_s=3600.0), 3600.0))


def test_a_wav_whose_writer_left_its_byte_rate_0_is_still_checked_for_a_cut(
        tmp_path: Path) -> None:
    """libsndfile opens a PCM WAV whose fmt chunk says 0 bytes a second; the length checks
    then measure by the sample rate times the block size."""
    from worker.audio import wav_layout

    whole = tmp_path / "whole.wav"
    sf.write(whole, tone(4.0, 8000), 8000, subtype="PCM_16")
    raw = bytearray(whole.read_bytes())
    at = raw.index(b"fmt ")
    raw[at + 16:at + 20] = bytes(4)                  # nAvgBytesPerSec
    cut = tmp_path / "cut.wav"
    cut.write_bytes(bytes(raw[: len(raw) // 2]))
    assert wav_layout(cut).bytes_per_s == 8000 * 2
    with pytest.raises(AudioDecodeError, match=r"lists 4\.0 s of audio, yet the file ends after"):
        load_recording(cut, max_duration_s=60.0)


def test_valid_wavs_with_something_after_their_data_are_read_whole(tmp_path: Path) -> None:
    """What follows a WAV's data chunk in files that are fine: a metadata chunk (tagging tools
    append ID3 or LIST chunks), an ID3 tag without chunk framing, zero padding (recorders
    that preallocate, sector padding), and a chunk after an odd-sized data chunk written
    without its pad byte. None is audio the header left out."""
    from worker.audio import wav_layout

    rate = 8000
    x = (0.1 * np.random.default_rng(1).standard_normal(rate * 3)).astype(np.float32)
    pcm = tmp_path / "pcm.wav"
    sf.write(pcm, x, rate, subtype="PCM_16")
    ulaw = tmp_path / "ulaw.wav"
    sf.write(ulaw, x, rate, subtype="ULAW")
    tails = {
        "chunk": (pcm, b"id3 " + (11).to_bytes(4, "little") + b"call 42 tag\x00"),
        "raw_id3": (pcm, b"ID3\x03\x00\x00" + bytes(range(1, 200)) * 60),
        "zeros": (ulaw, bytes(20_000)),              # 2.5 s worth of mu-law at 8 kHz
    }
    for name, (source, tail) in tails.items():
        path = _with_tail(source, tmp_path / f"{name}.wav", tail)
        assert wav_layout(path).unlisted_bytes == 0, name
        assert load_recording(path, max_duration_s=60.0).duration_s == pytest.approx(3.0), name
    # an 8-bit file of an odd number of samples whose writer left out the pad byte
    odd = tmp_path / "odd.wav"
    sf.write(odd, x[: rate - 1], rate, subtype="PCM_U8")
    raw = odd.read_bytes()
    at = raw.find(b"data")
    n = int.from_bytes(raw[at + 4:at + 8], "little")
    assert n % 2 == 1
    unpadded = raw[:at + 8 + n] + b"iXML" + (9000).to_bytes(4, "little") + b"<x/>" * 2250
    path = tmp_path / "unpadded.wav"
    path.write_bytes(unpadded[:4] + (len(unpadded) - 8).to_bytes(4, "little") + unpadded[8:])
    assert wav_layout(path).unlisted_bytes == 0
    assert load_recording(path, max_duration_s=60.0).duration_s == pytest.approx(
        (rate - 1) / rate)


def test_a_recording_gone_before_its_hash_fails_as_bad_input(tmp_path: Path) -> None:
    """Deleted between the decode and the hash (the streamed path hashes after both
    passes): an InputError with the reason, not an OSError the task reports by class name."""
    from worker.audio import recording_sha256

    with pytest.raises(AudioDecodeError, match="deleted or replaced while analysed"):
        recording_sha256(tmp_path / "gone.wav")


@pytest.mark.parametrize(("error", "raised"), [(errno.ESTALE, TransientError),
                                                (errno.EIO, TransientError),
                                                (errno.ETIMEDOUT, TransientError),
                                                (errno.ENOENT, AudioDecodeError),
                                                (errno.EACCES, AudioDecodeError)])
def test_a_storage_outage_is_retried_and_a_missing_file_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, raised: type) -> None:
    """A stale or unreachable network mount (NFS, SMB) fails the storage, not the recording:
    TransientError, so the task retries it; a missing or unreadable file fails the call. (An
    NFS server cannot be taken away here: the OS error is raised where the mount would.)"""
    from worker.audio import read_info

    path = tmp_path / "a.wav"
    sf.write(str(path), tone(1.0, 8000), 8000, subtype="PCM_16")

    def stat(self: Path, **_: object) -> os.stat_result:
        raise OSError(error, os.strerror(error), str(self))

    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(raised, match=os.strerror(error)) as info:
        read_info(path)
    assert ("storage unavailable" in str(info.value)) == (raised is TransientError)
    # a producer sizing time limits still gets no error: the task is sent with the defaults
    from worker.audio import probe_duration_s

    assert probe_duration_s(str(path)) is None


@pytest.mark.parametrize("subtype", ["OPUS", "VORBIS"])
def test_an_ogg_file_garbled_mid_way_fails_rather_than_stored_short(tmp_path: Path,
                                                                     subtype: str) -> None:
    """An Ogg file whose middle third is overwritten decodes up to the damage and stops, with
    no error from libsndfile, while its header (the last page) still gives the whole length:
    the call was stored as done with the rest of it lost. Both decode paths fail it now."""
    from worker.segmentation import SegmentationConfig
    from worker.stream import streamed_spans
    from worker.vad import VadConfig

    full = tmp_path / "full.ogg"
    noise = np.random.default_rng(0).standard_normal((16000 * 5, 2)) * 0.1
    sf.write(str(full), noise.astype(np.float32), 16000, format="OGG", subtype=subtype)
    data = full.read_bytes()
    third = len(data) // 3
    path = tmp_path / "garbled.ogg"
    path.write_bytes(data[:third] + np.random.default_rng(1).bytes(third) + data[2 * third:])
    # what libsndfile does with it: the header's 5 s, far fewer samples decoded, no error
    assert sf.info(str(path)).frames == 16000 * 5
    assert sf.read(str(path))[0].shape[0] < 16000 * 4
    # refused by the page whose checksum fails, before any decode; the length check behind
    # it (decoding stopped short of the header's length) is the second guard
    with pytest.raises(AudioDecodeError, match=r"garbled.ogg: Ogg page \d+ \(byte \d+\) is "
                                               r"damaged \(its checksum does not match\)"):
        load_recording(path, MAX_S)
    with pytest.raises(AudioDecodeError, match="is damaged"):
        open_stream(path, MAX_S)
    with pytest.raises(AudioDecodeError, match=r"garbled.ogg: decoding stopped at \d\.\d s of "
                                               r"the 5\.0 s its header states"):
        check_decode_complete(path, "OGG", sf.info(str(path)).frames,
                              sf.read(str(path))[0].shape[0], 16000)
    # the intact file decodes whole on both paths
    assert load_recording(full, MAX_S).duration_s == pytest.approx(5.0)
    assert streamed_spans(open_stream(full, MAX_S), MAX_S, VadConfig(),
                          SegmentationConfig()).source_frames == 16000 * 5


@pytest.mark.parametrize("subtype", ["OPUS", "VORBIS"])
def test_a_small_damage_in_a_long_ogg_file_fails_the_streamed_decode_too(
        tmp_path: Path, subtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 garbled bytes in a file of several blocks: the decoder lost a page and returned full
    blocks with what followed moved earlier, and soundfile's seek after each read decoded
    about a second twice, so the streamed decode matched the header's length and the call was
    stored as done, its later segments a second early (a review). Read on without seeking,
    it comes up short, as the whole-file decode always did."""
    from worker.segmentation import SegmentationConfig
    from worker.stream import streamed_spans
    from worker.vad import VadConfig

    full = tmp_path / "full.ogg"
    noise = np.random.default_rng(0).standard_normal((16000 * 30, 2)) * 0.1
    sf.write(str(full), noise.astype(np.float32), 16000, format="OGG", subtype=subtype)
    data = bytearray(full.read_bytes())
    at = int(len(data) * 0.3)
    data[at:at + 64] = np.random.default_rng(1).bytes(64)
    path = tmp_path / "damaged.ogg"
    path.write_bytes(bytes(data))
    with pytest.raises(AudioDecodeError, match="is damaged"):
        load_recording(path, MAX_S)
    # the streamed decode's own guard, behind the page check: read on without seeking
    monkeypatch.setattr("worker.audio.check_ogg_pages", lambda path, info: None)
    with pytest.raises(AudioDecodeError, match=r"damaged.ogg: decoding stopped at \d+\.\d s "
                                               r"of the 30\.0 s its header states"):
        streamed_spans(open_stream(path, MAX_S), MAX_S, VadConfig(), SegmentationConfig())


@pytest.mark.parametrize("subtype", ["OPUS", "VORBIS"])
def test_a_damaged_first_or_last_ogg_page_fails_rather_than_shifting_every_time(
        tmp_path: Path, subtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte flipped in an Ogg file's first audio page: the decoder skips the page, and the
    length libsndfile states shrinks with it, so the length check passed and every
    utterance was stored seconds early (a review: 2.5 s of a Vorbis call); the same for the
    last page. The page's checksum fails it. An upload cut short inside its last page, and
    a tag after the last page, are read as before."""
    full = tmp_path / "full.ogg"
    sf.write(str(full), tone(20.0, 16000), 16000, format="OGG", subtype=subtype)
    data = full.read_bytes()
    starts = [i for i in range(len(data) - 3) if data[i:i + 4] == b"OggS"]
    for name, page in (("first", 2), ("last", len(starts) - 1)):
        body = starts[page] + 27 + data[starts[page] + 26] + 5   # inside the page's audio
        damaged = bytearray(data)
        damaged[body] ^= 0x5A
        path = tmp_path / f"{name}.ogg"
        path.write_bytes(bytes(damaged))
        for decode in (load_recording, open_stream):
            with pytest.raises(AudioDecodeError, match=rf"{name}.ogg: Ogg page {page} "
                                                       rf"\(byte {starts[page]}\) is damaged"):
                decode(path, MAX_S)
    # a page's capture pattern broken: the pages after it are found, read a few bytes at a
    # time (the rest of the file was read at once, a review)
    broken = bytearray(data)
    broken[starts[3]] = 0
    (tmp_path / "sync.ogg").write_bytes(bytes(broken))
    monkeypatch.setattr("worker.audio.SCAN_CHUNK_BYTES", 7)
    with pytest.raises(AudioDecodeError, match=rf"Ogg page 3 \(byte {starts[3]}\) is damaged"):
        load_recording(tmp_path / "sync.ogg", MAX_S)
    monkeypatch.undo()
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(data[:starts[-1] + 200])                    # inside the last page
    assert load_recording(cut, MAX_S).duration_s > 15.0
    tagged = tmp_path / "tagged.ogg"
    tagged.write_bytes(data + b"TAG" + bytes(125))
    assert load_recording(tagged, MAX_S).duration_s == pytest.approx(20.0, abs=0.05)


def test_the_ogg_page_checksum_is_ogg_s_crc() -> None:
    """Ogg's CRC-32 (MSB first, init 0, no final xor) through zlib's reflected one: the
    standard check value of CRC-32/MPEG-2's polynomial without its init and final xor
    (CRC-32/CKSUM's register before its length and inversion) for '123456789'."""
    assert ogg_page_crc(b"") == 0
    assert ogg_page_crc(b"123456789") == 0x89A1897F


def test_a_flac_whose_header_gives_no_length_names_the_repair(tmp_path: Path) -> None:
    """A FLAC written to a pipe by a streaming encoder has 0 total samples in its header;
    libsndfile then reports 2**63-1 frames, and the call was refused as 10**15 s long (a
    producer sized its time limit by that length). It cannot be streamed either (libsndfile
    seeks after each read), so it fails with the repair, and a producer gets no length."""
    from worker.audio import SF_COUNT_MAX, probe_duration_s

    path = tmp_path / "piped.flac"
    sf.write(str(path), tone(5.0, 8000, channels=2), 8000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    streaminfo = 8                       # after "fLaC" and the metadata block header
    data[streaminfo + 13] &= 0xF0        # total samples: 36 bits from the low nibble of byte 13
    data[streaminfo + 14:streaminfo + 18] = bytes(4)
    path.write_bytes(bytes(data))
    assert sf.info(str(path)).frames == SF_COUNT_MAX
    for decode in (lambda: load_recording(path, MAX_S), lambda: open_stream(path, MAX_S)):
        with pytest.raises(AudioDecodeError, match=r"FLAC header gives no length.*re-encode"):
            decode()
    assert probe_duration_s(str(path)) is None


@pytest.mark.parametrize(("fmt", "subtype", "name"), [
    ("RF64", "PCM_16", "big.wav"), ("W64", "PCM_16", "call.w64"),
    ("AIFF", "PCM_16", "call.aiff"), ("AU", "ULAW", "call.au"), ("NIST", "PCM_16", "call.nist"),
    ("NIST", "ULAW", "ulaw.nist")])
def test_a_cut_rf64_wave64_aiff_au_or_nist_file_is_refused_not_half_analysed(
        tmp_path: Path, fmt: str, subtype: str, name: str) -> None:
    """libsndfile reads these containers up to the end of the file without a word: a copy
    that stopped half-way was analysed for its first half and stored as done (a review).
    RF64 is what a recorder writes past 4 GB, still named .wav; Sun .au is often mu-law."""
    whole = tmp_path / name
    sf.write(whole, tone(20.0, 8000, channels=2), 8000, format=fmt, subtype=subtype)
    raw = whole.read_bytes()
    assert load_recording(whole, MAX_S).duration_s == pytest.approx(20.0)
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(raw[: len(raw) // 2])
    for decode in (load_recording, open_stream):
        with pytest.raises(AudioDecodeError, match=rf"its {fmt} header gives the file as "
                                                   rf"{len(raw)} bytes, yet it holds "
                                                   rf"{len(raw) // 2} \(~10\.0 s of audio "
                                                   r"missing\): cut short"):
            decode(cut, MAX_S)
    # a few samples short (a writer's end trimming) is read as it is
    nearly = tmp_path / f"nearly-{name}"
    nearly.write_bytes(raw[: len(raw) - 200])
    assert load_recording(nearly, MAX_S).duration_s == pytest.approx(20.0, abs=0.1)


def test_flac_files_joined_end_to_end_are_refused_and_a_trailing_tag_is_read(
        tmp_path: Path) -> None:
    """Two FLAC files joined with cat: libsndfile decoded the length the first one's header
    states, and the join was stored as the first call, the second lost (a review). A FLAC
    with an ID3v1 tag, padding or junk after its last frame failed the streamed decode
    (libFLAC read on into it: "lost sync"), which every FLAC over 10 minutes takes, while
    the whole-file decode read it (a review)."""
    part = tmp_path / "part.flac"
    sf.write(part, tone(3.0, 16000, channels=2), 16000, format="FLAC", subtype="PCM_16")
    joined = tmp_path / "joined.flac"
    joined.write_bytes(part.read_bytes() * 2)
    for decode in (load_recording, open_stream):
        with pytest.raises(AudioDecodeError, match=r"joined\.flac holds 2 FLAC streams"):
            decode(joined, MAX_S)
    for name, trailer in (("id3v1", b"TAG" + bytes(125)), ("zeros", bytes(65536)),
                          ("junk", np.random.default_rng(0).bytes(4096))):
        tagged = tmp_path / f"{name}.flac"
        tagged.write_bytes(part.read_bytes() + trailer)
        streamed = np.concatenate([b.samples for b in stream_blocks(open_stream(tagged, MAX_S),
                                                                    MAX_S, block_frames=4096)])
        assert (streamed.shape[0] == load_recording(tagged, MAX_S).channels[0].size
                == 3 * ANALYSIS_SAMPLE_RATE)


def test_an_mp3_whose_id3v2_tag_states_too_large_a_size_fails(tmp_path: Path) -> None:
    """A tag 5,000 bytes too long: the decoder skipped that much of the audio (and the Xing
    frame in it, which could have told the length), and every utterance was stored 1.95 s
    early (a review). A tag of its true size, 300 KB of cover art full of 0xFF bytes, is
    read as before."""
    plain = tmp_path / "plain.mp3"
    sf.write(plain, tone(20.0, 16000, channels=2), 16000, format="MP3",
             subtype="MPEG_LAYER_III")
    art = np.random.default_rng(2).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    frame = b"APIC" + (len(art) + 14).to_bytes(4, "big") + b"\0\0\0image/jpeg\0\x03\0" + art

    def tagged(size: int) -> bytes:
        safe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
        return b"ID3\x03\x00\x00" + safe + frame + plain.read_bytes()

    good, bad = tmp_path / "art.mp3", tmp_path / "wrong.mp3"
    good.write_bytes(tagged(len(frame)))
    bad.write_bytes(tagged(len(frame) + 5000))
    assert load_recording(good, MAX_S).duration_s == pytest.approx(
        load_recording(plain, MAX_S).duration_s)
    for decode in (load_recording, open_stream):
        with pytest.raises(AudioDecodeError, match=r"wrong\.mp3: its ID3v2 tag states a size "
                                                   r"that runs 5000 bytes into the audio"):
            decode(bad, MAX_S)


@pytest.mark.parametrize("rates", [(16000, 16000), (8000, 48000)])
def test_ogg_files_joined_end_to_end_are_refused(tmp_path: Path, rates: tuple[int, int]) -> None:
    """Two Opus files joined with cat (a chained Ogg file): libsndfile decodes the first
    stream only, so the join of two files of one rate was stored as the first call, the
    second lost without a word; of two rates, it was refused as a FLAC 'written to a pipe'
    (a review). One file, and a Vorbis file, are read as before."""
    parts = []
    for i, rate in enumerate(rates):
        parts.append(tmp_path / f"part-{i}.opus")
        sf.write(parts[-1], tone(2.0, rate), rate, format="OGG", subtype="OPUS")
    joined = tmp_path / "joined.opus"
    joined.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())
    for decode in (load_recording, open_stream):
        with pytest.raises(AudioDecodeError, match=r"joined\.opus holds chained Ogg streams"):
            decode(joined, MAX_S)
    assert load_recording(parts[0], MAX_S).duration_s == pytest.approx(2.0, abs=0.05)
    vorbis = tmp_path / "one.ogg"
    sf.write(vorbis, tone(30.0, 16000), 16000, format="OGG", subtype="VORBIS")
    assert load_recording(vorbis, MAX_S).duration_s == pytest.approx(30.0, abs=0.05)


def test_libsndfile_refused_a_read_by_the_os_is_a_storage_outage(tmp_path: Path) -> None:
    """libsndfile's SF_ERR_SYSTEM is the OS refusing a read or seek (EIO from a failing network
    mount mid-decode): retried, not the recording failed for good. Every other code (a
    malformed or truncated file) is the recording's."""
    from worker.audio import SFE_SYSTEM, decode_failure

    path = tmp_path / "a.wav"
    outage = decode_failure(path, sf.LibsndfileError(SFE_SYSTEM), "bad file")
    assert isinstance(outage, TransientError) and "storage unavailable" in str(outage)
    corrupt = decode_failure(path, sf.LibsndfileError(3), "bad file")   # SF_ERR_MALFORMED_FILE
    assert isinstance(corrupt, AudioDecodeError) and str(corrupt) == "bad file"


EIO_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static ssize_t (*real_read)(int, void *, size_t);
/* read() of a file whose name holds "flaky" fails with EIO past byte EIO_AFTER */
ssize_t read(int fd, void *buf, size_t n) {
    if (!real_read) real_read = dlsym(RTLD_NEXT, "read");
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len > 0 && getenv("EIO_AFTER")) {
        target[len] = 0;
        if (strstr(target, "flaky") && lseek(fd, 0, SEEK_CUR) >= atol(getenv("EIO_AFTER"))) {
            errno = EIO;
            return -1;
        }
    }
    return real_read(fd, buf, n);
}
"""

EIO_PROBE = """
import sys
from pathlib import Path
from worker.audio import load_recording, open_stream, stream_blocks
path = Path(sys.argv[1])
for name, decode in (("whole", lambda: load_recording(path, 3600.0)),
                     ("stream", lambda: list(stream_blocks(open_stream(path, 3600.0), 3600.0)))):
    try:
        decode()
        print(name, "decoded")
    except Exception as e:
        print(name, type(e).__name__, str(e).replace(chr(10), " "))
"""


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_a_read_error_mid_decode_is_retried_not_failed(tmp_path: Path, suffix: str) -> None:
    """A network mount that fails part-way through a call (EIO from read(2), injected with an
    LD_PRELOAD shim into a real decode by libsndfile): both decode paths raise TransientError,
    so the task retries; the call was failed for good as 'truncated or corrupt'."""
    import shutil
    import subprocess
    import sys

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        from tests.conftest import unavailable

        unavailable("no C compiler to build the EIO shim (apt-get install gcc libc6-dev)")
    shim = tmp_path / "eio.so"
    source = tmp_path / "eio.c"
    source.write_text(EIO_SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"],
                   check=True, capture_output=True)
    path = tmp_path / f"flaky{suffix}"
    sf.write(str(path), tone(60.0, 8000, channels=2), 8000, subtype="PCM_16")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, LD_PRELOAD=str(shim), EIO_AFTER=str(path.stat().st_size // 3),
               PYTHONPATH=str(root))
    result = subprocess.run([sys.executable, "-c", EIO_PROBE, str(path)], env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    lines = result.stdout.strip().splitlines()
    assert [line.split(" ", 2)[:2] for line in lines] == [["whole", "TransientError"],
                                                          ["stream", "TransientError"]], lines
    assert all("storage unavailable" in line for line in lines)
    # without the fault the same file decodes on both paths
    del env["EIO_AFTER"]
    result = subprocess.run([sys.executable, "-c", EIO_PROBE, str(path)], env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["whole", "decoded", "stream", "decoded"]


def test_the_mp3_frame_walk_skips_junk_that_looks_like_a_free_format_frame(
        tmp_path: Path) -> None:
    """A sync word in junk before the frames (a tag) whose header reads as free format ended
    the walk with 'cannot tell', so an MP3 read short went unchecked; a real free-format or
    layer II stream still cannot be told (None)."""
    from worker.audio import mp3_layer3_frames

    path = tmp_path / "a.mp3"
    sf.write(str(path), tone(3.0, 16000), 16000, format="MP3", subtype="MPEG_LAYER_III")
    frames = path.read_bytes()
    counted = mp3_layer3_frames(frames)
    assert counted is not None and counted >= 3 * 16000
    free_format_in_junk = b"TAG?" + b"\xff\xe3\x04\x00" + bytes(50)   # MPEG-2 layer III, free
    assert mp3_layer3_frames(free_format_in_junk + frames) == counted
    layer2 = (b"\xff\xfd\x94\x00" + bytes(413)) * 100                 # MPEG-1 layer II frames
    assert mp3_layer3_frames(layer2) is None
    assert mp3_layer3_frames((b"\xff\xe3\x04\x00" + bytes(100)) * 10) is None  # free format


def test_samples_are_checked_for_non_finite_values_and_peaks_either_side() -> None:
    """The check reads the decoded call's maximum and minimum (no copies of it): a NaN or an
    infinity anywhere, and a peak past the limit either side, still fail it by name."""
    ok = np.full((1000, 2), 0.5, dtype=np.float32)
    check_samples(ok, "ok.wav", "FLOAT")
    check_samples(np.zeros((0, 2), dtype=np.float32), "empty.wav", "FLOAT")
    for bad in (np.nan, np.inf, -np.inf):
        data = ok.copy()
        data[700, 1] = bad
        with pytest.raises(AudioDecodeError, match=r"bad.wav contains NaN or infinite samples "
                                                   r"\(after 3.0 s\)"):
            check_samples(data, "bad.wav", "FLOAT", at_s=3.0)
    for peak in (MAX_SAMPLE_PEAK + 0.5, -(MAX_SAMPLE_PEAK + 0.5)):
        data = ok.copy()
        data[10, 0] = peak
        with pytest.raises(AudioDecodeError, match=r"has samples up to 2.5.*integer scale"):
            check_samples(data, "loud.wav", "FLOAT")
        # a lossy codec's peaks: damaged frames as well as float input at integer scale
        with pytest.raises(AudioDecodeError, match=r"loud.mp3 decodes to samples up to 2.5, "
                                                   r"past the \+-1.0 full scale of its "
                                                   r"MPEG_LAYER_III audio: damaged frames, or "):
            check_samples(data, "loud.mp3", "MPEG_LAYER_III")


def test_a_garbled_mp3_fails_as_corrupt_on_either_path(tmp_path: Path) -> None:
    """Copies of an MP3 with a few random bytes changed mid-file: the decoder either stops
    early, which was told it was a VBR file lacking the Xing/Info header it has, or decodes
    huge peaks, which was told it was a float file written at integer scale (a review). Each
    now fails naming damage, whole and streamed alike."""
    from worker.segmentation import SegmentationConfig
    from worker.stream import streamed_spans
    from worker.vad import VadConfig

    rate = 16000
    noise = (0.3 * np.random.default_rng(1).standard_normal(rate * 20)).astype(np.float32)
    intact = tmp_path / "intact.mp3"
    sf.write(intact, noise, rate, format="MP3", subtype="MPEG_LAYER_III")
    data = intact.read_bytes()
    assert b"Xing" in data[:200] or b"Info" in data[:200]
    rng = np.random.default_rng(2)
    causes: set[str] = set()
    for copy in range(40):
        garbled = bytearray(data)
        for at in rng.integers(len(data) // 10, len(data) * 9 // 10, size=rng.integers(1, 40)):
            garbled[at] = int(rng.integers(0, 256))
        path = tmp_path / f"garbled-{copy}.mp3"
        path.write_bytes(bytes(garbled))
        messages = []
        for streamed in (False, True):
            try:
                if streamed:
                    streamed_spans(open_stream(path, MAX_S), MAX_S, VadConfig(),
                                   SegmentationConfig())
                else:
                    load_recording(path, MAX_S)
            except AudioDecodeError as e:
                messages.append(str(e))
        if not messages:
            continue        # damage the decoder passes over (a changed bit of a spectrum)
        assert len(messages) == 2, messages   # both paths judge a file alike
        for message in messages:
            assert "Xing" not in message and "written at integer scale" not in message, message
            assert "damaged frames" in message or "corrupt after that point" in message, message
        causes.add("peaks" if "decodes to samples up to" in messages[0] else "stopped")
    assert causes == {"peaks", "stopped"}


def test_a_file_the_worker_may_not_read_fails_its_call_saying_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libsndfile reports any failed open as SF_ERR_SYSTEM, read as a storage outage: a file
    of mode 0640 on a share, which the image's uid 10001 may not read, was retried six times
    as 'storage unavailable' (a review). Opened first in Python, it is a permission error.
    (Simulated: the tests run as root, whom file modes do not stop.)"""
    path = tmp_path / "locked.wav"
    sf.write(path, tone(1.0, 8000), 8000)
    real_open = Path.open

    def refuse(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(AudioDecodeError, match=r"cannot open: locked.wav: Permission denied "
                                               r"\(this worker runs as uid \d+: the "
                                               r"recordings must be readable to it\)"):
        load_recording(path, MAX_S)


def _decode_both_ways(path: Path) -> list[str]:
    """The AudioDecodeError messages of decoding ``path`` whole and streamed ('' where a path
    decoded it)."""
    from worker.segmentation import SegmentationConfig
    from worker.stream import streamed_spans
    from worker.vad import VadConfig

    messages = []
    for streamed in (False, True):
        try:
            if streamed:
                streamed_spans(open_stream(path, MAX_S), MAX_S, VadConfig(), SegmentationConfig())
            else:
                load_recording(path, MAX_S)
            messages.append("")
        except AudioDecodeError as e:
            messages.append(str(e))
    return messages


def _as_vbri(data: bytes, frames: int) -> bytes:
    """An MP3 (libsndfile's, mono MPEG-2 layer III) whose first frame states ``frames`` in a
    VBRI header (Fraunhofer's: 32 bytes after the frame header) instead of its Xing one."""
    import struct

    xing = data.index(b"Xing")
    first = bytearray(data)
    first[xing:xing + 120] = bytes(120)
    first[36:36 + 26] = b"VBRI" + struct.pack(">HHHII", 1, 576, 75, len(data), frames) + \
        struct.pack(">HHHH", 0, 1, 2, 1)
    return bytes(first)


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 1), (44100, 2)])
def test_an_mp3_cut_short_fails_where_its_xing_info_or_vbri_header_states_more(
        tmp_path: Path, rate: int, channels: int) -> None:
    """An MP3 copy that stopped half-way decodes as its first half without a word, and was
    stored as done with half the call (a review: 17.9 s of 39.7 s). Where its first frame
    states the frame count (Xing, LAME's Info for CBR, or VBRI), both paths now fail it as
    cut short; cut by less than a quarter second, or without such a header, it decodes."""
    from worker.audio import mp3_layer3_frames

    noise = (0.3 * np.random.default_rng(0).standard_normal((rate * 20, channels)))
    full = tmp_path / "full.mp3"
    sf.write(full, noise.astype(np.float32), rate, format="MP3", subtype="MPEG_LAYER_III")
    data = full.read_bytes()
    assert data.find(b"Xing", 0, 40) > 0                    # libsndfile writes one
    assert _decode_both_ways(full) == ["", ""]
    cut = tmp_path / "upload-cut.mp3"
    for name, whole in (("Xing", data), ("Info", data.replace(b"Xing", b"Info", 1))):
        cut.write_bytes(whole[:len(whole) // 2])
        for message in _decode_both_ways(cut):
            assert re.fullmatch(rf"upload-cut\.mp3: its {name} header states 20\.\d s of MPEG "
                                r"frames, yet the file holds 10\.\d s: cut short \(a copy or "
                                r"upload that did not finish\?\)\. Send the whole recording "
                                "again", message), message
    # a few hundredths of a second short: within the encoder's delay and padding
    bytes_per_s = len(data) / 20.0
    cut.write_bytes(data[:len(data) - int(0.05 * bytes_per_s)])
    assert _decode_both_ways(cut) == ["", ""]
    # a Xing header without its frames flag, or a first frame without the tag, states no
    # length: such a file is judged by its frames alone, as before
    at = data.index(b"Xing")
    for unstated in (data[:at + 7] + bytes([data[at + 7] & 0xFE]) + data[at + 8:],
                     data[:at] + bytes(4) + data[at + 4:]):
        cut.write_bytes(unstated[:len(data) // 2])
        assert not any("cut short" in m for m in _decode_both_ways(cut))
    if channels == 1 and rate < 32000:                       # the VBRI layout built here
        # libsndfile (mpg123) sizes a VBRI file from its first frame, and stops there: the
        # check is given the decoded count that the frames would give
        import io

        from worker.audio import Mp3StatedLength, check_mp3_length, mp3_stated_length

        held = mp3_layer3_frames(data)
        assert held is not None
        vbri = _as_vbri(data, held // 576 - 1)
        with io.BytesIO(vbri) as fh:
            assert mp3_stated_length(fh) == Mp3StatedLength("VBRI", held // 576 - 1, 576, rate)
        cut.write_bytes(vbri)
        check_mp3_length(cut, "MP3", 0, held - 1152, rate)
        cut.write_bytes(vbri[:len(vbri) // 2])
        cut_held = mp3_layer3_frames(cut.read_bytes())
        assert cut_held is not None
        with pytest.raises(AudioDecodeError, match=r"its VBRI header states 20\.\d s of MPEG "
                                                   r"frames, yet the file holds 10\.\d s: cut"):
            check_mp3_length(cut, "MP3", 0, cut_held - 1152, rate)


def test_random_bytes_named_mp3_say_they_are_not_a_decodable_mp3(tmp_path: Path) -> None:
    """libsndfile fails random bytes named .mp3 with 'File does not exist or is not a
    regular file (possibly a pipe?)', of a file that is there: the reason now says what the
    file is not."""
    path = tmp_path / "junk.mp3"
    path.write_bytes(np.random.default_rng(0).bytes(20_000))
    for decode in (lambda: load_recording(path, MAX_S), lambda: open_stream(path, MAX_S),
                   lambda: load_mono(path)):
        with pytest.raises(AudioDecodeError, match=r"junk\.mp3 is not a decodable MP3 file: "
                                                   "the decoder found no MPEG audio in it") as e:
            decode()
        assert "possibly a pipe" not in str(e.value) and "does not exist" not in str(e.value)
    with pytest.raises(AudioDecodeError, match="Re-export the recording and send it again"):
        load_recording(path, MAX_S)


def test_the_mp3_checks_read_the_file_and_never_map_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read error of a network share mapped into memory kills the worker with SIGBUS: the
    frame walk reads the file a block at a time (seek/read), and counts across the blocks'
    edges what it counts in the bytes whole."""
    import mmap

    import worker.audio as audio

    path = tmp_path / "a.mp3"
    sf.write(path, tone(20.0, 8000), 8000, format="MP3", subtype="MPEG_LAYER_III")
    data = path.read_bytes()
    counted = audio.mp3_layer3_frames(data)
    assert counted is not None and counted >= 20 * 8000

    def no_mmap(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the file was mapped into memory")

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    assert load_recording(path, MAX_S).duration_s == pytest.approx(20.0, abs=0.1)
    junk = np.random.default_rng(3).bytes(12_345)
    path.write_bytes(junk + data + junk)
    monkeypatch.setattr(audio, "MP3_READ_BLOCK", 5000, raising=False)   # many blocks
    with path.open("rb") as fh:
        assert audio.mp3_layer3_frames(fh) == counted      # junk and frames across edges
