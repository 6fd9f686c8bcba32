"""cloud-init NoCloud seeds: pure renderers and an ISO 9660 builder (volume id `cidata`)."""

from __future__ import annotations

import io

import yaml

CLOUD_CONFIG_HEADER = "#cloud-config"


def render_meta_data(instance_id: str, hostname: str) -> str:
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname}, sort_keys=False)


def _cloud_config(data: dict) -> str:
    return CLOUD_CONFIG_HEADER + "\n" + yaml.safe_dump(data, sort_keys=False, width=4096)


def render_user_data(user_data: str | None, ssh_authorized_keys: list[str], hostname: str) -> tuple[str, str | None]:
    """(user-data, vendor-data). Keys are merged into the user's #cloud-config; any other kind of user-data
    (a script, MIME, an include) is left byte-for-byte as it is and the keys travel in vendor-data."""
    keys = list(ssh_authorized_keys)
    if user_data is None:
        return _cloud_config({"ssh_authorized_keys": keys} if keys else {}), None
    if not keys:
        return user_data, None
    if user_data.lstrip().startswith(CLOUD_CONFIG_HEADER):
        try:
            parsed = yaml.safe_load(user_data)
        except yaml.YAMLError:
            parsed = None
        if isinstance(parsed, dict):
            existing = parsed.get("ssh_authorized_keys")
            merged = list(existing) if isinstance(existing, list) else []
            parsed["ssh_authorized_keys"] = merged + [k for k in keys if k not in merged]
            return _cloud_config(parsed), None
    return user_data, _cloud_config({"ssh_authorized_keys": keys})


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
