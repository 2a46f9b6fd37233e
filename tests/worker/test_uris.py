"""worker.uris: the one reading of a recording URI that producers, the store and the decoder
share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.audio import probe_duration_s, resolve_input
from worker.errors import InputNotAllowedError, PayloadError
from worker.uris import local_path_text, uri_scheme


@pytest.mark.parametrize(("uri", "scheme"), [
    ("/calls/a.wav", ""),
    ("calls/a:b.wav", ""),            # a colon after a slash is not a scheme
    ("C:\\calls\\a.wav", ""),         # a Windows drive is a path
    ("c:/calls/a.wav", ""),
    ("FILE:///calls/a.wav", "file"),
    ("s3://bucket/a.wav", "s3"),
    ("svn+ssh://host/a", "svn+ssh"),
    ("http://[nas/a.wav", "http"),    # urllib.parse.urlsplit raises on this one
    # a file name with a colon: the "scheme" is not file and names no host (a review)
    ("call-12:30.wav", ""),
    ("2026-12-06T10:15:00.wav", ""),
    ("file:/calls/a.wav", "file"),
])
def test_uri_scheme_never_raises_and_counts_a_drive_letter_as_a_path(uri: str,
                                                                    scheme: str) -> None:
    assert uri_scheme(uri) == scheme


def test_local_path_text_decodes_file_uris_and_leaves_paths_alone() -> None:
    assert local_path_text("/calls/a%20b.wav") == "/calls/a%20b.wav"    # a path is not decoded
    assert local_path_text("file:///calls/a%20b.wav") == "/calls/a b.wav"
    assert local_path_text("file://localhost/calls/a.wav") == "/calls/a.wav"
    assert local_path_text("file://LOCALHOST/calls/a.wav") == "/calls/a.wav"
    # a Latin-1 name's byte comes back as the surrogate escape os.fsencode turns into it
    text = local_path_text("file:///calls/caf%E9.wav")
    assert text is not None and os.fsencode(text) == b"/calls/caf\xe9.wav"
    assert local_path_text("s3://bucket/a.wav") is None


@pytest.mark.parametrize(("uri", "message"), [
    ("file://[nas/a.wav", "not a valid file:// URI"),
    ("file://nas/calls/a.wav", "names host 'nas'"),
])
def test_a_file_uri_for_another_machine_or_unsplittable_is_refused_everywhere(
        tmp_path: Path, uri: str, message: str) -> None:
    """file://nas/calls/a.wav once opened /calls/a.wav on the worker (another file, if one is
    there), and an unclosed "[" raised urllib's bare ValueError from the producer's check,
    aborting a whole manifest instead of naming its line."""
    with pytest.raises(PayloadError, match=message):
        local_path_text(uri)
    with pytest.raises(InputNotAllowedError, match=message):
        resolve_input(uri, [tmp_path])
    assert probe_duration_s(uri) is None


def test_a_file_name_with_a_colon_travels_as_a_path_and_other_schemes_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`callmood enqueue call-12:30.wav` sent scheme 'call-12' unchanged, not made absolute;
    every run, and every retry, failed it on the worker. A scheme the worker cannot read
    (s3://) is refused by the producer now, not failed by the worker."""
    from worker.enqueue import absolute_uri
    from worker.store import check_uri

    monkeypatch.chdir(tmp_path)
    (tmp_path / "call-12:30.wav").write_bytes(b"")
    sent = absolute_uri("call-12:30.wav")
    assert sent == str(tmp_path / "call-12:30.wav")
    check_uri(sent)
    assert resolve_input(sent, [tmp_path]) == (tmp_path / "call-12:30.wav").resolve()
    with pytest.raises(PayloadError, match="scheme 's3' is not one the worker reads"):
        check_uri("s3://bucket/a.wav")
