"""cloud-init NoCloud seeds: the ISO 9660 image (volume id `cidata`). The documents in it are rendered by
slurm_vm.node.cloudinit; the image is written by iso9660.py (Rock Ridge and Joliet names)."""

from __future__ import annotations

from .iso9660 import build_iso


def build_seed_iso(meta_data: str, user_data: str, network_config: str | None = None,
                   vendor_data: str | None = None) -> bytes:
    """A NoCloud seed: ISO 9660 with Rock Ridge and Joliet names, volume id `cidata`."""
    files = [("meta-data", meta_data), ("user-data", user_data)]
    if network_config is not None:
        files.append(("network-config", network_config))
    if vendor_data is not None:
        files.append(("vendor-data", vendor_data))
    return build_iso("cidata", [(name, text.encode("utf-8")) for name, text in files])
