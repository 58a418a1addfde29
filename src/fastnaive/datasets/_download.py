"""Downloads with the standard library into the Keras cache, each file checked by SHA-256.

A file is streamed into a temporary file in its target's folder while its SHA-256 is
computed, synced, and renamed over the target only when the hash is the expected one: an
interrupted, failed or corrupt download leaves nothing behind. A progress bar (tqdm) shows
on a terminal; one line on stderr says what is fetched, and where it goes, in any case.
"""

import contextlib
import hashlib
import http.client
import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["DownloadError", "fetch"]

_CHUNK = 1 << 16
TIMEOUT_SECONDS = 30


class DownloadError(OSError):
    """A download that failed on the network: the message names the URL and the reason."""


def fetch(url, target, sha256):
    """Download `url` to the file `target` (a Path), keeping it only if its SHA-256 is `sha256`.

    Raises DownloadError when the URL cannot be read, ValueError when the bytes read are
    not the expected ones; in both cases nothing is left at or beside `target`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {url} to {target}", file=sys.stderr, flush=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.part")
    try:
        digest, size = _stream(url, tmp)
        if digest != sha256:
            raise ValueError(
                f"Expected SHA-256 {sha256} for {url}. Received: SHA-256 {digest} "
                f"({size} bytes); the file was not kept"
            )
        os.replace(tmp, target)
    except BaseException:  # an interrupt too: the partial file goes
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _stream(url, tmp):
    """Copy `url` into the new file `tmp`; return (SHA-256 hex digest, size in bytes)."""
    from tqdm.auto import tqdm

    digest, size = hashlib.sha256(), 0
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS)
    except (OSError, ValueError, http.client.HTTPException) as error:  # URLError is an OSError
        raise DownloadError(f"{url}: {_reason(error)}") from error
    with response, open(tmp, "xb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=Path(url).name,
            file=sys.stderr,
            disable=None,  # on a terminal only
            leave=False,
        )
        with bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as error:
                    raise DownloadError(f"{url}: {_reason(error)}") from error
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    if total is not None and size != total:
        raise DownloadError(f"{url}: the connection closed after {size} of {total} bytes")
    return digest.hexdigest(), size


def _reason(error):
    """What went wrong, in one phrase: an HTTP status, the socket's reason, or the error."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason
    return f"{type(error).__name__}: {error}" if isinstance(error, Exception) else str(error)
