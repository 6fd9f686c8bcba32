"""The hooks' parsed-config cache: used only when it is root's and matches the file byte for byte."""

from __future__ import annotations

import os
import pickle

import pytest
import yaml

from slurm_vm.errors import ValidationError
from slurm_vm.node import configcache
from slurm_vm.node.configcache import PICKLE_SUFFIX, STATE_DIR_SUFFIX, cache_base, load_config_cached

pytestmark = pytest.mark.root

CONFIG = {"state_dir": "/var/lib/svm-test-%n", "images": {"base": {"path": "/images/base.qcow2"}}}


@pytest.fixture
def setup(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    path = str(tmp_path / "config.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(CONFIG, fh)
    root = str(tmp_path / "run" / "hooks")
    return path, root, cache_base(path, root)


def test_cache_base_takes_plain_absolute_paths_only():
    assert cache_base("/etc/slurm-vm/config.yaml") == "/run/slurm-vm/hooks/etc/slurm-vm/config.yaml"
    for odd in ("config.yaml", "/etc/../x.yaml", "//etc/x.yaml", "/etc//x.yaml", "/etc/./x.yaml", "/etc/x/"):
        assert cache_base(odd) is None


def test_second_load_comes_from_the_cache(setup, monkeypatch):
    path, root, base = setup
    first = load_config_cached(path, root)
    assert first.node_state_dir("n1") == "/var/lib/svm-test-n1"
    assert os.stat(base + PICKLE_SUFFIX).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(root)).st_mode & 0o777 == 0o700
    assert open(base + STATE_DIR_SUFFIX).read() == "/var/lib/svm-test-%n\n"
    monkeypatch.setattr("slurm_vm.config.parse_config", lambda *a: pytest.fail("parsed again"))
    assert load_config_cached(path, root) == first


def test_changed_bytes_same_size_and_mtime_are_parsed_again(setup):
    path, root, base = setup
    load_config_cached(path, root)
    st = os.stat(path)
    text = open(path).read().replace("svm-test", "svm-tesT")
    with open(path, "w") as fh:
        fh.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_config_cached(path, root).state_dir == "/var/lib/svm-tesT-%n"
    assert open(base + STATE_DIR_SUFFIX).read() == "/var/lib/svm-tesT-%n\n"


def test_an_entry_others_could_write_is_not_trusted(setup):
    path, root, base = setup
    config = load_config_cached(path, root)
    key, _ = pickle.loads(open(base + PICKLE_SUFFIX, "rb").read())
    forged = config.__class__(images=config.images, state_dir="/forged")
    with open(base + PICKLE_SUFFIX, "wb") as fh:
        fh.write(pickle.dumps((key, forged)))
    os.chmod(base + PICKLE_SUFFIX, 0o666)
    assert load_config_cached(path, root).state_dir == "/var/lib/svm-test-%n"
    os.chmod(base + PICKLE_SUFFIX, 0o600)
    os.chown(base + PICKLE_SUFFIX, 4201, 0)
    assert load_config_cached(path, root).state_dir == "/var/lib/svm-test-%n"


def test_a_damaged_entry_is_parsed_again(setup):
    path, root, base = setup
    load_config_cached(path, root)
    with open(base + PICKLE_SUFFIX, "wb") as fh:
        fh.write(b"\x80\x05garbage")
    assert load_config_cached(path, root).state_dir == "/var/lib/svm-test-%n"


def test_a_bad_config_is_an_error_and_not_cached(setup):
    path, root, base = setup
    with open(path, "w") as fh:
        fh.write("images: [\n")
    with pytest.raises(ValidationError):
        load_config_cached(path, root)
    assert not os.path.exists(base + PICKLE_SUFFIX)


def test_a_state_dir_with_a_newline_gets_no_hint(setup):
    path, root, base = setup
    load_config_cached(path, root)
    assert os.path.exists(base + STATE_DIR_SUFFIX)
    configcache._write_hint(base + STATE_DIR_SUFFIX, "/var/x\n/y", 0)
    assert not os.path.exists(base + STATE_DIR_SUFFIX)


def test_hook_settings_come_from_the_cache_and_follow_the_file(setup, monkeypatch):
    path, root, base = setup
    from slurm_vm.node.configcache import SETTINGS_SUFFIX, load_hook_settings
    first = load_hook_settings(path, root)   # a miss: parses, stores the pickle and the settings
    assert (first.state_dir, first.log_file) == ("/var/lib/svm-test-%n", None)
    assert first.node_state_dir("n2") == "/var/lib/svm-test-n2"
    assert os.stat(base + SETTINGS_SUFFIX).st_mode & 0o777 == 0o600
    with monkeypatch.context() as patch:
        patch.setattr("slurm_vm.node.configcache.load_config_cached", lambda *a: pytest.fail("not from the cache"))
        assert load_hook_settings(path, root) == first
    with open(path, "a") as fh:
        fh.write("log_file: /var/log/svm-test.log\n")
    assert load_hook_settings(path, root).log_file == "/var/log/svm-test.log"
