"""The folder scan: symbolic links followed, loops and repeats guarded, skipped entries counted.

Only file names and links matter to the scan (no mesh is parsed), so the
"meshes" here are empty files with a mesh suffix.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftspl.engine.errors import InputFileError, UsageError
from ftspl.engine.loading.scan import scan, scan_tree


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture()
def library(tmp_path: Path) -> Path:
    """real/{chairs,tables}/ with meshes, and gallery/ made only of links to them."""
    real = tmp_path / "real"
    touch(real / "chairs" / "a.obj")
    touch(real / "chairs" / "b.stl")
    touch(real / "tables" / "t.ply")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / "chair").symlink_to(real / "chairs", target_is_directory=True)
    (gallery / "table").symlink_to(real / "tables", target_is_directory=True)
    return gallery


def test_links_to_class_folders_are_followed_and_labelled_by_the_link(library: Path, tmp_path: Path) -> None:
    found = scan(library)
    real = (tmp_path / "real").resolve()
    assert [(s.path, s.kind, s.label) for s in found] == [
        (real / "chairs" / "a.obj", "mesh", "chair"),
        (real / "chairs" / "b.stl", "mesh", "chair"),
        (real / "tables" / "t.ply", "mesh", "table"),
    ]
    assert [s.label for s in scan(library, "parent")] == ["chair", "chair", "table"]


def test_a_loop_ends_and_each_folder_is_walked_once(library: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "chairs" / "up").symlink_to(real, target_is_directory=True)  # chairs/up/chairs/up/...
    (library / "self").symlink_to(library, target_is_directory=True)
    result = scan_tree(library)
    assert len(result.sources) == 3
    # up -> real is new, real's chairs and tables are repeats; self is a repeat of the root
    assert result.skipped["folders reached again (a link loop or a second link)"] == 3
    # the direct route wins: t.ply keeps the label 'table', not 'chair' (via chair/up/tables)
    assert {s.path.name: s.label for s in result.sources}["t.ply"] == "table"


def test_a_file_reached_twice_is_one_shape(library: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    (library / "chair_again").symlink_to(real / "chairs", target_is_directory=True)
    (library / "chair" / "a_link.obj").symlink_to(real / "chairs" / "a.obj")  # inside chairs: same file
    result = scan_tree(library)
    paths = [s.path for s in result.sources]
    assert len(paths) == len(set(paths)) == 3
    assert {s.label for s in result.sources if s.path.name == "a.obj"} == {"chair"}
    assert result.skipped["files reached again through a link (one shape each)"] == 1


def test_a_link_to_a_file_is_a_shape_keyed_by_its_target(tmp_path: Path) -> None:
    target = touch(tmp_path / "elsewhere" / "lamp.off")
    root = tmp_path / "g"
    (root / "lamps").mkdir(parents=True)
    (root / "lamps" / "my-lamp.off").symlink_to(target)
    (found,) = scan(root)
    assert found.path == target.resolve() and found.label == "lamps"
    # the root itself may be a link to a file, or to a folder
    (tmp_path / "file-link.off").symlink_to(target)
    assert scan(tmp_path / "file-link.off")[0].path == target.resolve()
    (tmp_path / "dir-link").symlink_to(root, target_is_directory=True)
    assert [s.label for s in scan(tmp_path / "dir-link")] == ["lamps"]


def test_nothing_found_says_what_was_skipped(tmp_path: Path) -> None:
    root = tmp_path / "g"
    (root / "x").mkdir(parents=True)
    (root / "x" / "gone.obj").symlink_to(tmp_path / "missing.obj")
    (root / "x" / "gone2.ply").symlink_to(tmp_path / "missing.ply")
    (root / "loop.obj").symlink_to(root / "loop.obj")
    touch(root / "notes.txt")
    touch(root / "x" / "photo.jpg")
    touch(root / ".hidden.obj")
    with pytest.raises(InputFileError) as err:
        scan(root)
    msg = str(err.value)
    assert msg.startswith(f"{root}: no meshes (") and "or view folders found" in msg
    assert "skipped 6 entries: 2 dangling links, 2 other files (.jpg, .txt), 1 hidden file, 1 link that loops" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="the folder is empty"):
        scan(tmp_path / "empty")


def test_missing_root_and_bad_label_mode_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or folder"):
        scan(tmp_path / "nowhere")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="no such file or folder"):
        scan(tmp_path / "dangling")
    with pytest.raises(UsageError, match="valid: none, parent, top"):
        scan(tmp_path, "bogus")


def test_view_folders_through_links(tmp_path: Path) -> None:
    """A link to a folder of 12 views is one 'views' shape, labelled by the link's class folder."""
    views = tmp_path / "renders" / "chair_0001"
    for v in range(12):
        touch(views / f"chair_0001_{v + 1:03d}.png")
    root = tmp_path / "g"
    (root / "chair").mkdir(parents=True)
    (root / "chair" / "c1").symlink_to(views, target_is_directory=True)
    (found,) = scan(root)
    assert (found.path, found.kind, found.label) == (views.resolve(), "views", "chair")


def test_unreadable_folder_is_counted(tmp_path: Path, monkeypatch) -> None:
    """A folder that cannot be listed (chmod 0; faked, since root reads every folder) is counted."""
    locked = tmp_path / "g" / "locked"
    touch(locked / "a.obj")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = scan_tree(tmp_path / "g")
    assert not result.sources and result.skipped["unreadable entries"] == 1
