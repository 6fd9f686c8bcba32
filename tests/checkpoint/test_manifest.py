"""The checkpoint manifest and store: written last and atomically, refused with a reason when it must not be used."""

from __future__ import annotations

import json
import os
import threading

import pytest

from slurm_vm.checkpoint import store
from slurm_vm.checkpoint.manifest import (MANIFEST_NAME, CheckpointRefused, Expected, FileEntry, Manifest,
                                          mismatches, parse_manifest, read_manifest, sha256_of, verify_files,
                                          version_mismatch, write_manifest)

UID = os.getuid()
MACS = ("52:54:00:00:00:01",)


def expected(**over) -> Expected:
    base = dict(job_id=42, uid=UID, vmm="qemu", accelerator="tcg", cpus=1, memory_bytes=256 << 20, macs=MACS,
                base_image="/img/base.qcow2")
    return Expected(**{**base, **over})


def save(user_dir: str, job_id: int = 42, uid: int = UID, payload: bytes = b"ram" * 1000) -> str:
    """A checkpoint as the launcher writes one: files first, the manifest last."""
    path = store.new_checkpoint_dir(store.job_dir(user_dir, job_id), UID)
    entries = []
    for name, data in (("state.bin", payload), ("overlay.qcow2", b"disk" * 500)):
        with open(os.path.join(path, name), "wb") as fh:
            fh.write(data)
        size, digest = sha256_of(os.path.join(path, name))
        entries.append(FileEntry(name, size, digest))
    manifest = Manifest(job_id=job_id, uid=uid, user="u", restart_count=0, reason="preempt", created=1.0,
                        image="tiny", base_image="/img/base.qcow2", base_size=1 << 26, vmm="qemu",
                        vmm_version="7.2.15", accelerator="tcg", cpus=1, memory_bytes=256 << 20, macs=MACS,
                        instance_id="slurm-vm-c-42-0-0", compressed=False, states=(entries[0],), overlay=entries[1])
    write_manifest(path, manifest)
    return path


def test_round_trip_and_atomic_write(tmp_path):
    path = save(str(tmp_path))
    assert sorted(os.listdir(path)) == ["manifest.json", "overlay.qcow2", "state.bin"]   # no temporary left
    manifest = read_manifest(path, UID)
    assert manifest.job_id == 42 and manifest.macs == MACS and manifest.total_size == 3000 + 2000
    found, why = store.find_for_restore(str(tmp_path), expected())
    assert found is not None and found.path == path and why == ""


def test_no_checkpoint_at_all_is_not_an_error(tmp_path):
    assert store.find_for_restore(str(tmp_path), expected()) == (None, "")


