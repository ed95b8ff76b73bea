"""Command line: `python -m comfybento models fetch|verify`, `... keys add NAME`, `... import PACK.cpack.zip`,
`... nodes install`, `... openapi` and `python -m comfybento batch ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

from comfybento.config import get_settings
from comfybento.errors import ComfyBentoError, ConfigError


def _models(args: argparse.Namespace) -> int:
    from comfybento.models.fetch import fetch_all, transfer_limits
    from comfybento.models.lock import parse_lock, verify_all
    from comfybento.runtime.generators import model_generators

    settings = get_settings()
    lock = parse_lock(settings.models_lock)
    if args.action == "fetch":  # from `models fetch` (its own subcommand)
        if any("generator" in e.source for e in lock.entries):
            from comfybento.runtime.bootstrap import bootstrap

            bootstrap(settings)
        for path, state in fetch_all(lock, settings.models_dir, transfer_limits(settings), model_generators()).items():
            print(f"{state:8} {path}")
        return 0
    problems = verify_all(lock, settings.models_dir)
    for entry in lock.entries:
        print(f"{'BAD' if any(p.startswith(entry.path + ':') for p in problems) else 'ok':4} {entry.path}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def _object_info(args: argparse.Namespace) -> int:
    """Import ComfyUI here and write its node definitions (the snapshot the web tier reads)."""
    from pathlib import Path

    from comfybento.runtime.bootstrap import bootstrap, comfy_version
    from comfybento.runtime.registry import extension_web_dirs, object_info
    from comfybento.workflows.node_info import write_snapshot

    bootstrap(get_settings())
    write_snapshot(Path(args.out), object_info(), comfy_version(), extension_web_dirs())
    return 0


def _openapi(args: argparse.Namespace) -> int:
    """The OpenAPI document the service serves at /docs.json, built without serving (clients are generated from it)."""
    import json
    from pathlib import Path

    from comfybento.engine.service import make_engine_service
    from comfybento.front.app import make_front_service
    from comfybento.front.openapi import fix_openapi
    from comfybento.runtime.devices import engine_resources
    from comfybento.workflows.project import get_project

    project = get_project()
    front = make_front_service(project, [make_engine_service(project, engine_resources(project.settings))])
    text = json.dumps(fix_openapi(front.openapi_spec.asdict(), project.catalog,
                                  max_job_items=project.settings.job_max_items, aliases=project.aliases), indent=2, ensure_ascii=False) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _keys(args: argparse.Namespace) -> int:
    """Make a key, append its hash to the keys file, and print the key (the only time it is shown)."""
    from pathlib import Path

    from comfybento.config import keys_file_from_env
    from comfybento.front.keys import ApiKey, append_key, hash_key, new_key

    path = Path(args.file).expanduser().resolve() if args.file else keys_file_from_env()
    if path is None:
        raise ConfigError("no keys file: pass --file PATH or set COMFYBENTO_API_KEYS_FILE")
    key = new_key()
    try:
        entry = ApiKey(name=args.name, sha256=hash_key(key), rate_per_min=args.rate_per_min, images_per_day=args.images_per_day,
                       operator=args.operator)
    except ValidationError as exc:
        raise ConfigError("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())) from None
    append_key(path, entry)
    print(key)
    print(f"added key {entry.name!r} to {path}; the key above is shown only now (the file keeps its sha256)", file=sys.stderr)
    return 0


def _add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys: add one to the keys file", **FORMAT)
    actions = keys.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="make a new key, print it once and append its sha256 to the keys file", **FORMAT)
    add.add_argument("name", help="unique name of the key (labels its metrics and limits)")
    add.add_argument("--rate-per-min", type=int, default=None, help="requests per minute (default: unlimited)")
    add.add_argument("--images-per-day", type=int, default=None, help="images per day (default: unlimited)")
    add.add_argument("--operator", action="store_true", help="the key sees and manages every key's jobs, prompts and files")
    add.add_argument("--file", default=None, help="keys file (default: COMFYBENTO_API_KEYS_FILE)")
    add.set_defaults(func=_keys)


def _import(args: argparse.Namespace) -> int:
    """Import a comfy-pack pack: workflow, models.lock entries, input files, pinned custom nodes."""
    from pathlib import Path

    from comfybento.packs.importer import ProjectPaths, import_pack

    sources = {}
    for item in args.source:
        path, sep, url = item.partition("=")
        if not sep or not url.startswith("https://"):
            raise ConfigError(f"--source {item!r}: expected MODEL_PATH=https://URL, e.g. checkpoints/x.safetensors=https://...")
        sources[path] = {"url": url}
    result = import_pack(Path(args.pack), ProjectPaths.from_settings(get_settings()), args.name, args.force, sources)
    print(f"{'workflow':12} {result.workflow} (POST /{result.name})")
    for label, items in (("model", result.models_added), ("model (kept)", result.models_kept), ("node", result.nodes_added),
                         ("node (kept)", result.nodes_kept), ("input", result.inputs_written), ("input (kept)", result.inputs_kept)):
        for item in items:
            print(f"{label:12} {item}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print("next: ./scripts/setup (installs the pinned custom nodes and fetches the models)", file=sys.stderr)
    return 0


def _nodes(args: argparse.Namespace) -> int:
    """Clone every custom node pinned in custom_nodes/nodes.lock at its commit."""
    from pathlib import Path

    from comfybento.packs.nodes import install_nodes

    folder = Path(args.dir).resolve() if args.dir else get_settings().custom_nodes_dir
    for name, state in install_nodes(folder).items():
        print(f"{state:9} {name}")
    return 0


def _add_pack_parsers(sub: Any) -> None:
    imp = sub.add_parser("import", help="import a comfy-pack pack (.cpack.zip): workflow, models.lock, input files, custom nodes",
                         **FORMAT)
    imp.add_argument("pack", help="the .cpack.zip file")
    imp.add_argument("--name", default=None, help="endpoint name (default: from the pack's file name)")
    imp.add_argument("--force", action="store_true", help="overwrite workflows/<name>.json and differing input files")
    imp.add_argument("--source", action="append", default=[], metavar="MODEL_PATH=URL",
                     help="download URL for a model the pack gives no source for (repeatable; default: none)")
    imp.set_defaults(func=_import)
    nodes = sub.add_parser("nodes", help="install the custom nodes pinned in custom_nodes/nodes.lock", **FORMAT)
    nodes.add_argument("action", choices=["install"])
    nodes.add_argument("--dir", default=None, help="custom nodes folder holding nodes.lock (default: COMFYBENTO_CUSTOM_NODES)")
    nodes.set_defaults(func=_nodes)


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default: argparse's "(default: X)" unless the help already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "default:" in text else super()._get_help_string(action)


FORMAT: dict[str, Any] = {"formatter_class": _HelpWithDefaults}  # every parser and subparser


def _add_models_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="fetch or verify the files in models.lock", **FORMAT)
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("fetch", help="download every file in models.lock that is missing or differs (verified by sha256)",
                       description="Download every file in models.lock that is missing or differs, and verify its sha256 "
                                   "(COMFYBENTO_MODELS_LOCK, COMFYBENTO_MODELS).", **FORMAT).set_defaults(func=_models)
    actions.add_parser("verify", help="check every file in models.lock (size and sha256); exit 1 if one is missing or bad",
                       description="Check every file in models.lock against its size and sha256.", **FORMAT).set_defaults(func=_models)


def make_parser() -> argparse.ArgumentParser:
    """The command line's parser: every subcommand has its own help, every option its default."""
    parser = argparse.ArgumentParser(prog="python -m comfybento", **FORMAT)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_models_parser(sub)
    info = sub.add_parser("object-info", help="write ComfyUI's node definitions to a JSON file (used by the web tier)", **FORMAT)
    info.add_argument("--out", required=True, help="the JSON file to write (default: none, required)")
    info.set_defaults(func=_object_info)
    spec = sub.add_parser("openapi", help="write the service's OpenAPI document (as served at /docs.json) without serving", **FORMAT)
    spec.add_argument("--out", default=None, help="file to write (default: stdout)")
    spec.set_defaults(func=_openapi)
    _add_keys_parser(sub)
    _add_pack_parsers(sub)
    from comfybento.front.jobs.cli import add_parser

    add_parser(sub, **FORMAT)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except ComfyBentoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
