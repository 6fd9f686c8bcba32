"""cloud-init NoCloud seeds: the ISO 9660 image (volume id `cidata`). The documents in it are rendered by
slurm_vm.node.cloudinit."""

from __future__ import annotations

import io


def build_seed_iso(meta_data: str, user_data: str, network_config: str | None = None,
                   vendor_data: str | None = None) -> bytes:
    """A NoCloud seed: ISO 9660 level 3 with Rock Ridge and Joliet names, volume id `cidata`."""
    import pycdlib
    files = [("META_DATA.;1", "meta-data", meta_data), ("USER_DATA.;1", "user-data", user_data)]
    if network_config is not None:
        files.append(("NETWORK_CONFIG.;1", "network-config", network_config))
    if vendor_data is not None:
        files.append(("VENDOR_DATA.;1", "vendor-data", vendor_data))
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for iso_name, name, text in files:
        data = text.encode("utf-8")
        iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()