def test_bit_flip_is_refused_naming_the_file(tmp_path):
    path = save(str(tmp_path))
    with open(os.path.join(path, "state.bin"), "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0x01]))
    found, why = store.find_for_restore(str(tmp_path), expected())
    assert found is None and "state.bin does not match its sha256" in why


def test_truncated_file_and_damaged_manifest_are_refused(tmp_path):
    path = save(str(tmp_path))
    os.truncate(os.path.join(path, "overlay.qcow2"), 10)
    assert "overlay.qcow2 has 10 bytes" in store.find_for_restore(str(tmp_path), expected())[1]
    with open(os.path.join(path, MANIFEST_NAME), "r+b") as fh:
        fh.write(b"}")
    assert "not JSON" in store.find_for_restore(str(tmp_path), expected())[1]


def test_foreign_user_and_other_job_are_refused(tmp_path):
    save(str(tmp_path), uid=UID + 1000)
    found, why = store.find_for_restore(str(tmp_path), expected())
    assert found is None and f"belongs to uid {UID + 1000}" in why
    other = tmp_path / "other"
    path = save(str(other), job_id=42)
    os.rename(path, store.new_checkpoint_dir(store.job_dir(str(other), 43), UID))   # copied under another job
    found, why = store.find_for_restore(str(other), expected(job_id=43))
    assert found is None and "saved by job 42, not job 43" in why


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_files_of_another_owner_are_refused(tmp_path):
    path = save(str(tmp_path))
    os.chown(os.path.join(path, "state.bin"), 12345, 12345)
    assert "owned by uid 12345" in store.find_for_restore(str(tmp_path), expected())[1]
    os.chown(os.path.join(path, MANIFEST_NAME), 12345, 12345)
    assert "manifest is owned by uid 12345" in store.find_for_restore(str(tmp_path), expected())[1]


def test_a_fifo_or_link_as_manifest_is_refused_without_waiting(tmp_path):
    path = save(str(tmp_path))
    manifest = os.path.join(path, MANIFEST_NAME)
    os.unlink(manifest)
    os.mkfifo(manifest, 0o600)        # opening it for reading would wait for a writer forever
    result: list = []
    reader = threading.Thread(target=lambda: result.append(store.find_for_restore(str(tmp_path), expected())),
                              daemon=True)
    reader.start()
    reader.join(10)
    assert result and "manifest is not a regular file" in result[0][1]
    os.unlink(manifest)
    os.symlink("/etc/passwd", manifest)
    assert "cannot read the manifest" in store.find_for_restore(str(tmp_path), expected())[1]


def test_interrupted_save_leaves_the_previous_checkpoint_in_use(tmp_path):
    first = save(str(tmp_path))
    unfinished = store.new_checkpoint_dir(store.job_dir(str(tmp_path), 42), UID)
    with open(os.path.join(unfinished, "state.bin"), "wb") as fh:
        fh.write(b"half a stream")
    found, _ = store.find_for_restore(str(tmp_path), expected())
    assert found is not None and found.path == first


def test_missing_manifest_only_is_refused(tmp_path):
    unfinished = store.new_checkpoint_dir(store.job_dir(str(tmp_path), 42), UID)
    found, why = store.find_for_restore(str(tmp_path), expected())
    assert found is None and "no manifest" in why and os.path.basename(unfinished) in why


def test_shape_mismatch_lists_every_reason(tmp_path):
    manifest = read_manifest(save(str(tmp_path)), UID)
    reasons = mismatches(manifest, expected(cpus=2, memory_bytes=512 << 20, macs=("52:54:00:00:00:02",)))
    assert len(reasons) == 3 and any("vCPU count differs (saved 1, now 2)" in r for r in reasons)
    assert version_mismatch(manifest, "qemu", "7.2.15") is None
    assert "saved by qemu 7.2.15, this node runs qemu 10.0.2" in version_mismatch(manifest, "qemu", "10.0.2")


@pytest.mark.parametrize("change", [
    lambda d: d.pop("uid"),
    lambda d: d.update(extra=1),
    lambda d: d.update(uid="1000"),
    lambda d: d.update(uid=True),
    lambda d: d.update(format=4),
    lambda d: d.update(format=True),
    lambda d: d.pop("guest_frozen"),
    lambda d: d.update(guest_frozen=1),
    lambda d: d.update(format=2),                        # format 2 has no guest_frozen
    lambda d: d["states"][0].update(name="../../etc/passwd"),
    lambda d: d["states"][0].update(name="manifest.json"),
    lambda d: d["states"][0].update(name="overlay.qcow2"),
    lambda d: d.update(states=[]),
    lambda d: d.update(states=d["states"][0]),
    lambda d: d.update(state=d["states"][0]),
    lambda d: d.update(format=1),
    lambda d: d["overlay"].update(sha256="zz" * 32),
    lambda d: d["overlay"].update(size=-1),
    lambda d: d.update(macs=[1]),
])
def test_parse_manifest_is_strict(tmp_path, change):
    data = json.loads(read_manifest(save(str(tmp_path)), UID).to_json())
    change(data)
    with pytest.raises(CheckpointRefused):
        parse_manifest(json.dumps(data))


def test_a_format_1_manifest_with_one_state_file_is_still_read(tmp_path):
    path = save(str(tmp_path))
    data = json.loads(read_manifest(path, UID).to_json())
    data.update(format=1, state=data.pop("states")[0])
    del data["guest_frozen"]
    with open(os.path.join(path, MANIFEST_NAME), "w") as fh:
        json.dump(data, fh)
    manifest = read_manifest(path, UID)
    assert [e.name for e in manifest.states] == ["state.bin"] and manifest.state_size == 3000
    assert manifest.guest_frozen is False
    found, why = store.find_for_restore(str(tmp_path), expected())
    assert found is not None and why == ""


def test_a_format_2_manifest_reads_as_not_frozen(tmp_path):
    path = save(str(tmp_path))
    data = json.loads(read_manifest(path, UID).to_json())
    assert data["format"] == 3 and data["guest_frozen"] is False
    del data["guest_frozen"]
    data["format"] = 2
    with open(os.path.join(path, MANIFEST_NAME), "w") as fh:
        json.dump(data, fh)
    assert read_manifest(path, UID).guest_frozen is False


def test_every_state_file_is_verified(tmp_path):
    path = save(str(tmp_path))
    manifest = read_manifest(path, UID)
    extra = os.path.join(path, "memory-ranges")
    with open(extra, "wb") as fh:
        fh.write(b"m" * 10)
    size, digest = sha256_of(extra)
    two = Manifest(**{**manifest.__dict__, "states": (*manifest.states, FileEntry("memory-ranges", size, digest))})
    write_manifest(path, two)
    assert read_manifest(path, UID).state_size == 3010
    verify_files(path, two, UID)
    with open(extra, "r+b") as fh:
        fh.write(b"x")
    with pytest.raises(CheckpointRefused, match="memory-ranges does not match its sha256"):
        verify_files(path, two, UID)


def test_prune_keeps_the_newest_and_removes_unfinished_older_saves(tmp_path):
    user_dir = str(tmp_path)
    jdir = store.job_dir(user_dir, 42)
    a = save(user_dir)
    store.new_checkpoint_dir(jdir, UID)            # interrupted save between a and b
    b = save(user_dir)
    c = save(user_dir)
    removed = store.prune(jdir, 2, UID)
    assert store.checkpoint_dirs(jdir) == [b, c] and a in removed and len(removed) == 2
    verify_files(c, read_manifest(c, UID), UID)
    store.remove(c)
    store.remove(b)
    assert not os.path.exists(jdir)


def test_status_listing_shows_sizes_and_unfinished_saves(tmp_path):
    from slurm_vm.checkpoint.listing import describe, job_checkpoints
    save(str(tmp_path))
    store.new_checkpoint_dir(store.job_dir(str(tmp_path), 42), UID)
    entries = job_checkpoints(str(tmp_path), 42)
    assert [e["complete"] for e in entries] == [False, True]
    assert entries[1]["size_bytes"] == 5000 and "saved at preempt of run 0, qemu 7.2.15" in describe(entries[1])
    assert "unusable (no manifest" in describe(entries[0])
    assert job_checkpoints(None, 42) == [] and job_checkpoints(str(tmp_path), 43) == []
