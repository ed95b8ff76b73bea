"""The command line: one line (no traceback) when the service is down or answers an error; help with defaults."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from comfybento.__main__ import make_parser
from tests.helpers import ROOT, free_port


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfybento", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **(env or {})})


def _prompts(tmp_path: Path) -> Path:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    return prompts


def test_batch_with_the_service_down_prints_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = _cli("batch", str(_prompts(tmp_path)), "--workflow", "txt2img", "--url", url, cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert url in lines[0] and "connection refused" in lines[0] and "COMFYBENTO_URL" in lines[0] and "--url" in lines[0]


def test_batch_with_an_unknown_host_names_it(tmp_path):
    done = _cli("batch", str(_prompts(tmp_path)), "--workflow", "txt2img", cwd=tmp_path,
                env={"COMFYBENTO_URL": "http://no-such-host.invalid:3000"})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach http://no-such-host.invalid:3000: "), done.stderr


class _Refusing(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.dumps({"error": "no API key (Authorization: Bearer <key>)", "error_kind": "unauthorized",
                           "request_id": "r1"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_batch_answered_with_an_error_prints_its_status_and_message(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        done = _cli("batch", str(_prompts(tmp_path)), "--workflow", "txt2img", "--url", url, cwd=tmp_path)
    finally:
        server.shutdown()
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "HTTP 401" in lines[0] and "no API key" in lines[0] and f"{url}/jobs" in lines[0]


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _subparsers(child)
    return found


def test_every_option_of_every_subcommand_shows_its_default():
    parsers = _subparsers(make_parser())
    assert {"python -m comfybento models fetch", "python -m comfybento batch", "python -m comfybento keys add"} <= {
        prog for prog, _ in parsers}
    for prog, parser in parsers:
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            assert text and "default:" in text, f"{prog} {action.option_strings[0]}: {text!r}"


def test_models_fetch_help_is_its_own(tmp_path):
    done = _cli("models", "fetch", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m comfybento models fetch"), done.stdout
    assert "fetched" not in done.stdout and not done.stderr
