"""The web playground's static files (comfybento/front/static/): the page at /, its script and style under /playground/.

BentoML serves its own Swagger UI at /; OpenAPIMiddleware answers these paths first (the API docs move to /docs).
The page needs no API key: it reads /docs.json, and its calls to the API send the key the user gives it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

PLAYGROUND_DIR = Path(__file__).resolve().parent / "static"
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/playground/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/playground/style.css": ("style.css", "text/css; charset=utf-8"),
}


def is_playground_path(path: str) -> bool:
    return path in FILES


@cache
def playground_file(path: str) -> tuple[bytes, str]:
    """(body, content type) of one of the playground's files, read once."""
    name, media = FILES[path]
    return (PLAYGROUND_DIR / name).read_bytes(), media
