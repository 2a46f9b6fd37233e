"""The decoding edge: every read of an audio file happens here.

``load_recording`` checks the path against the input roots, decodes through soundfile
(libsndfile: WAV PCM/float/G.711, FLAC, Ogg Vorbis/Opus, MP3), and resamples each channel
to :data:`ANALYSIS_SAMPLE_RATE` with soxr. ``open_stream`` + ``stream_blocks`` give the
same samples block by block, for long recordings (docs/streaming.md). Every failure becomes
an :class:`InputError` subclass whose message says what was wrong, so the task can fail
that recording alone.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from worker.constants import (
    ANALYSIS_SAMPLE_RATE,
    DUAL_MONO_GAIN_RESIDUAL_DB,
    DUAL_MONO_MAX_DIFF,
    DUAL_MONO_MAX_GAIN_DB,
    DUAL_MONO_MIN_CORRELATION,
    DUAL_MONO_RESIDUAL_DB,
    ESTIMATED_LENGTH_FORMATS,
    FLOAT_SUBTYPES,
    MAX_CHANNELS,
    MAX_INPUT_SAMPLE_RATE,
    MAX_SAMPLE_PEAK,
    MIN_INPUT_SAMPLE_RATE,
    MP3_BITRATES_BPS,
    MP3_LAYER3_KBPS,
    MP3_SAMPLE_RATES,
    MP3_SHORT_READ_S,
)
from worker.errors import (
    AudioDecodeError,
    InputNotAllowedError,
    PayloadError,
    TransientError,
    UnsupportedAudioError,
)
from worker.uris import local_path_text, uri_scheme

Audio = npt.NDArray[np.float32]

STREAM_BLOCK_FRAMES = 1 << 16
"""Source frames decoded per block by :func:`stream_blocks`: 8 s at 8 kHz, 1.4 s at 48 kHz;
512 KB of stereo float32 whatever the rate, and large enough that the per-block Python
overhead is negligible next to the decoding."""


@dataclass(frozen=True)
class Recording:
    """A decoded recording: one float32 array per channel at ANALYSIS_SAMPLE_RATE."""

    path: Path
    channels: tuple[Audio, ...]
    source_sample_rate: int
    duration_s: float
    format: str
    subtype: str
    sha256: str

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def sample_rate(self) -> int:
        return ANALYSIS_SAMPLE_RATE


def resolve_input(uri: str, input_roots: Sequence[Path]) -> Path:
    """Turn a path or ``file://`` URI into a real path inside one of ``input_roots``.

    Symlinks are resolved first, so a link pointing out of the roots is refused too.
    """
    if not uri or len(uri) > 4096:
        raise InputNotAllowedError("recording URI is empty or longer than 4096 characters")
    try:
        raw = local_path_text(uri)
    except PayloadError as e:
        raise InputNotAllowedError(str(e)) from e
    if raw is None:
        raise InputNotAllowedError(f"URI scheme {uri_scheme(uri)!r} is not enabled; use a path "
                                   "or file:// URI under CALLMOOD_INPUT_ROOTS")
    if "\x00" in raw:
        raise InputNotAllowedError("recording path contains a NUL byte")
    path = Path(raw).expanduser().resolve()
    for root in input_roots:
        if path.is_relative_to(root.resolve()):
            return path
    roots = ", ".join(str(r) for r in input_roots)
    raise InputNotAllowedError(f"{path} is outside the input roots ({roots}); "
                               "set CALLMOOD_INPUT_ROOTS to allow its directory")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes (identifies a recording across renames)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recording_sha256(path: Path) -> str:
    """:func:`file_sha256` of a recording being analysed; AudioDecodeError when it can no
    longer be read (deleted or replaced between the decode and the hash), TransientError when
    its storage fails (:func:`file_access_error`)."""
    try:
        return file_sha256(path)
    except OSError as e:
        raise file_access_error(path, e, "read again to hash (deleted or replaced while "
                                         "analysed?)") from e


def resample(x: Audio, source_rate: int, target_rate: int = ANALYSIS_SAMPLE_RATE) -> Audio:
    """soxr high-quality resampling of a 1-D float32 signal."""
    if source_rate == target_rate:
        return np.ascontiguousarray(x, dtype=np.float32)
    y = soxr.resample(np.ascontiguousarray(x, dtype=np.float32), source_rate, target_rate,
                      quality="HQ")
    return np.asarray(y, dtype=np.float32)


STORAGE_OUTAGE_ERRNOS: Final[frozenset[int]] = frozenset({
    errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.ENOTCONN, errno.EHOSTDOWN,
    errno.EHOSTUNREACH, errno.ECONNRESET, errno.ECONNABORTED, errno.ENETDOWN,
    errno.ENETUNREACH})
"""OS errors that say the storage, not the recording, failed: a network mount (NFS, SMB) that
went stale, timed out or lost its server. The call is retried (TransientError) instead of
failed for good; a missing or unreadable file (ENOENT, EACCES) still fails it."""


SFE_SYSTEM: Final[int] = 2
"""libsndfile's error code for a read or seek of the file that the OS refused (SF_ERR_SYSTEM):
the storage failed, not the recording. Truncated, cut or garbled WAV, FLAC, Ogg and MP3 files
give other codes (malformed, decoder lost sync, internal error; checked 2026-12-06)."""

SF_COUNT_MAX: Final[int] = 2**63 - 1
"""libsndfile's frame count for a file whose length it could not learn: a FLAC whose header
says 0 samples (written to a pipe by a streaming encoder), or an Ogg file whose last page could
not be read."""

DECODE_SHORTFALL_MAX_S: Final[float] = 0.25
"""Seconds an Ogg or FLAC file may decode short of the length its header states, or a WAV
file's data chunk run past the end of the file, before the call fails as corrupt or cut
short: libsndfile's length matched the decoded count exactly on 300 corpus Opus files and on
Vorbis, Opus and FLAC written at 8-48 kHz (2026-12-06); a quarter second leaves room for
another writer's end trimming. An Ogg file garbled mid-way decodes only up to the damage (a
review's 5 s file: 2.5 s), and a WAV copy that stopped half-way reads as its first half: both
were stored as done, the rest lost."""

EXACT_LENGTH_FORMATS: Final = ("OGG", "FLAC")
"""Formats whose header length libsndfile takes from the file itself (Ogg: the last page's
granule position; FLAC: STREAMINFO), so the decoded length must reach it."""


SFE_BAD_FILE: Final[int] = 7
"""libsndfile's error code for 'File does not exist or is not a regular file (possibly a
pipe?)', which it also gives (1.2.2) for a file named .mp3 in which the MPEG decoder finds no
audio: random bytes named .mp3 were failed as if the file were missing or a pipe."""

SUFFIX_FORMATS: Final[dict[str, str]] = {
    ".mp3": "MP3", ".wav": "WAV", ".flac": "FLAC", ".ogg": "Ogg", ".oga": "Ogg",
    ".opus": "Ogg Opus"}
"""The format a file's name claims, for the message when libsndfile cannot open it."""


def unreadable_as_named(path: Path, error: Exception) -> str | None:
    """What to say instead of libsndfile's misleading reason for an existing regular file it
    failed to open with :data:`SFE_BAD_FILE`: not a decodable file of the format its name
    claims (:data:`SUFFIX_FORMATS`). None for any other failure."""
    if not (isinstance(error, sf.LibsndfileError) and error.code == SFE_BAD_FILE
            and path.is_file()):
        return None
    claimed = SUFFIX_FORMATS.get(path.suffix.lower(), "audio")
    audio = "MPEG audio" if claimed == "MP3" else f"{claimed} audio"
    return (f"not a decodable {claimed} file: the decoder found no {audio} in it (damaged, or "
            f"another kind of file named {path.suffix or 'so'}?)")


def decode_failure(path: Path, error: Exception, message: str) -> TransientError | AudioDecodeError:
    """The error for libsndfile failing on ``path``: TransientError when the OS refused it a
    read (:data:`SFE_SYSTEM`: a network mount that failed mid-decode; retried), else
    AudioDecodeError(``message``)."""
    if isinstance(error, sf.LibsndfileError) and error.code == SFE_SYSTEM:
        return TransientError(f"storage unavailable: reading {path.name} failed while decoding "
                              f"(libsndfile: {error})")
    return AudioDecodeError(message)


