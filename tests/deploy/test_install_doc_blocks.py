"""docs/install.md has the marked blocks tests/deploy/test_install_doc.py runs, and they leave the site's Slurm alone."""

from __future__ import annotations

from tests.deploy.test_install_doc import doc_blocks


def test_doc_has_the_blocks_the_test_runs():
    assert len(doc_blocks("compute-node")) >= 4 and len(doc_blocks("login-node")) == 1
    assert doc_blocks("compute-node-check") == ["/opt/slurm-vm/venv/bin/slurm-vm node check\n"]
    text = "".join(doc_blocks("compute-node") + doc_blocks("login-node"))
    assert "slurmd" not in text and "slurmctld" not in text and "install-deps" not in text   # site's Slurm untouched
