"""Recording URIs as text: which local path a plain path or a ``file://`` URI names.

Pure string work (urllib only), shared by the database edge (:func:`worker.store.check_uri`:
may this URI travel?), the producers (:mod:`worker.enqueue`: make a path absolute) and the
decoder's input check (:func:`worker.audio.resolve_input`), so the three read a URI alike.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote, urlsplit

from worker.errors import PayloadError

LOCAL_HOSTS: Final = ("", "localhost")
"""Hosts a ``file://`` URI may name (RFC 8089: an empty host or ``localhost`` is this machine)."""

# RFC 3986 scheme: a letter, then letters, digits, "+", "-" or "."
_SCHEME_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def uri_scheme(uri: str) -> str:
    """Lower-cased scheme of ``uri``; "" for a plain path. A one-letter scheme is a Windows
    drive (``C:\\calls\\a.wav``, ``C:/calls/a.wav``), so it is a path too, and so is a name
    with a colon whose "scheme" is not ``file`` and names no authority (``call-12:30.wav``,
    ``2026-12-06T10:15.wav``): a review found such files sent as URIs of scheme ``call-12``,
    failed on the worker as not enabled, and failed again by every retry."""
    match = _SCHEME_RE.match(uri)
    if match is None or len(match.group(1)) == 1:
        return ""
    scheme = match.group(1).lower()
    if scheme != "file" and not uri[match.end():].startswith("//"):
        return ""
    return scheme


def local_path_text(uri: str) -> str | None:
    """The path ``uri`` names on this machine, as text: a plain path as it is, a ``file://``
    URI's percent-decoded path (bytes that are not UTF-8 come back as surrogate escapes, which
    ``os.fsencode`` turns into those bytes again); None for any other scheme.

    Raises PayloadError for a ``file://`` URI that urllib cannot split (an unclosed "[" in
    its host) or that names another host: the worker opens local files only, and reading
    ``file://nas/calls/a.wav`` as ``/calls/a.wav`` would analyse some other file.
    """
    scheme = uri_scheme(uri)
    if scheme == "":
        return uri
    if scheme != "file":
        return None
    try:
        parts = urlsplit(uri)
    except ValueError as e:
        raise PayloadError(f"uri: not a valid file:// URI ({e})") from e
    if parts.netloc.lower() not in LOCAL_HOSTS:
        raise PayloadError(f"uri: the file:// URI names host {parts.netloc!r}; the worker reads "
                           "local files only: use file:///path (or file://localhost/path) or a "
                           "plain path, with network shares mounted under CALLMOOD_INPUT_ROOTS")
    return unquote(parts.path, errors="surrogateescape")