def check_decoded_length(path: Path, fmt: str, header_frames: int, decoded_frames: int,
                         sample_rate: int) -> None:
    """AudioDecodeError when an Ogg or FLAC file (:data:`EXACT_LENGTH_FORMATS`) decoded more
    than :data:`DECODE_SHORTFALL_MAX_S` short of the length its header states: the decoder
    stopped at damage mid-file, and the call would be stored as done without the rest."""
    if fmt not in EXACT_LENGTH_FORMATS or not 0 < header_frames < SF_COUNT_MAX:
        return
    if (header_frames - decoded_frames) / sample_rate > DECODE_SHORTFALL_MAX_S:
        raise AudioDecodeError(
            f"{path.name}: decoding stopped at {decoded_frames / sample_rate:.1f} s of the "
            f"{header_frames / sample_rate:.1f} s its header states: corrupt after that point? "
            "Re-export the recording and send it again")


def check_decode_complete(path: Path, fmt: str, header_frames: int, decoded_frames: int,
                          sample_rate: int) -> None:
    """AudioDecodeError when a decode of ``path`` stopped short of the audio the file holds:
    an MP3 whose frames hold more (:func:`check_mp3_length`) or an Ogg/FLAC file short of its
    header's length (:func:`check_decoded_length`). Every decode path calls this once."""
    check_mp3_length(path, fmt, header_frames, decoded_frames, sample_rate)
    check_decoded_length(path, fmt, header_frames, decoded_frames, sample_rate)


def file_access_error(path: Path, e: OSError | ValueError,
                      doing: str) -> TransientError | AudioDecodeError:
    """The error to raise for an OS error met while ``doing`` something with ``path``:
    TransientError for a storage outage (:data:`STORAGE_OUTAGE_ERRNOS`), AudioDecodeError
    otherwise (ValueError: a path the OS cannot take at all, e.g. an embedded NUL)."""
    reason = getattr(e, "strerror", None) or e
    if isinstance(e, OSError) and e.errno in STORAGE_OUTAGE_ERRNOS:
        return TransientError(f"storage unavailable: cannot {doing}: {path.name}: {reason}")
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
        reason = (f"{reason} (this worker runs as uid {os.getuid()}: the recordings must be "
                  "readable to it)")
    return AudioDecodeError(f"cannot {doing}: {path.name}: {reason}")


def read_info(path: Path) -> Any:
    """soundfile's header info, or AudioDecodeError naming what is wrong (TransientError
    when the storage holding it fails)."""
    try:
        size = path.stat().st_size
    except (OSError, ValueError) as e:
        raise file_access_error(path, e, "open") from e
    if not path.is_file():
        raise AudioDecodeError(f"{path.name} is not a regular file")
    if size == 0:
        raise AudioDecodeError(f"{path.name} is empty (0 bytes)")
    try:
        # opened here first: libsndfile reports any failed open as SF_ERR_SYSTEM, which reads
        # as a storage outage, so a file the worker may not read (mode 0640 on a share, the
        # image's uid 10001) was retried six times as 'storage unavailable' (a review)
        path.open("rb").close()
    except (OSError, ValueError) as e:
        raise file_access_error(path, e, "open") from e
    try:
        # paths go to soundfile as bytes: it encodes a str strictly, and a name in another
        # encoding than UTF-8 (surrogate escapes) would not open
        return sf.info(os.fsencode(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        supported = "WAV PCM/float/G.711, FLAC, Ogg Vorbis/Opus, MP3"
        # libsndfile's text starts "Error opening b'/the/path': " (the name is said already)
        detail = re.sub(r"^Error opening .*?: ", "", str(e))
        message = (f"{path.name} is not a readable audio file ({detail}); supported: "
                   f"{supported}. Re-export the recording and send it again")
        as_named = unreadable_as_named(path, e)
        if as_named is not None:
            message = (f"{path.name} is {as_named}. Re-export the recording and send it "
                       f"again (supported: {supported})")
        raise decode_failure(path, e, message) from e


def probe_duration_s(uri: str) -> float | None:
    """Duration from the header of a local path or ``file://`` URI; None if it cannot be read.
    For a format whose header only estimates it (MP3), the most the file's size allows
    (:func:`mp3_duration_range_s`): a VBR call opening loud reads far shorter than it lasts.

    For producers sizing a task's time limit: no input-root check (the worker does that) and
    no error (a file the producer cannot see is still sent, with the default limits).
    """
    try:
        raw = local_path_text(uri)
    except PayloadError:
        return None
    if raw is None:
        return None
    path = Path(raw)
    try:
        info = read_info(path)
        size = path.stat().st_size
    except (AudioDecodeError, TransientError, OSError):    # a storage outage too: no error
        return None
    if info.frames >= SF_COUNT_MAX:     # no length in the header: libsndfile's placeholder
        return None
    duration_s = float(info.duration)
    if str(info.format) in ESTIMATED_LENGTH_FORMATS and info.samplerate > 0:
        duration_s = max(duration_s, mp3_duration_range_s(size, int(info.samplerate))[1])
    return duration_s if duration_s > 0 else None


def mp3_duration_range_s(file_bytes: int, sample_rate: int) -> tuple[float, float]:
    """(shortest, longest) duration (s) an MP3 of ``file_bytes`` at ``sample_rate`` can have,
    at the highest and the lowest bitrate of :data:`MP3_BITRATES_BPS`."""
    low_bps, high_bps = next((low, high) for lowest_rate, low, high in MP3_BITRATES_BPS
                             if sample_rate >= lowest_rate)
    return 8 * file_bytes / high_bps, 8 * file_bytes / low_bps


def check_input(path: Path, max_duration_s: float, max_file_bytes: int | None = None) -> Any:
    """soundfile's header info of ``path`` once its size, rate, channels and (header)
    duration are within the limits; the InputError subclass saying which is not, otherwise."""
    info = read_info(path)
    if max_file_bytes is not None and path.stat().st_size > max_file_bytes:
        raise UnsupportedAudioError(f"{path.name} is {path.stat().st_size} bytes, over the "
                                    f"limit of {max_file_bytes} (CALLMOOD_MAX_FILE_BYTES)")
    rate = int(info.samplerate)
    if not MIN_INPUT_SAMPLE_RATE <= rate <= MAX_INPUT_SAMPLE_RATE:
        raise UnsupportedAudioError(f"sample rate {rate} Hz is out of range "
                                    f"({MIN_INPUT_SAMPLE_RATE}-{MAX_INPUT_SAMPLE_RATE} Hz)")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise UnsupportedAudioError(f"{info.channels} channels: a call recording has 1 (mono) "
                                    f"or {MAX_CHANNELS} (agent + customer)")
    check_wav_length(path, info)
    check_container_length(path, info)
    check_ogg_pages(path, info)
    check_single_flac_stream(path, info)
    check_mp3_tag(path, info)
    check_known_length(path, info)
    if str(info.format) in ESTIMATED_LENGTH_FORMATS:
        # MP3 headers report frames=0 or an estimate: the decoded length is what counts (both
        # decode paths check it); only a size too big even at the highest bitrate is refused
        shortest_s = mp3_duration_range_s(path.stat().st_size, rate)[0]
        if shortest_s > max_duration_s:
            raise UnsupportedAudioError(
                f"{path.name} lasts at least {shortest_s:.0f} s by its size, longer than the "
                f"limit of {max_duration_s:g} s (CALLMOOD_MAX_DURATION_S)")
    elif info.frames > 0 and info.frames / rate > max_duration_s:
        raise UnsupportedAudioError(f"{info.frames / rate:.0f} s is longer than the limit of "
                                    f"{max_duration_s:g} s (CALLMOOD_MAX_DURATION_S)")
    return info


SCAN_CHUNK_BYTES: Final[int] = 1 << 20
"""Bytes read per step by the scans of a whole file for a marker (:func:`flac_stream_starts`,
:func:`walk_ogg_pages` after a lost sync)."""


_BIT_REVERSED: Final[bytes] = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))
"""Each byte value with its bits in reverse order (:func:`ogg_page_crc`)."""


def ogg_page_crc(page: bytes) -> int:
    """The Ogg page checksum of ``page`` (its CRC field zeroed): CRC-32 of polynomial
    0x04C11DB7 taken most significant bit first, initial value 0, no final xor. zlib's
    CRC-32 is the same polynomial taken least significant bit first, so it runs in C on the
    bit-reversed bytes (initial register 0, its final xor undone) and its result is
    reversed back."""
    reflected = zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


