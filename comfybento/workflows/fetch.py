"""Input files given by URL: fetched through the allow-list, within size, time, redirect and type limits.

Every hop (the URL, then each redirect) is checked by the allow-list shared
with webhooks (comfybento/urlguard.py) and connects to an address that check
approved. The body is streamed and counted as it arrives (decoded bytes: a
gzip bomb stops at the limit); a declared Content-Length over the limit is
refused before any of it is read. The whole fetch, redirects included, has
max_url_seconds, and must bring min_url_bytes_per_s over any 5 s
(comfybento/transfer.py: a server that drips its body is cut off at the limit,
named in a 413). Blocking: call it in a thread.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import httpx

from comfybento.errors import InvalidRequest, TooLarge
from comfybento.limits import Limits
from comfybento.transfer import TooSlow, TransferLimits, Watchdog
from comfybento.urlguard import AllowList, send_checked

# Content types a URL may declare for each kind of input (the bytes are sniffed afterwards in any case);
# a missing or generic type is left to the sniffing.
DECLARED_TYPES: dict[str, tuple[str, ...]] = {
    "image": ("image/",),
    "mask": ("image/",),
    "video": ("video/", "application/mp4", "application/ogg"),
    "audio": ("audio/", "video/", "application/ogg", "application/mp4"),
}
GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream")


def is_url(value: str) -> bool:
    head = value[:8].lower()
    return head.startswith("http://") or head.startswith("https://")


def fetch(field: str, url: str, kind: str, limits: Limits, allow: AllowList) -> tuple[bytes, str]:
    """The body of `url` (following at most max_url_redirects checked redirects) and the suffix of its path."""
    with Watchdog(TransferLimits(limits.max_url_seconds, limits.min_url_bytes_per_s)) as watchdog:
        try:
            return _fetch(field, url, kind, limits, allow, watchdog)
        except TooSlow as exc:
            raise _too_slow(field, url, limits, exc) from None


def _fetch(field: str, url: str, kind: str, limits: Limits, allow: AllowList, watchdog: Watchdog) -> tuple[bytes, str]:
    with httpx.Client(headers={"user-agent": "comfybento-input-fetch"}, trust_env=False) as client:
        for _ in range(limits.max_url_redirects + 1):
            addresses = allow.check(url, field)
            watchdog.check()
            request = client.build_request("GET", url, timeout=watchdog.remaining(), extensions={"trace": watchdog.trace})
            try:
                response = send_checked(client, request, addresses, stream=True)
            except httpx.HTTPError as exc:
                watchdog.check()  # the watchdog cut it off: TooSlow says why
                if isinstance(exc, httpx.TimeoutException):
                    raise TooSlow(f"was not complete within {limits.max_url_seconds} s") from None
                raise InvalidRequest(f"{field}: {url!r} cannot be fetched ({type(exc).__name__}: {exc})") from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = str(httpx.URL(url).join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(f"{field}: {url!r} answered HTTP {response.status_code}, not 200")
                _check_declared_type(field, url, kind, response.headers.get("content-type", ""))
                data = _read_body(field, url, response, limits, watchdog)
                return data, PurePosixPath(httpx.URL(url).path).suffix.lower()
            finally:
                response.close()
    raise InvalidRequest(f"{field}: more than {limits.max_url_redirects} redirects (max_url_redirects)")


def _too_slow(field: str, url: str, limits: Limits, exc: TooSlow) -> TooLarge:
    if exc.rate:
        return TooLarge(f"{field}: {url!r} {exc}, slower than the limit of {limits.min_url_bytes_per_s} bytes/s "
                        "(min_url_bytes_per_s)")
    return TooLarge(f"{field}: {url!r} was not fetched within {limits.max_url_seconds} s (max_url_seconds)")


def _check_declared_type(field: str, url: str, kind: str, content_type: str) -> None:
    media = content_type.split(";")[0].strip().lower()
    accepted = DECLARED_TYPES.get(kind)
    if accepted is None or media in GENERIC_TYPES or media.startswith(accepted):
        return
    raise InvalidRequest(f"{field}: {url!r} is {media}; a {kind} input takes {', '.join(a + '*' for a in accepted)}")


def _read_body(field: str, url: str, response: httpx.Response, limits: Limits, watchdog: Watchdog) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 18 or int(declared) > limits.max_upload_bytes):
        raise TooLarge(f"{field}: {url!r} is {declared} bytes, more than the limit of {limits.max_upload_bytes} "
                       "(max_upload_bytes)")
    body = bytearray()
    try:
        for chunk in response.iter_bytes():  # as each read brings it: the limits are checked every time
            body += chunk
            if len(body) > limits.max_upload_bytes:
                raise TooLarge(f"{field}: {url!r} is more than the limit of {limits.max_upload_bytes} bytes (max_upload_bytes)")
            watchdog.count(len(chunk))
    except httpx.HTTPError as exc:
        watchdog.check()  # the watchdog cut it off: TooSlow says why
        if isinstance(exc, httpx.TimeoutException):
            raise TooSlow(f"was not complete within {limits.max_url_seconds} s") from None
        raise InvalidRequest(f"{field}: {url!r} broke off ({type(exc).__name__}: {exc})") from None
    if not body:
        raise InvalidRequest(f"{field}: {url!r} is empty")
    return bytes(body)
