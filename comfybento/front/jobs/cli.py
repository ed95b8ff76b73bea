"""`python -m comfybento batch`: submit a file of prompts as a job, show progress, download images.

Rows come from a .txt file (one prompt per line), a .csv file (a header of field
names) or a .jsonl file (one JSON object per line). Running the same command
again resumes: the job is found again by its idempotency key, and images already
in the output folder are not downloaded twice.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from comfybento.front.jobs.records import TERMINAL_STATES
from comfybento.outputs.media import extension_for


def read_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if suffix == ".csv":
        return [{k: _coerce(v) for k, v in row.items() if v != ""} for row in csv.DictReader(text.splitlines())]
    return [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]


def _coerce(value: str) -> Any:
    try:
        return json.loads(value) if value.strip()[:1] in "-0123456789tfn[{" else value
    except json.JSONDecodeError:
        return value


def submit(http: httpx.Client, workflow: str, rows: list[dict[str, Any]], priority: int) -> dict[str, Any]:
    key = hashlib.sha256(json.dumps([workflow, rows, priority], sort_keys=True).encode()).hexdigest()[:40]
    resp = http.post("/jobs", json={"workflow": workflow, "items": rows, "priority": priority, "idempotency_key": f"cli-{key}"})
    if resp.status_code >= 400:
        items = _json_of(resp).get("items") or []
        lines = [f"submit failed: {_status_line(resp)}"] + [f"  item {e['index']}: {e['field']}: {e['message']}" for e in items[:50]]
        raise SystemExit("\n".join(lines))
    return dict(resp.json())


def _json_of(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _status_line(resp: httpx.Response) -> str:
    """`HTTP 404 from GET http://...: the error's message` (the service's JSON `error`, else the body's first line)."""
    error = _json_of(resp).get("error")
    message = error if isinstance(error, str) else (resp.text.strip().splitlines() or [resp.reason_phrase])[0][:300]
    return f"HTTP {resp.status_code} from {resp.request.method} {resp.request.url}: {message}"


def explain(exc: httpx.HTTPError, url: str) -> str:
    """One line for a failed call: what could not be reached and what to check, or the status and the service's error."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"error: {_status_line(exc.response)}"
    if isinstance(exc, httpx.TimeoutException):
        reason = "timed out"
    else:
        reason = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    hint = "is `bentoml serve` running there? set --url or COMFYBENTO_URL"
    return f"error: cannot reach {url}: {reason.lower() if reason else 'failed'} — {hint}"


def download_finished(http: httpx.Client, job_id: str, out: Path) -> tuple[int, int, str]:
    """Download every finished item's outputs not yet in `out`; returns (done, failed, job state)."""
    done = failed = offset = 0
    state = "queued"
    while True:
        page = http.get(f"/jobs/{job_id}/results", params={"offset": offset, "limit": 500}).raise_for_status().json()
        state = page["state"]
        for item in page["items"]:
            if item["state"] == "succeeded":
                for o in item["outputs"]:
                    ext = extension_for(o.get("media_type", "image/png"))
                    target = out / f"{item['index']:05d}-{o['output']}-{o['index']}.{ext}"
                    if not target.exists():
                        data = http.get(o["url"]).raise_for_status().content
                        target.with_suffix(".part").write_bytes(data)
                        target.with_suffix(".part").replace(target)
                done += 1
            elif item["state"] in ("failed", "cancelled"):
                failed += 1
        offset += len(page["items"])
        if offset >= page["total"] or not page["items"]:
            return done, failed, state


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one log line per download would bury the progress bar
    rows = read_rows(Path(args.file))
    out = Path(args.out or f"{Path(args.file).stem}-images")
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, rows, out)
    except httpx.HTTPError as exc:  # the service is down, unreachable or answered an error: one line, no traceback
        print(explain(exc, args.url), file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, rows: list[dict[str, Any]], out: Path) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=120) as http:
        job = submit(http, args.workflow, rows, args.priority)
        (out / ".comfybento-job.json").write_text(json.dumps({"job_id": job["id"], "url": args.url}))
        columns = (TextColumn(f"job {job['id'][:8]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
        with Progress(*columns, disable=args.quiet) as progress:
            task = progress.add_task("items", total=len(rows), note="")
            while True:
                done, failed, state = download_finished(http, job["id"], out)
                progress.update(task, completed=done + failed, note=f"{failed} failed" if failed else "")
                if state in TERMINAL_STATES:
                    break
                time.sleep(args.poll)
    print(f"job {job['id']}: {state}; {done} items downloaded to {out}, {failed} failed")
    return 0 if state == "succeeded" else 1


def add_parser(sub: Any, **options: Any) -> None:
    p = sub.add_parser("batch", **options, help="submit a file of prompts/rows as a batch job and download the images")
    p.add_argument("file", help="prompts.txt (one prompt per line), rows.csv or rows.jsonl")
    p.add_argument("--workflow", required=True, help="the workflow to run each row through (default: none, required)")
    p.add_argument("--url", default=os.environ.get("COMFYBENTO_URL", "http://localhost:3000"),
                   help="the service's base URL (default: COMFYBENTO_URL, else http://localhost:3000)")
    p.add_argument("--api-key", default=os.environ.get("COMFYBENTO_API_KEY", ""),
                   help="API key sent as Authorization: Bearer (default: COMFYBENTO_API_KEY, else none)")
    p.add_argument("--out", help="output folder (default: <file stem>-images)")
    p.add_argument("--priority", type=int, default=0, help="the job's priority, higher first")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