@dataclass(frozen=True)
class OggPages:
    """What a walk over an Ogg file's pages found (:func:`walk_ogg_pages`)."""

    chained: bool = False
    """A stream begins after another one's pages: two files joined end to end."""
    damaged_page: int | None = None
    """Number (from 0) of the first page whose checksum does not match, or after which the
    pages lose their sync while another page follows."""
    damaged_at: int = 0
    """Byte offset of that page."""


def walk_ogg_pages(fh: BinaryIO) -> OggPages:
    """Walk an Ogg file (``fh``, binary, at its start) page by page, checking each page's
    checksum and where streams begin (read, not mapped: a read error of a network share
    mapped into memory kills the process with SIGBUS, a review). A last page cut short (an
    upload that stopped) is no damage: the decoder reads what is there. Data after the last
    page that holds no further page (a tag) is none either."""
    after_first_pages = chained = False
    page = 0
    while True:
        offset = fh.tell()
        header = fh.read(27)
        if len(header) < 27:
            return OggPages(chained)
        if header[:4] != b"OggS" or header[4] != 0:
            # lost sync: a damaged header, unless nothing that follows is a page
            follows = next(marker_hits(fh, b"OggS", head=header[1:]), None) is not None
            return OggPages(chained, page, offset) if follows else OggPages(chained)
        table = fh.read(header[26])
        body = fh.read(sum(table))
        if len(table) < header[26] or len(body) < sum(table):
            return OggPages(chained)
        stated = int.from_bytes(header[22:26], "little")
        if ogg_page_crc(header[:22] + bytes(4) + header[26:] + table + body) != stated:
            return OggPages(chained, page, offset)
        if header[5] & 0x02:               # beginning of a stream
            chained = chained or after_first_pages
        else:
            after_first_pages = True
        page += 1


def marker_hits(fh: BinaryIO, marker: bytes, after: int = 0, head: bytes = b""
                ) -> Iterator[bytes]:
    """Each place ``marker`` occurs in ``head`` and the rest of ``fh``, as the marker and the
    ``after`` bytes that follow it (an occurrence without them, at the end, is not given),
    read :data:`SCAN_CHUNK_BYTES` at a time (the rest of a 2 GB file read at once would take
    2 GB, a review); an occurrence cut by a chunk's end is found with the next chunk."""
    width = len(marker) + after
    window = head
    while True:
        at = window.find(marker)
        while at != -1 and at + width <= len(window):
            yield window[at:at + width]
            at = window.find(marker, at + 1)
        chunk = fh.read(SCAN_CHUNK_BYTES)
        if not chunk:
            return
        # from the first occurrence still short of its bytes, else the bytes a marker cut
        # by the end could begin in
        window = (window[at:] if at != -1 else window[max(len(window) - len(marker) + 1, 0):]
                  ) + chunk


_Scanned = TypeVar("_Scanned")


def scan_file(path: Path, scan: Callable[[BinaryIO], _Scanned]) -> _Scanned:
    """``scan`` of ``path`` opened for binary reading; an OS error while reading it is
    :func:`file_access_error`'s."""
    try:
        with path.open("rb") as fh:
            return scan(fh)
    except (OSError, ValueError) as e:
        raise file_access_error(path, e, "read") from e


def check_ogg_pages(path: Path, info: Any) -> None:
    """AudioDecodeError for an Ogg file that is chained or holds a damaged page.

    Chained: libsndfile decodes its first stream only, so two Opus files joined with ``cat``
    were analysed as the first and stored as done, the second call lost without a word (a
    review found the join of two files of other rates refused as a FLAC 'written to a
    pipe'). Damaged: the decoder skips a page it cannot read, and where that is the first
    audio page (or the last) the length libsndfile states shrinks with it, so no length
    check saw it: a byte flipped in a Vorbis file's first audio page lost 2.5 s and moved
    every utterance 2.5 s earlier, stored as done (a review)."""
    if str(info.format) != "OGG":
        return
    pages = scan_file(path, walk_ogg_pages)
    if pages.chained:
        raise AudioDecodeError(
            f"{path.name} holds chained Ogg streams (files joined end to end), of which the "
            "decoder reads only the first: send each recording on its own, or re-encode the "
            "whole as one stream (e.g. ffmpeg -i IN OUT.flac)")
    if pages.damaged_page is not None:
        raise AudioDecodeError(
            f"{path.name}: Ogg page {pages.damaged_page} (byte {pages.damaged_at}) is damaged "
            "(its checksum does not match): the decoder would skip it, and the audio after "
            "it would be analysed shifted or cut. Re-export the recording and send it again")


def flac_stream_starts(fh: BinaryIO) -> int:
    """How many FLAC streams begin in ``fh`` (binary, at its start): the marker ``fLaC`` and a
    STREAMINFO block header (type 0, 34 bytes; last-block flag either way). Eight given bytes
    inside compressed audio are a chance of 2**-64 a position."""
    return sum(hit[4] in (0x00, 0x80) and hit[5:] == b"\x00\x00\x22"
               for hit in marker_hits(fh, b"fLaC", after=4))


def check_single_flac_stream(path: Path, info: Any) -> None:
    """AudioDecodeError for FLAC files joined end to end: libsndfile decodes the length the
    first one's header states and stops, so the join was stored as the first recording, the
    second lost without a word (a review: 28.8 s of 57.6 s, done)."""
    if str(info.format) != "FLAC":
        return
    streams = scan_file(path, flac_stream_starts)
    if streams > 1:
        raise AudioDecodeError(
            f"{path.name} holds {streams} FLAC streams (files joined end to end), of which the "
            "decoder reads only the first: send each recording on its own, or re-encode the "
            "whole as one stream")


def check_known_length(path: Path, info: Any) -> None:
    """Raise when libsndfile could not learn the file's length (:data:`SF_COUNT_MAX`):
    TransientError when the storage refuses a read of its end (an Ogg file's length is read
    there), else AudioDecodeError with the repair (such a file can be neither sized nor
    streamed: libsndfile seeks after each read and fails)."""
    if info.frames < SF_COUNT_MAX:
        return
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 65536))
            fh.read(65536)
    except OSError as e:
        raise file_access_error(path, e, "read the end of") from e
    why = ("a last page that cannot be read?" if str(info.format) == "OGG"
           else "a FLAC written to a pipe by a streaming encoder?")
    raise AudioDecodeError(
        f"{path.name}: its {info.format} header gives no length ({why}), which the decoder "
        "cannot read through: re-encode it as one stream (e.g. ffmpeg -i IN OUT.flac) and "
        "send it again")


