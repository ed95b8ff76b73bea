"""The allow-list shared by webhooks and URL inputs, and the URL fetch, against a real local HTTP server."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace

import httpx
import pytest

from comfybento.errors import InvalidRequest, TooLarge
from comfybento.front.jobs import webhooks
from comfybento.limits import Limits
from comfybento.urlguard import AllowList, pinned
from comfybento.workflows.fetch import fetch
from tests.file_server import file_server
from tests.media_samples import png

INTERNAL = ["http://127.0.0.1/x.png", "http://10.1.2.3/x.png", "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x.png", "http://[::ffff:127.0.0.1]/x.png", "http://0.0.0.0/x.png", "http://192.168.0.1/x.png",
            # IPv6 forms of IPv4 (NAT64, 6to4, IPv4-compatible: a gateway reaches the IPv4 address) and multicast
            "http://[64:ff9b::7f00:1]/x.png", "http://[64:ff9b::a9fe:a9fe]/x.png", "http://[64:ff9b::808:808]/x.png",
            "http://[64:ff9b:1::a00:1]/x.png", "http://[2002:7f00:1::]/x.png", "http://[2002:808:808::1]/x.png",
            "http://[::127.0.0.1]/x.png", "http://[::8.8.8.8]/x.png", "http://[ff0e::1]/x.png", "http://224.0.0.1/x.png",
            "http://239.255.255.250/x.png"]


def test_webhooks_use_the_shared_allow_list():
    assert webhooks.AllowList is AllowList


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_addresses_are_refused_naming_the_field(url):
    with pytest.raises(InvalidRequest, match=r"^image: address .* is not in the allow-list"):
        AllowList([]).check(url, "image")


def test_public_addresses_are_allowed():
    for address in ("8.8.8.8", "[2606:4700:4700::1111]", "[2a00:1450:4001:80b::200e]"):
        assert AllowList([]).check(f"http://{address}/x.png", "image") == [ipaddress.ip_address(address.strip("[]"))]


@pytest.mark.parametrize("url", ["ftp://example.com/x.png", "file:///etc/passwd", "gopher://x/", "http:///x", "not a url"])
def test_only_http_urls(url):
    with pytest.raises(InvalidRequest, match=r"^image: .* must be an http\(s\) URL"):
        AllowList([]).check(url, "image")


def test_a_named_host_admits_its_addresses_and_only_it():
    allow = AllowList(["localhost"])
    assert ipaddress.ip_address("127.0.0.1") in allow.check("http://localhost:1/x")
    with pytest.raises(InvalidRequest, match="allow-list"):
        allow.check("http://127.0.0.1:1/x")  # the same address, not by its listed name


def test_pinned_keeps_the_host_header_and_tls_name():
    request = pinned(httpx.Request("GET", "https://files.example.com:8443/a.png?x=1"), ipaddress.ip_address("93.184.216.34"))
    assert str(request.url) == "https://93.184.216.34:8443/a.png?x=1"
    assert request.headers["host"] == "files.example.com:8443"
    assert request.extensions["sni_hostname"] == "files.example.com"
    assert request.headers["connection"] == "close"  # never reused for another host name on the same address


def test_fetch_reads_a_file_and_its_suffix():
    with file_server() as files:
        url = files.add("/cat.png", png(), "image/png")
        data, suffix = fetch("image", url, "image", Limits(), AllowList(["localhost"]))
    assert data == png() and suffix == ".png"


def test_without_the_setting_a_local_server_is_refused():
    with file_server() as files:
        url = files.add("/cat.png", png(), "image/png")
        with pytest.raises(InvalidRequest, match=r"^image: address 127.0.0.1"):
            fetch("image", url, "image", Limits(), AllowList([]))
        assert files.hits == []  # refused before any connection


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/cat.png", "http://10.0.0.1/cat.png",
                                    "http://169.254.169.254/latest/meta-data", "http://[::1]:{port}/cat.png"])
def test_every_redirect_is_checked_again(target):
    with file_server() as files:
        files.add("/cat.png", png(), "image/png")
        url = files.redirect("/go", target.format(port=files.port))
        with pytest.raises(InvalidRequest, match=r"^image: address .* is not in the allow-list"):
            fetch("image", url, "image", Limits(), AllowList(["localhost"]))
        assert files.hits == ["/go"]


def test_allowed_redirects_are_followed_up_to_the_limit():
    with file_server() as files:
        files.add("/cat.png", png(), "image/png")
        one = files.redirect("/one", "/cat.png")
        assert fetch("image", one, "image", Limits(), AllowList(["localhost"]))[0] == png()
        files.redirect("/loop", "/loop")
        with pytest.raises(InvalidRequest, match=r"more than 2 redirects \(max_url_redirects\)"):
            fetch("image", files.url("/loop"), "image", replace(Limits(), max_url_redirects=2), AllowList(["localhost"]))


def test_a_body_over_the_limit_is_refused_with_or_without_its_length():
    limits = replace(Limits(), max_upload_bytes=1000)
    with file_server() as files:
        declared = files.add("/big", b"x" * 5000, "image/png")
        chunked = files.add("/big-chunked", b"x" * 5000, "image/png", chunked=True)
        with pytest.raises(TooLarge, match=r"^image: .* is 5000 bytes, more than the limit of 1000 \(max_upload_bytes\)"):
            fetch("image", declared, "image", limits, AllowList(["localhost"]))
        with pytest.raises(TooLarge, match=r"more than the limit of 1000 bytes \(max_upload_bytes\)"):
            fetch("image", chunked, "image", limits, AllowList(["localhost"]))


def test_a_slow_server_is_cut_off_at_the_time_limit():
    with file_server() as files:
        url = files.add("/slow", b"x" * 2000, "image/png", stall_s=30)
        started = time.monotonic()
        with pytest.raises(TooLarge, match=r"not fetched within 1 s \(max_url_seconds\)"):
            fetch("image", url, "image", replace(Limits(), max_url_seconds=1), AllowList(["localhost"]))
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("drip_headers", [False, True])
def test_a_server_that_drips_is_cut_off_at_the_total_deadline(drip_headers):
    """Headers (or not even they), then a byte a second: each read is quick, the whole never comes."""
    with file_server() as files:
        url = files.add("/drip.png", png(8, 8)[:60], "image/png", drip_s=1, drip_headers=drip_headers)
        started = time.monotonic()
        limits = replace(Limits(), max_url_seconds=2, min_url_bytes_per_s=1)
        with pytest.raises(TooLarge, match=r"^image: .* was not fetched within 2 s \(max_url_seconds\)"):
            fetch("image", url, "image", limits, AllowList(["localhost"]))
        assert time.monotonic() - started < 3


def test_a_server_below_the_minimum_rate_is_cut_off():
    with file_server() as files:
        url = files.add("/drip.png", png(8, 8)[:60], "image/png", drip_s=0.5)
        started = time.monotonic()
        limits = replace(Limits(), max_url_seconds=60, min_url_bytes_per_s=1024)
        with pytest.raises(TooLarge, match=r"came at fewer than 1024 bytes/s over 5 s .*, slower than the limit of 1024 "
                                           r"bytes/s \(min_url_bytes_per_s\)"):
            fetch("image", url, "image", limits, AllowList(["localhost"]))
        assert 4.5 < time.monotonic() - started < 6.5
        fast = files.add("/fast.png", png(64, 64), "image/png")
        assert fetch("image", fast, "image", limits, AllowList(["localhost"]))[0] == png(64, 64)


def test_a_declared_type_of_another_kind_and_a_failed_answer_are_refused():
    allow = AllowList(["localhost"])
    with file_server() as files:
        page = files.add("/page", b"<html></html>", "text/html; charset=utf-8")
        with pytest.raises(InvalidRequest, match=r"^image: .* is text/html; a image input takes image/\*"):
            fetch("image", page, "image", Limits(), allow)
        video = files.add("/clip.mp4", b"....", "video/mp4")
        assert fetch("audio", video, "audio", Limits(), allow) == (b"....", ".mp4")  # audio takes a video's sound
        with pytest.raises(InvalidRequest, match="is video/mp4; a image input takes"):
            fetch("image", video, "image", Limits(), allow)
        with pytest.raises(InvalidRequest, match="answered HTTP 404"):
            fetch("image", files.url("/missing"), "image", Limits(), allow)
