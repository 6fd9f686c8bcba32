"""disks/safefs: how root reads and removes what a user may have planted (no root needed for these)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from slurm_vm.disks import safefs


@pytest.fixture
def planted(tmp_path):
    d = tmp_path
    (d / "plain").write_bytes(b"1234\n")
    (d / "big").write_bytes(b"7" * 100000)
    os.mkfifo(d / "fifo")
    os.symlink(d / "plain", d / "link")
    os.link(d / "plain", d / "plain-too")   # `plain` now has two names
    (d / "solo").write_bytes(b"42\n")
    os.mkdir(d / "dir")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock"))
    yield d
    sock.close()


def test_read_user_file_reads_only_a_lone_regular_file(planted):
    read = safefs.read_user_file
    assert read(str(planted / "solo"), 64) == b"42\n"
    assert read(str(planted / "solo"), 64, owner=os.getuid()) == b"42\n"
    assert read(str(planted / "solo"), 64, owner=os.getuid() + 1) is None
    assert read(str(planted / "big"), 10) == b"7" * 10
    started = time.monotonic()
    for name in ("fifo", "link", "plain", "plain-too", "dir", "sock", "missing"):
        assert read(str(planted / name), 64) is None, name
    assert time.monotonic() - started < 5   # the FIFO has no writer: opening it must not wait


def deep_tree(top: str, depth: int) -> None:
    os.mkdir(top)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(depth):
        os.mkfifo("f", dir_fd=fd)
        os.symlink("/", "up", dir_fd=fd)
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)


def test_remove_tree_of_any_depth_with_few_open_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(safefs, "MAX_OPEN_LEVELS", 4)   # the spill-up path, on a small tree
    top = str(tmp_path / "t")
    deep_tree(top, 300)
    os.makedirs(os.path.join(top, "locked", "inner"))
    os.chmod(os.path.join(top, "locked", "inner"), 0o700)
    assert safefs.remove_tree_safely(top) is True
    assert not os.path.lexists(top)
    assert os.path.isdir("/")   # the links to / were removed, never followed


def test_remove_tree_past_python_recursion_limit(tmp_path):
    top = str(tmp_path / "t")
    deep_tree(top, 1500)
    assert safefs.remove_tree_safely(top) is True
    assert not os.path.lexists(top)


def test_remove_tree_stops_at_its_deadline_and_goes_on_later(tmp_path):
    top = tmp_path / "t"
    top.mkdir()
    for i in range(600):
        (top / f"f{i}").write_bytes(b"")
    assert safefs.remove_tree_safely(str(top), deadline=time.monotonic() - 1) is False
    assert top.exists()
    assert safefs.remove_tree_safely(str(top), deadline=time.monotonic() + 60) is True
    assert not top.exists()


def test_remove_tree_of_a_link_removes_the_link_only(tmp_path):
    target = tmp_path / "keep"
    target.mkdir()
    (target / "file").write_bytes(b"x")
    os.symlink(target, tmp_path / "link")
    assert safefs.remove_tree_safely(str(tmp_path / "link")) is True
    assert (target / "file").exists() and not os.path.lexists(tmp_path / "link")