def load_recording(path: Path, max_duration_s: float, max_file_bytes: int | None = None) -> Recording:
    """Decode ``path`` (already resolved by :func:`resolve_input`) into analysis-rate channels.

    Holds the whole file in memory (~64 MB per channel-hour at 8 kHz, plus the decoded
    source); :func:`stream_blocks` is the bounded-memory alternative for long recordings.
    """
    info = check_input(path, max_duration_s, max_file_bytes)
    try:
        data, read_rate = sf.read(os.fsencode(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise decode_failure(path, e, f"{path.name} could not be decoded (truncated or "
                                      f"corrupt?): {e}") from e
    if data.shape[0] == 0:
        raise no_frames_error(path, str(info.format))
    if data.shape[0] / read_rate > max_duration_s:
        raise UnsupportedAudioError(f"{data.shape[0] / read_rate:.0f} s is longer than the limit "
                                    f"of {max_duration_s:g} s (CALLMOOD_MAX_DURATION_S)")
    check_samples(data, path.name, str(info.subtype))
    check_decode_complete(path, str(info.format), int(info.frames), data.shape[0],
                          int(read_rate))
    channels = tuple(resample(data[:, c], int(read_rate)) for c in range(data.shape[1]))
    return Recording(
        path=path,
        channels=channels,
        source_sample_rate=int(read_rate),
        duration_s=data.shape[0] / float(read_rate),
        format=str(info.format),
        subtype=str(info.subtype),
        sha256=recording_sha256(path),
    )


WAV_FORMATS: Final = ("WAV", "WAVEX")
"""soundfile's names of RIFF WAVE files (WAVEX: WAVE_FORMAT_EXTENSIBLE, as ffmpeg writes
24-bit and multichannel files)."""


EMPTY_WAV_MAX_BYTES = 1024
"""A WAV file that decodes to no frames but is larger than this holds more than its header:
its header gives the data as empty (see :func:`no_frames_error`). A canonical header is 44
bytes and one with metadata chunks a few hundred; a kilobyte is 1/16 s of 8 kHz mu-law."""


def no_frames_error(path: Path, fmt: str) -> AudioDecodeError:
    """The error for a file that decoded to no frames. A WAV recorder that stops before it
    rewrites its header (a crash, a full disk) leaves the data length at 0: libsndfile then
    reads nothing although the samples are there, and the message says how to recover them."""
    size = path.stat().st_size if path.exists() else 0
    if fmt.upper() in WAV_FORMATS and size > EMPTY_WAV_MAX_BYTES:
        return AudioDecodeError(
            f"{path.name} holds no audio frames by its WAV header, yet the file holds {size} "
            "bytes: a recorder that stopped before finishing the header? Rewrite the header "
            "(e.g. sox --ignore-length IN.wav OUT.wav) and send it again")
    return AudioDecodeError(f"{path.name} holds no audio frames")


def _printable_id(chunk_id: bytes) -> bool:
    """Whether four bytes can be a RIFF chunk id (a FourCC: printable ASCII)."""
    return len(chunk_id) == 4 and all(0x20 <= b < 0x7F for b in chunk_id)


def _all_zero(fh: Any, start: int, end: int) -> bool:
    """Whether bytes [start, end) of the open file are all zero (stops at the first that is
    not, so a tail of audio costs one block)."""
    fh.seek(start)
    left = end - start
    while left > 0:
        block = fh.read(min(left, 1 << 20))
        if not block or block.count(0) != len(block):
            return not block
        left -= len(block)
    return True


WAV_PLACEHOLDER_DATA_BYTES: Final[int] = 0x7F000000
"""Data chunk lengths from this one up are placeholders, not lengths: what a writer that
cannot seek back leaves when it writes to a pipe (ffmpeg 0xFFFFFFFF, sox 0x7FFFF000 rounded
down to its block, arecord 0x7FFFFF00 or 0x80000000), and RF64's. libsndfile then reads to
the end of the file. A real chunk that long is over 2 GB: 37 hours of 8 kHz 16-bit mono."""


@dataclass(frozen=True)
class WavLayout:
    """What the chunks of a RIFF WAVE file say of its audio against what the file holds."""

    unlisted_bytes: int = 0
    """Bytes past the data chunk that no chunk accounts for (see :func:`wav_layout`)."""
    missing_bytes: int = 0
    """Bytes the data chunk lists beyond the end of the file: a file cut short."""
    data_bytes: int = 0
    """The data chunk's listed length (0 when no data chunk was reached)."""
    bytes_per_s: int = 0
    """The ``fmt `` chunk's average byte rate, or its sample rate times its block size when a
    writer left that 0 (0 when it has no ``fmt `` chunk)."""


def wav_layout(path: Path) -> WavLayout:
    """Walk the chunks of a RIFF WAVE file. A recorder that last rewrote its header part-way
    through a call leaves the rest of the samples unlisted past the data chunk, and
    libsndfile reads only the length the header gives; not counted as unlisted: a tail of
    zeros (preallocation, sector padding), an ID3 tag appended unframed, and a chunk that
    follows an odd-sized one without its pad byte (a common writer slip). A copy or upload
    that stopped early ends inside the data chunk (missing bytes), and libsndfile reads up
    to the end without a word. An empty layout for a file that is not RIFF WAVE."""
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return WavLayout()
        size = os.fstat(fh.fileno()).st_size
        position, after_data, bytes_per_s, data_bytes = 12, False, 0, 0
        while position + 8 <= size:
            fh.seek(position)
            chunk = fh.read(12)
            chunk_id, chunk_bytes = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if not _printable_id(chunk_id):
                fh.seek(position - 1)
                if after_data and _printable_id(fh.read(4)):
                    position -= 1            # the odd-sized chunk before it had no pad byte
                    continue
                if (not after_data or chunk_id.startswith(b"ID3")
                        or _all_zero(fh, position, size)):
                    return WavLayout(data_bytes=data_bytes, bytes_per_s=bytes_per_s)
                return WavLayout(unlisted_bytes=size - position, data_bytes=data_bytes,
                                 bytes_per_s=bytes_per_s)
            if chunk_id == b"fmt " and len(chunk) == 12:
                fh.seek(position + 12)       # after the tag and channels: the rate,
                fmt = fh.read(10)            # nAvgBytesPerSec, nBlockAlign
                bytes_per_s = int.from_bytes(fmt[4:8], "little") or (
                    # a writer that left the average rate 0 (libsndfile opens such PCM files)
                    int.from_bytes(fmt[0:4], "little") * int.from_bytes(fmt[8:10], "little"))
            end = position + 8 + chunk_bytes + (chunk_bytes & 1)
            if end > size:
                # a last chunk cut short: a truncated file (libsndfile reads what is there)
                if chunk_id != b"data" or chunk_bytes >= WAV_PLACEHOLDER_DATA_BYTES:
                    return WavLayout(data_bytes=data_bytes, bytes_per_s=bytes_per_s)
                return WavLayout(missing_bytes=position + 8 + chunk_bytes - size,
                                 data_bytes=chunk_bytes, bytes_per_s=bytes_per_s)
            if chunk_id == b"data" and not after_data:
                data_bytes = chunk_bytes
            after_data = after_data or chunk_id == b"data"
            position = end
        return WavLayout(data_bytes=data_bytes, bytes_per_s=bytes_per_s)


def check_wav_length(path: Path, info: Any) -> None:
    """AudioDecodeError for a WAV whose header lists a second or more less audio than the file
    holds, or whose data chunk runs more than :data:`DECODE_SHORTFALL_MAX_S` past the end of
    the file (see :func:`wav_layout`): analysed as it is, the call would be stored as done,
    silently cut short. A header that lists no audio at all is left to
    :func:`no_frames_error`, which says the same of it."""
    if str(info.format) not in WAV_FORMATS or info.frames <= 0:
        return
    layout = wav_layout(path)
    bytes_per_s = layout.bytes_per_s
    if bytes_per_s <= 0:    # no usable fmt chunk: nothing to measure the lengths by
        return
    if layout.unlisted_bytes >= bytes_per_s:
        raise AudioDecodeError(
            f"{path.name}: its WAV header lists {info.frames / info.samplerate:.1f} s of audio, "
            f"yet {layout.unlisted_bytes} more bytes (~{layout.unlisted_bytes / bytes_per_s:.0f} "
            "s) follow it unlisted: a recorder that last rewrote its header part-way through? "
            "Rewrite the header (e.g. sox --ignore-length IN.wav OUT.wav) and send it again")
    if layout.missing_bytes / bytes_per_s > DECODE_SHORTFALL_MAX_S:
        raise AudioDecodeError(
            f"{path.name}: its WAV header lists {layout.data_bytes / bytes_per_s:.1f} s of "
            f"audio, yet the file ends after "
            f"{(layout.data_bytes - layout.missing_bytes) / bytes_per_s:.1f} s: cut short (a "
            "copy or upload that did not finish?). Send the whole recording again")


_W64_RIFF_GUID: Final = b"riff" + bytes.fromhex("2e91cf11a5d628db04c10000")
SAMPLE_BYTES: Final[dict[str, int]] = {
    "PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
    "ULAW": 1, "ALAW": 1}
"""Bytes per sample of the uncompressed subtypes (the lengths below are measured in them)."""


CONTAINER_HEAD_BYTES: Final[int] = 4096
"""Bytes of a file read for :func:`declared_container_bytes` (a NIST header is 1024)."""


def declared_container_bytes(head: bytes) -> int | None:
    """The whole file's size as the header of an RF64/BW64, Sony Wave64, AIFF/AIFC, Sun/NeXT
    AU or NIST SPHERE file states it (``head``: the file's first
    :data:`CONTAINER_HEAD_BYTES`); None for any other file, or one whose header leaves its
    length open (an AU file written to a pipe)."""
    if len(head) >= 28 and head[:4] in (b"RF64", b"BW64") and head[12:16] == b"ds64":
        return int.from_bytes(head[20:28], "little") + 8   # ds64's 64-bit RIFF size
    if len(head) >= 24 and head[:16] == _W64_RIFF_GUID:
        return int.from_bytes(head[16:24], "little")       # includes its own header
    if len(head) >= 12 and head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return int.from_bytes(head[4:8], "big") + 8
    if len(head) >= 12 and head[:4] == b".snd":           # offset, then data size
        data_bytes = int.from_bytes(head[8:12], "big")
        return None if data_bytes == 0xFFFFFFFF else int.from_bytes(head[4:8], "big") + data_bytes
    if head[:8] == b"NIST_1A\n":
        return _nist_bytes(head)
    return None


def _nist_bytes(head: bytes) -> int | None:
    """Header plus samples' bytes of a NIST SPHERE header (``sample_count``, ``channel_count``
    and ``sample_n_bytes`` fields); None when one is missing."""
    try:
        header_bytes = int(head[8:16].strip())
        fields = {}
        for line in head[16:header_bytes].decode("ascii", "replace").splitlines():
            parts = line.split()
            # "-i" integers, and "-sN" strings that hold one (libsndfile writes a mu-law
            # file's sample_n_bytes as "-s1 1", a review)
            if len(parts) == 3 and parts[1].startswith(("-i", "-s")) and parts[2].isdigit():
                fields[parts[0]] = int(parts[2])
        return header_bytes + (fields["sample_count"] * fields.get("channel_count", 1)
                               * fields["sample_n_bytes"])
    except (ValueError, KeyError):
        return None


def check_container_length(path: Path, info: Any) -> None:
    """AudioDecodeError for an RF64 (a WAV past 4 GB, often still named .wav), Wave64, AIFF,
    AU (Sun/NeXT, often mu-law) or NIST file that ends more than
    :data:`DECODE_SHORTFALL_MAX_S` before the size its header states: libsndfile reads such
    a file up to its end without a word, and a copy or upload that stopped half-way was
    stored as done, half the call lost (a review). The WAV equivalent is
    :func:`check_wav_length`. Not checked: IRCAM (no size in its header) and a compressed
    subtype inside these containers (IMA ADPCM in AIFF)."""
    if str(info.format) in (*WAV_FORMATS, *EXACT_LENGTH_FORMATS, *ESTIMATED_LENGTH_FORMATS):
        return                   # checked by their own rules; none is one of these containers
    sample_bytes = SAMPLE_BYTES.get(str(info.subtype))
    if sample_bytes is None:     # compressed in the container: no length to measure by
        return
    try:
        with path.open("rb") as fh:
            declared = declared_container_bytes(fh.read(CONTAINER_HEAD_BYTES))
            size = os.fstat(fh.fileno()).st_size
    except OSError as e:
        raise file_access_error(path, e, "read the header of") from e
    if declared is None:
        return
    bytes_per_s = int(info.samplerate) * int(info.channels) * sample_bytes
    missing_s = (declared - size) / bytes_per_s
    if missing_s > DECODE_SHORTFALL_MAX_S:
        raise AudioDecodeError(
            f"{path.name}: its {info.format} header gives the file as {declared} bytes, yet "
            f"it holds {size} (~{missing_s:.1f} s of audio missing): cut short (a copy or "
            "upload that did not finish?). Send the whole recording again")


MP3_READ_BLOCK: Final[int] = 1 << 20
"""Bytes of an MP3 read at once by :class:`_FileWindow` (the frame walk's read size)."""

MP3_LOOKAHEAD: Final[int] = 4096
"""Bytes past a frame header the walk keeps in hand: the longest layer III frame (1441
bytes: 320 kbit/s at 32 kHz, 160 kbit/s at 8 kHz) and the next frame's header, with room."""


class _FileWindow:
    """A binary file read a block at a time with seek/read, indexed by file offset: the MP3
    checks walk a file of up to CALLMOOD_MAX_FILE_BYTES in one block of memory, and without
    mmap (a read error of a network share mapped into memory kills the process with SIGBUS,
    a review)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.size = fh.seek(0, os.SEEK_END)
        self.base = 0
        self.buf = b""

    def at(self, pos: int, need: int = MP3_LOOKAHEAD) -> tuple[bytes, int]:
        """(block, index of ``pos`` in it), the block holding ``need`` bytes from ``pos`` or
        all up to the end of the file."""
        end = self.base + len(self.buf)
        if not (self.base <= pos and (pos + need <= end or end >= self.size)):
            self.fh.seek(pos)
            self.buf = self.fh.read(max(MP3_READ_BLOCK, need))
            self.base = pos
            if len(self.buf) < max(MP3_READ_BLOCK, need):
                # the end, or a file shortened while walked: it ends here either way
                self.size = pos + len(self.buf)
        return self.buf, pos - self.base

    def find_ff(self, start: int) -> int:
        """Offset of the first 0xFF byte at or after ``start`` (a frame header starts with
        one), or the file's size: found by bytes.find, in C, where stepping a byte at a time
        in Python took 0.6 s per 5 MB of a layer I/II file or junk (a review, 2026-12-06)."""
        while start < self.size:
            buf, i = self.at(start, 1)
            found = buf.find(b"\xff", i)
            if found >= 0:
                return self.base + found
            start = self.base + len(buf)
        return self.size


def _id3v2_end(head: bytes) -> int:
    """Offset of the first byte after an ID3v2 tag at the start of a file (``head``: its
    first 10 bytes or more); 0 when there is none."""
    if head[:3] != b"ID3" or len(head) < 10:
        return 0
    size = ((head[6] & 0x7F) << 21) | ((head[7] & 0x7F) << 14) | ((head[8] & 0x7F) << 7) \
        | (head[9] & 0x7F)
    return 10 + size + (10 if head[5] & 0x10 else 0)


def mp3_layer3_frames(source: bytes | BinaryIO) -> int | None:
    """Samples per channel the MPEG-1/2/2.5 layer III frames of an MP3 file (its bytes, or
    the file open in binary mode) hold, walking frame header to frame header (nothing is
    decoded), or None when that cannot be told: no frame, a free-format or layer I/II frame.
    An ID3v2 tag at the start is skipped; bytes between frames (an ID3v1 or APE tag, junk)
    are skipped to the next frame header that the frame after it confirms. A Xing/Info
    frame counts as the frame it is (one frame: a few hundredths of a second)."""
    window = _FileWindow(io.BytesIO(source) if isinstance(source, bytes) else source)
    pos = _id3v2_end(window.at(0)[0])
    samples = 0
    synced = False
    while pos + 4 <= window.size:
        data, i = window.at(pos)
        frame = _layer3_frame(data, i)
        if frame is None:   # junk, a tag, or a layer I/II file (no layer III frame: None)
            synced = False
            pos = window.find_ff(pos + 1)
            continue
        length, frame_samples = frame
        if length == 0:
            if synced:
                return None     # free format: no length in the header
            pos = window.find_ff(pos + 1)       # or a sync word in junk: no frame follows
            continue
        if (not synced and pos + length + 4 <= window.size
                and _layer3_frame(data, i + length) is None):
            # a sync word in junk: believe it only if the next frame follows where it says
            # (in the block: MP3_LOOKAHEAD holds the longest frame and the next header)
            pos = window.find_ff(pos + 1)
            continue
        synced = True
        samples += frame_samples
        pos += length
    return samples or None


_MPEG_VERSIONS: Final[dict[int, str]] = {0b00: "2.5", 0b10: "2", 0b11: "1"}
"""MPEG versions by a frame header's 2-bit version field (0b01 is reserved)."""


def _layer3_frame(data: bytes, pos: int) -> tuple[int, int] | None:
    """(bytes, samples per channel) of the layer III frame whose header starts at ``pos``
    (4 bytes of ``data`` from there), or None where no valid layer III header is; bytes 0
    for a free-format frame."""
    if data[pos] != 0xFF or (data[pos + 1] & 0xE0) != 0xE0:
        return None
    version = _MPEG_VERSIONS.get((data[pos + 1] >> 3) & 3)
    layer = (data[pos + 1] >> 1) & 3
    bitrate_index, rate_index = data[pos + 2] >> 4, (data[pos + 2] >> 2) & 3
    if version is None or layer != 1 or bitrate_index == 15 or rate_index == 3:
        return None
    rate = MP3_SAMPLE_RATES[version][rate_index]
    if bitrate_index == 0:
        return 0, 0
    kbps = MP3_LAYER3_KBPS["1" if version == "1" else "2"][bitrate_index]
    padding = (data[pos + 2] >> 1) & 1
    per_frame = 1152 if version == "1" else 576
    return per_frame // 8 * 1000 * kbps // rate + padding, per_frame


MP3_INFO_SEARCH_BYTES: Final[int] = 4096
"""Bytes after an MP3's ID3v2 tag searched for its first frame's Xing/Info or VBRI header
(a few hundred bytes of junk or padding may come first; a frame is at most 1441 bytes)."""


MP3_TAG_OVERRUN_SEARCH_BYTES: Final[int] = 65536
"""Bytes before the end an MP3's ID3v2 tag states that :func:`mp3_tag_overruns_audio` looks
through for frames running past it."""
MP3_MAX_FRAME_BYTES: Final[int] = 1441
"""The longest layer III frame: 320 kbit/s at 32 kHz, 160 kbit/s at 8 kHz."""
MP3_CHAIN_FRAMES: Final[int] = 3
"""Frames one after another that make a run of bytes audio rather than a tag's data."""


def mp3_tag_overruns_audio(fh: BinaryIO) -> int:
    """Bytes of audio frames an MP3's ID3v2 tag (``fh``, binary) claims by stating too large a
    size: a run of :data:`MP3_CHAIN_FRAMES` or more layer III frames, each where the one before
    ends, that begins inside the stated tag and reaches past its end; 0 when none does. The
    decoder skips the size the tag states, so the call's first seconds were lost and every
    utterance stored that much early (a review: a tag 5,000 bytes too long, 1.95 s), and its
    Xing frame, in the skipped part, could not tell the length."""
    fh.seek(0)
    end = _id3v2_end(fh.read(10))
    if end == 0:
        return 0
    low = max(10, end - MP3_TAG_OVERRUN_SEARCH_BYTES)
    fh.seek(low)
    data = fh.read(end - low + MP3_CHAIN_FRAMES * MP3_MAX_FRAME_BYTES + 4)
    at = data.find(b"\xff")
    while 0 <= at < end - low:
        pos, frames = at, 0
        while pos + 4 <= len(data) and (frame := _layer3_frame(data, pos)) and frame[0] > 0:
            frames, pos = frames + 1, pos + frame[0]
            if frames >= MP3_CHAIN_FRAMES and low + pos > end:
                return end - (low + at)
        at = data.find(b"\xff", at + 1)
    return 0


def check_mp3_tag(path: Path, info: Any) -> None:
    """AudioDecodeError for an MP3 whose ID3v2 tag overruns its audio
    (:func:`mp3_tag_overruns_audio`)."""
    if str(info.format) not in ESTIMATED_LENGTH_FORMATS:
        return
    overrun = scan_file(path, mp3_tag_overruns_audio)
    if overrun:
        raise AudioDecodeError(
            f"{path.name}: its ID3v2 tag states a size that runs {overrun} bytes into the "
            "audio, which the decoder would skip, every later time moved early: re-save the "
            "tag (or strip it) and send the recording again")


@dataclass(frozen=True)
class Mp3StatedLength:
    """The length an MP3's first frame states in a Xing/Info or VBRI header."""

    tag: str
    """``Xing``, ``Info`` (LAME's name for it in a CBR file) or ``VBRI`` (Fraunhofer's)."""
    frames: int
    """MPEG frames the header counts: LAME's leaves its own frame out (the check allows for a
    count that includes it)."""
    samples_per_frame: int
    """Per channel: 1152 for MPEG-1 layer III, 576 for MPEG-2 and 2.5."""
    sample_rate: int

    @property
    def samples(self) -> int:
        """Samples per channel the stated frames hold, encoder delay and padding included."""
        return self.frames * self.samples_per_frame


def mp3_stated_length(fh: BinaryIO) -> Mp3StatedLength | None:
    """The frame count that the first layer III frame of an MP3 (``fh``, binary) states in a
    Xing/Info header with its frames flag, or a VBRI header; None when it has neither (an
    encoder that writes as it records). A Xing/Info header sits after the frame's side
    information (17 or 32 bytes after the 4-byte frame header for MPEG-1, 9 or 17 for MPEG-2
    and 2.5: mono or not), a VBRI header 32 bytes after it; the fields are big-endian."""
    fh.seek(0)
    start = _id3v2_end(fh.read(10))
    fh.seek(start)
    head = fh.read(MP3_INFO_SEARCH_BYTES + 64)
    at = head.find(b"\xff")
    while 0 <= at < min(len(head) - 4, MP3_INFO_SEARCH_BYTES):
        frame = _layer3_frame(head, at)
        if frame is None or frame[0] == 0:      # junk before the first frame, or free format
            at = head.find(b"\xff", at + 1)
            continue
        version = _MPEG_VERSIONS[(head[at + 1] >> 3) & 3]
        rate = MP3_SAMPLE_RATES[version][(head[at + 2] >> 2) & 3]
        mono = head[at + 3] >> 6 == 3
        side_info = (17 if mono else 32) if version == "1" else (9 if mono else 17)
        xing, vbri = at + 4 + side_info, at + 4 + 32
        if head[xing:xing + 4] in (b"Xing", b"Info") and len(head) >= xing + 12:
            if not head[xing + 7] & 0x01:       # no frames field: it states no length
                return None
            frames = int.from_bytes(head[xing + 8:xing + 12], "big")
            return Mp3StatedLength(head[xing:xing + 4].decode(), frames, frame[1], rate)
        if head[vbri:vbri + 4] == b"VBRI" and len(head) >= vbri + 18:
            frames = int.from_bytes(head[vbri + 14:vbri + 18], "big")
            return Mp3StatedLength("VBRI", frames, frame[1], rate)
        following = at + frame[0]
        if following + 4 <= len(head) and _layer3_frame(head, following) is not None:
            return None     # the first frame (the next one follows it) carries neither
        at = head.find(b"\xff", at + 1)
    return None


def check_mp3_length(path: Path, fmt: str, header_frames: int, decoded_frames: int,
                     sample_rate: int) -> None:
    """AudioDecodeError when an MP3's frames hold :data:`MP3_SHORT_READ_S` or more beyond the
    ``decoded_frames`` libsndfile gave (at ``sample_rate``), or when the file holds clearly
    less than its Xing/Info or VBRI header states (:func:`check_mp3_stated_length`): analysed
    as decoded, the call would be stored as done, silently cut short. The message tells the
    causes apart by ``header_frames``: a header that gives the frames' length means the
    decoder stopped at damage; one short of it, a header that understates them (a VBR file
    without a Xing/Info frame, or files joined end to end under the first one's)."""
    if fmt not in ESTIMATED_LENGTH_FORMATS or sample_rate <= 0:
        return
    try:
        with path.open("rb") as fh:
            stated = mp3_stated_length(fh)
            held = mp3_layer3_frames(fh)
    except OSError as e:
        raise file_access_error(path, e, "read again to check the length (deleted or "
                                         "replaced while analysed?)") from e
    if held is not None and (held - decoded_frames) / sample_rate >= MP3_SHORT_READ_S:
        if (held - header_frames) / sample_rate < MP3_SHORT_READ_S:
            # the header knew the length: a review's garbled copies (random bytes mid-file)
            # decoded 4.5 to 8.8 s of 20 s, and were told they lacked a Xing header they had
            raise AudioDecodeError(
                f"{path.name}: decoding stopped at {decoded_frames / sample_rate:.1f} s of the "
                f"{held / sample_rate:.1f} s its MPEG frames hold (its header states "
                f"{header_frames / sample_rate:.1f} s): corrupt after that point? Re-export "
                "the recording and send it again")
        raise AudioDecodeError(
            f"{path.name}: libsndfile decoded {decoded_frames / sample_rate:.1f} s of it, yet "
            f"its MPEG frames hold {held / sample_rate:.1f} s: its header (a Xing/Info frame, "
            "or the first frames' estimate when it has none, as a VBR file written as it "
            "records) understates them, or MP3 files were joined end to end. Re-encode it "
            "(e.g. ffmpeg -i IN.mp3 OUT.flac) and send it again")
    if stated is not None:
        check_mp3_stated_length(path, stated, held, decoded_frames, sample_rate)


def check_mp3_stated_length(path: Path, stated: Mp3StatedLength, held: int | None,
                            decoded_frames: int, sample_rate: int) -> None:
    """AudioDecodeError when an MP3 holds more than :data:`DECODE_SHORTFALL_MAX_S` less than
    the frames its Xing/Info or VBRI header states (``held``: what its layer III frames hold,
    that header's frame included; None when the walk cannot tell), as a WAV short of its
    header's length fails: a copy or upload that stopped half-way decoded as its first half
    without a word and was stored as done (a review: 17.9 s of a 39.7 s call). The larger of
    ``held`` and ``decoded_frames`` counts, so a frame header the walk misses in damaged
    data is not taken for a cut. The quarter second is 3.4 frames or more at any MPEG rate
    (a frame lasts 72 ms at most: 576 samples at 8 kHz): room for the encoder delay and
    padding that the decoder trims (LAME: 576 samples of delay and 640-960 of padding,
    measured at 8-48 kHz), a count that includes its own frame, and a last frame cut
    part-way. An MP3 without such a header states no length, and is checked against its
    frames alone."""
    if stated.sample_rate != sample_rate or stated.frames <= 0:
        return              # not the stream libsndfile decoded: nothing to compare
    present = decoded_frames
    if held is not None:
        present = max(present, held - stated.samples_per_frame)    # less the header's frame
    if (stated.samples - present) / sample_rate <= DECODE_SHORTFALL_MAX_S:
        return
    raise AudioDecodeError(
        f"{path.name}: its {stated.tag} header states {stated.samples / sample_rate:.1f} s of "
        f"MPEG frames, yet the file holds {present / sample_rate:.1f} s: cut short (a copy or "
        "upload that did not finish?). Send the whole recording again")


PAIR_ENERGY_CHUNK: Final[int] = 1 << 18
"""Samples per channel summed at once by :meth:`ChannelPairEnergy.of` (~8 MB of float64
temporaries; 33 s at 8 kHz)."""


@dataclass(frozen=True)
class ChannelPairEnergy:
    """Energy sums of two equal-length channels, added up block by block, so a streamed
    recording is judged dual-mono (:attr:`same_signal`) on its whole length, as a recording
    decoded whole is: one block of a lossy codec's rounding (a loud passage, a transient) can
    sit over the threshold that the whole file stays far under."""

    n: int = 0
    """Samples per channel summed."""
    sum_a2: float = 0.0
    sum_b2: float = 0.0
    sum_diff2: float = 0.0
    """Sum of (a - b)**2: the two channels' difference."""
    sum_sum2: float = 0.0
    """Sum of (a + b)**2: their difference with one channel inverted."""

    @classmethod
    def of(cls, a: Audio, b: Audio) -> ChannelPairEnergy:
        """The sums of two channels, shape (n,) each (ValueError for unequal shapes), summed
        :data:`PAIR_ENERGY_CHUNK` samples at a time: float64 copies of two whole channels and
        their difference took ~1.8 GB for a 2-hour call decoded whole, twice the worker's
        memory limit (a review of the long-recording benchmark)."""
        if a.shape != b.shape:
            raise ValueError(f"channels of unequal shape: {a.shape} and {b.shape}")
        total = cls()
        for start in range(0, a.size, PAIR_ENERGY_CHUNK):
            x = a[start:start + PAIR_ENERGY_CHUNK].astype(np.float64)
            y = b[start:start + PAIR_ENERGY_CHUNK].astype(np.float64)
            diff, both = x - y, x + y
            total = total + cls(n=x.size, sum_a2=float(np.dot(x, x)), sum_b2=float(np.dot(y, y)),
                                sum_diff2=float(np.dot(diff, diff)),
                                sum_sum2=float(np.dot(both, both)))
        return total

    def __add__(self, other: ChannelPairEnergy) -> ChannelPairEnergy:
        return ChannelPairEnergy(n=self.n + other.n, sum_a2=self.sum_a2 + other.sum_a2,
                                 sum_b2=self.sum_b2 + other.sum_b2,
                                 sum_diff2=self.sum_diff2 + other.sum_diff2,
                                 sum_sum2=self.sum_sum2 + other.sum_sum2)

    @property
    def same_signal(self) -> bool:
        """Whether the channels carry one signal: the RMS of their difference (of their sum,
        for one channel inverted) is :data:`DUAL_MONO_RESIDUAL_DB` or more under their
        energy, as a lossy codec leaves one signal coded twice, or
        :data:`DUAL_MONO_GAIN_RESIDUAL_DB` under after the best gain for channels within
        :data:`DUAL_MONO_MAX_GAIN_DB` of each other's level, or under
        :data:`DUAL_MONO_MAX_DIFF` with the channels correlated (at least
        :data:`DUAL_MONO_MIN_CORRELATION`)."""
        if self.n == 0:
            return True
        energy = (self.sum_a2 + self.sum_b2) / (2.0 * self.n)
        residual = min(self.sum_diff2, self.sum_sum2) / self.n
        threshold = float(10.0 ** (DUAL_MONO_RESIDUAL_DB / 10.0))
        if residual <= energy * threshold:
            return True
        if (self.sum_a2 > 0.0 and self.sum_b2 > 0.0
                and abs(10.0 * math.log10(self.sum_a2 / self.sum_b2)) <= DUAL_MONO_MAX_GAIN_DB
                and 1.0 - self.correlation ** 2
                <= float(10.0 ** (DUAL_MONO_GAIN_RESIDUAL_DB / 10.0))):
            return True
        # the absolute floor: quiet recordings, where an LSB of rounding is a large share;
        # only for channels that move together, as one signal's copies do
        return (residual <= DUAL_MONO_MAX_DIFF * DUAL_MONO_MAX_DIFF
                and self.correlation >= DUAL_MONO_MIN_CORRELATION)

    @property
    def correlation(self) -> float:
        """|sum a*b| / sqrt(sum a^2 * sum b^2), in [0, 1] (0 when a channel is silent)."""
        if self.sum_a2 <= 0.0 or self.sum_b2 <= 0.0:
            return 0.0
        # (a - b)^2 and (a + b)^2 both hold 2ab; the smaller one is |2ab| away from a^2 + b^2
        cross = (self.sum_a2 + self.sum_b2 - min(self.sum_diff2, self.sum_sum2)) / 2.0
        return float(min(1.0, max(0.0, cross) / math.sqrt(self.sum_a2 * self.sum_b2)))


def same_signal(a: Audio, b: Audio) -> bool:
    """Whether two channels (any rate) carry one signal (a dual-mono file):
    :attr:`ChannelPairEnergy.same_signal`; channels of unequal length never do."""
    return a.shape == b.shape and ChannelPairEnergy.of(a, b).same_signal


def check_samples(data: Audio, name: str, subtype: str, at_s: float | None = None) -> None:
    """AudioDecodeError unless every decoded sample is finite and within
    +-:data:`MAX_SAMPLE_PEAK` (``subtype``: libsndfile's, for the message; ``at_s``: where the
    block starts)."""
    where = "" if at_s is None else f" (after {at_s:.1f} s)"
    if data.size == 0:
        return
    # max and min carry a NaN or an infinity through, and copy nothing: abs() and isfinite()
    # made two arrays the size of the decoded call (a review: 1.6x the documented memory)
    high, low = float(data.max()), float(data.min())
    if not (math.isfinite(high) and math.isfinite(low)):
        raise AudioDecodeError(f"{name} contains NaN or infinite samples{where}")
    peak = max(high, -low)
    if peak <= MAX_SAMPLE_PEAK:
        return
    if subtype in FLOAT_SUBTYPES:
        raise AudioDecodeError(
            f"{name} has samples up to {peak:.4g}{where}; float samples must lie within "
            f"+-1.0 (at most +-{MAX_SAMPLE_PEAK:g} is accepted): written at integer scale? "
            "Rescale it to +-1.0 or write integer PCM")
    # Integer PCM and G.711 decode within +-1.0 whatever their bytes: this is a lossy codec,
    # whose damaged frames decode to such peaks (tests/worker/test_audio.py garbles copies of
    # an MP3: some do), and whose encoder also keeps float input at integer scale as it was
    # given (an intact MP3 or Vorbis file then peaks at thousands, a review)
    raise AudioDecodeError(
        f"{name} decodes to samples up to {peak:.4g}{where}, past the +-1.0 full scale of its "
        f"{subtype} audio: damaged frames, or encoded from float samples at integer scale. "
        "Re-export the recording at +-1.0 full scale and send it again")


@dataclass(frozen=True)
class StreamInfo:
    """What :func:`open_stream` learnt from the header of a recording to be streamed."""

    path: Path
    source_sample_rate: int
    n_channels: int
    header_frames: int
    """Frames the header announces (0 when unknown, e.g. some MP3s); the count decoded by
    :func:`stream_blocks` (``DecodedBlock.source_frames`` of the last block) is what counts."""
    format: str
    subtype: str
    file_bytes: int = 0
    """Size of the file (bytes): bounds an MP3's length where its header only estimates it."""

    @property
    def header_duration_s(self) -> float:
        """Duration the header announces (s); 0.0 when it does not say."""
        return self.header_frames / self.source_sample_rate

    @property
    def most_frames(self) -> int:
        """Frames the file can hold at most: the header's count, or for a format whose header
        estimates it (:data:`ESTIMATED_LENGTH_FORMATS`) the most its size allows at the
        format's lowest bitrate; 0 when unknown."""
        if self.format not in ESTIMATED_LENGTH_FORMATS or self.file_bytes <= 0:
            return self.header_frames
        longest_s = mp3_duration_range_s(self.file_bytes, self.source_sample_rate)[1]
        return max(self.header_frames, math.ceil(longest_s * self.source_sample_rate))


@dataclass(frozen=True)
class DecodedBlock:
    """One block of :func:`stream_blocks`."""

    samples: Audio
    """float32, shape (n, n_channels), at ANALYSIS_SAMPLE_RATE."""
    source_frames: int
    """Source frames decoded so far, this block included (the last block's is the total)."""


def open_stream(path: Path, max_duration_s: float, max_file_bytes: int | None = None) -> StreamInfo:
    """Check ``path`` as :func:`load_recording` does, without decoding any audio."""
    info = check_input(path, max_duration_s, max_file_bytes)
    return StreamInfo(path=path, source_sample_rate=int(info.samplerate),
                      n_channels=int(info.channels), header_frames=max(0, int(info.frames)),
                      format=str(info.format), subtype=str(info.subtype),
                      file_bytes=path.stat().st_size)


class _ReadOn(sf.SoundFile):  # type: ignore[misc]  # soundfile ships no type hints
    """A SoundFile whose reads carry on from where the decoder stopped.

    soundfile (0.12-0.14) seeks to (position before + frames returned) after every read.
    Where an Ogg page is lost mid-file, the decoder returns a full block with what follows
    moved earlier, and that seek then decoded about a second twice: the decoded length
    matched the header, and a damaged call was stored as done, its later segments a second
    off (a review's 11-minute Opus call with 64 bytes garbled). Read on, the decode comes
    up short and :func:`check_decoded_length` fails the call, as on the whole-file path.
    Not seekable also means reads are not trimmed to the header's length (an estimate for
    MP3): each read returns what the decoder gives, and an empty one ends the file."""

    def seekable(self) -> bool:
        return False


def stream_blocks(stream: StreamInfo, max_duration_s: float,
                  block_frames: int = STREAM_BLOCK_FRAMES) -> Iterator[DecodedBlock]:
    """Decode ``stream.path`` block by block, resampled to ANALYSIS_SAMPLE_RATE.

    Yields blocks of float32 samples, shape (n, n_channels), n varying (the resampler's
    delay makes the first block short and adds a flushed tail at the end); concatenated
    they equal, sample for sample, the channels :func:`load_recording` returns (one soxr
    stream per file carries its filter state across block edges, so the edges leave no
    trace; checked in tests/worker/test_stream.py); MP3 to within 1e-6 (until 2026-12-06 a
    few thousandths: soundfile's seek after each read made mpg123 decode each block afresh
    from a seek point; :class:`_ReadOn`). Memory: one block, whatever the length.

    Raises AudioDecodeError when a block cannot be decoded (corrupt or truncated data
    mid-file), holds NaN/inf, or the file has no frames; UnsupportedAudioError when the
    decoded length passes ``max_duration_s`` (headers without a length: checked as it grows).
    """
    rate = stream.source_sample_rate
    resampler = (None if rate == ANALYSIS_SAMPLE_RATE else
                 soxr.ResampleStream(rate, ANALYSIS_SAMPLE_RATE, stream.n_channels,
                                     dtype="float32", quality="HQ"))
    name = stream.path.name
    frames = 0
    try:
        sound = _ReadOn(os.fsencode(stream.path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise decode_failure(stream.path, e, f"{name} could not be opened for decoding: {e}") from e
    with sound:
        while True:
            want = block_frames
            if stream.format == "FLAC" and 0 < stream.header_frames < SF_COUNT_MAX:
                # no further than STREAMINFO's length, as the whole-file read: read on, libFLAC
                # met a tag or padding after the last frame as lost sync, and a FLAC over
                # 10 minutes with an ID3v1 tag failed where a short one passed (a review)
                want = min(want, stream.header_frames - frames)
                if want <= 0:
                    break
            try:
                # read() trims to the frames decoded; SoundFile.blocks() would hand back its
                # reused buffer unchanged where a truncated MP3 ends before its header's
                # length, repeating the last block as if it were more speech
                data = sound.read(want, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError) as e:
                raise decode_failure(stream.path, e, f"{name} could not be decoded after "
                                     f"{frames / rate:.1f} s (corrupt or truncated data "
                                     f"mid-file?): {e}") from e
            if data.shape[0] == 0:
                break
            check_samples(data, name, stream.subtype, frames / rate)
            frames += data.shape[0]
            if frames / rate > max_duration_s:
                raise UnsupportedAudioError(f"{name} is longer than the limit of "
                                            f"{max_duration_s:g} s (CALLMOOD_MAX_DURATION_S)")
            if resampler is None:
                yield DecodedBlock(np.ascontiguousarray(data, dtype=np.float32), frames)
            else:
                out = resampler.resample_chunk(np.ascontiguousarray(data), last=False)
                if out.shape[0]:
                    yield DecodedBlock(_as_frames(out, stream.n_channels), frames)
    if frames == 0:
        raise no_frames_error(stream.path, stream.format)
    if resampler is not None:
        # flush the filter's tail: the last samples the one-shot resampler would give
        tail = resampler.resample_chunk(np.zeros((0, stream.n_channels), dtype=np.float32),
                                        last=True)
        yield DecodedBlock(_as_frames(tail, stream.n_channels), frames)


def _as_frames(x: Any, n_channels: int) -> Audio:
    """soxr's output as float32 (n, n_channels) (it may drop the channel axis of mono)."""
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1, n_channels))


def load_mono(path: Path, target_rate: int = ANALYSIS_SAMPLE_RATE,
              channel: int | None = None) -> Audio:
    """Decode a labelled clip to one channel at ``target_rate``: a mono file's channel, or
    ``channel`` (0 = first) of a multi-channel one.

    Used by training and evaluation: the same soundfile + soxr path as the worker, with its
    checks of a decode cut short. A multi-channel file needs ``channel``: the worker scores
    each channel (party) apart, so a mix of agent and customer is never what it sees, and a
    model trained or judged on one would be trained or judged on other input. Raises
    AudioDecodeError naming the file and what is wrong.
    """
    try:
        with sf.SoundFile(os.fsencode(path)) as sound:
            fmt, header_frames = str(sound.format), int(sound.frames)
            data = sound.read(dtype="float32", always_2d=True)
            rate = int(sound.samplerate)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        as_named = unreadable_as_named(path, e)
        raise AudioDecodeError(f"{path} could not be decoded: {e}" if as_named is None
                               else f"{path} is {as_named}") from e
    if data.shape[0] == 0:
        raise AudioDecodeError(f"{path} holds no audio (0 frames)")
    check_decode_complete(path, fmt, header_frames, data.shape[0], rate)
    check_labelled_channel(path, data.shape[1], channel)
    return resample(data[:, 0 if channel is None else channel], rate, target_rate)


def check_labelled_channel(path: Path, n_channels: int, channel: int | None) -> None:
    """AudioDecodeError unless ``channel`` names one of a file's ``n_channels`` (None: a mono
    file's one; a multi-channel file needs it named, see :func:`load_mono`)."""
    if channel is None and n_channels > 1:
        raise AudioDecodeError(
            f"{path} has {n_channels} channels: name the labelled party's channel in the "
            "manifest's channel column (0 = first); the worker scores each channel apart")
    if channel is not None and not 0 <= channel < n_channels:
        raise AudioDecodeError(f"{path} has {n_channels} channel(s); the manifest names "
                               f"channel {channel} (valid: 0 to {n_channels - 1})")
