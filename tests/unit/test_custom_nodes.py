"""custom_nodes/nodes.lock and its installer (scripts/setup's step), against a real local git repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfybento.packs.inputs import stage_inputs
from comfybento.packs.nodes import PIN_FILE, NodeManifestError, PinnedNode, install_nodes, node_name, parse_manifest, write_manifest
from tests.cpack_packs import git, node_repo
from tests.helpers import ROOT


@pytest.fixture
def repo(tmp_path: Path) -> tuple[str, list[str]]:
    return node_repo(tmp_path / "remote")


def _setup_step(custom_nodes: Path) -> subprocess.CompletedProcess[str]:
    """What scripts/setup runs: `python -m comfybento nodes install`, the folder from COMFYBENTO_CUSTOM_NODES."""
    env = {**os.environ, "COMFYBENTO_CUSTOM_NODES": str(custom_nodes)}
    return subprocess.run([sys.executable, "-m", "comfybento", "nodes", "install"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_setup_step_clones_the_pinned_commit_and_a_rerun_keeps_it(tmp_path, repo):
    url, (first, _second) = repo
    custom = tmp_path / "project" / "custom_nodes"
    write_manifest(custom / "nodes.lock", (PinnedNode("ComfyUI-Tiny", url, first),))
    done = _setup_step(custom)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["installed", "ComfyUI-Tiny"]
    node = custom / "ComfyUI-Tiny"
    assert (node / "__init__.py").read_text().startswith("VERSION = 1")  # the pinned commit, not the branch head
    assert git("rev-parse", "HEAD", cwd=node) == first
    assert (node / PIN_FILE).read_text() == f"{url} {first}\n"
    again = _setup_step(custom)
    assert again.returncode == 0 and again.stdout.split() == ["ok", "ComfyUI-Tiny"]


def test_a_changed_pin_reinstalls_and_a_short_commit_works(tmp_path, repo):
    url, (first, second) = repo
    custom = tmp_path / "custom_nodes"
    write_manifest(custom / "nodes.lock", (PinnedNode("ComfyUI-Tiny", url, first),))
    assert install_nodes(custom) == {"ComfyUI-Tiny": "installed"}
    write_manifest(custom / "nodes.lock", (PinnedNode("ComfyUI-Tiny", url, second[:12]),))
    assert install_nodes(custom) == {"ComfyUI-Tiny": "installed"}
    assert (custom / "ComfyUI-Tiny" / "__init__.py").read_text().startswith("VERSION = 2")
    assert not [p for p in custom.iterdir() if p.name.startswith(".")]  # no clone left behind


def test_a_folder_the_installer_did_not_make_is_never_touched(tmp_path, repo):
    url, (first, _) = repo
    custom = tmp_path / "custom_nodes"
    (custom / "ComfyUI-Tiny").mkdir(parents=True)
    (custom / "ComfyUI-Tiny" / "mine.py").write_text("# the user's own\n")
    write_manifest(custom / "nodes.lock", (PinnedNode("ComfyUI-Tiny", url, first),))
    with pytest.raises(NodeManifestError, match=r"exists and was not installed from nodes\.lock"):
        install_nodes(custom)
    assert (custom / "ComfyUI-Tiny" / "mine.py").exists()


def test_an_unknown_commit_and_a_missing_repository_fail_naming_the_node(tmp_path, repo):
    url, _ = repo
    custom = tmp_path / "custom_nodes"
    write_manifest(custom / "nodes.lock", (PinnedNode("ComfyUI-Tiny", url, "f" * 40),))
    with pytest.raises(NodeManifestError, match=r"custom node ComfyUI-Tiny: `git fetch --quiet origin f{40}` failed"):
        install_nodes(custom)
    write_manifest(custom / "nodes.lock", (PinnedNode("Gone", str(tmp_path / "nowhere.git"), "f" * 40),))
    done = _setup_step(custom)
    assert done.returncode == 2 and "custom node Gone: `git clone" in done.stderr
    assert sorted(p.name for p in custom.iterdir()) == ["nodes.lock"]


def test_no_manifest_installs_nothing(tmp_path):
    assert install_nodes(tmp_path / "custom_nodes") == {}


@pytest.mark.parametrize(("text", "message"), [
    ('[[nodes]]\nname = "x"\nurl = "https://a/x.git"\n', "expected a table with string name, url and commit"),
    ('[[nodes]]\nname = "../x"\nurl = "https://a/x.git"\ncommit = "abcdef1"\n', "folder name '../x'"),
    ('[[nodes]]\nname = "x"\nurl = "--upload-pack=evil"\ncommit = "abcdef1"\n', "must be a git URL"),
    ('[[nodes]]\nname = "x"\nurl = "https://a/x.git"\ncommit = "main"\n', "must be a git commit hash"),
    ('[[nodes]]\nname = "x"\nurl = "https://a/x.git"\ncommit = "abcdef1"\n' * 2, r"listed more than once: \['x'\]"),
])
def test_a_malformed_manifest_is_refused(tmp_path, text, message):
    (tmp_path / "nodes.lock").write_text(text)
    with pytest.raises(NodeManifestError, match=message):
        parse_manifest(tmp_path / "nodes.lock")


@pytest.mark.parametrize(("url", "name"), [
    ("https://github.com/a/ComfyUI-Foo.git", "ComfyUI-Foo"), ("https://github.com/a/ComfyUI-Foo/", "ComfyUI-Foo"),
    ("git@github.com:a/ComfyUI_bar.git", "ComfyUI_bar"), ("/srv/git/node.v2.git", "node.v2"),
])
def test_node_folder_names_from_urls(url, name):
    assert node_name(url) == name


def test_staged_inputs_are_copied_once_and_refreshed_when_changed(tmp_path):
    src, dest = tmp_path / "inputs", tmp_path / "comfy-input"
    (src / "sub").mkdir(parents=True)
    (src / "example.png").write_bytes(b"one")
    (src / "sub" / "m.png").write_bytes(b"mask")
    (src / ".DS_Store").write_bytes(b"junk")
    assert stage_inputs(src, dest) == ["example.png", "sub/m.png"]
    assert stage_inputs(src, dest) == []
    (src / "example.png").write_bytes(b"two")
    assert stage_inputs(src, dest) == ["example.png"] and (dest / "example.png").read_bytes() == b"two"
    assert not (dest / ".DS_Store").exists()
    assert stage_inputs(tmp_path / "absent", dest) == []
