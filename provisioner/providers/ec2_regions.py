"""Which region an EC2 instance lives in, kept in its state folder (``ec2.json``).

EC2's API is per region: an instance made in us-west-2 is not found through eu-west-1, so status
and delete must use the region create used, whatever ``$AWS_REGION`` says later. The record is
written before the create call too: an instance made though the call's answer was lost is found
by name, and its id reaches only server.json; it is still looked for where it was made.
"""

from __future__ import annotations

import json
from pathlib import Path

REGION_RECORD = "ec2.json"  # {"region": ..., "ids": [...]}; before replicas, {"id": ..., "region": ...}


def record_region(state_dir: Path, region: str, host_id: str | None) -> None:
    """Note ``region`` for this state folder, with ``host_id`` once known (replicas share the folder)."""
    record = state_dir / REGION_RECORD
    data = _read(record)
    ids = recorded_ids(data) if data.get("region") == region else []
    if host_id is not None and host_id not in ids:
        ids.append(host_id)
    record.write_text(json.dumps({"region": region, "ids": ids}) + "\n")


def recorded_region(state_root: Path | None, host_id: str) -> str | None:
    """The region recorded for ``host_id`` in any state folder under ``state_root``, else None."""
    if state_root is None or not state_root.is_dir():
        return None
    for record in state_root.glob(f"*/{REGION_RECORD}"):
        data = _read(record)
        if data.get("region") and (host_id in recorded_ids(data) or host_id in _state_ids(record.parent)):
            return str(data["region"])
    return None


def recorded_regions(state_root: Path | None) -> list[str]:
    """Every region a state folder under ``state_root`` records, once each, in the folders' order; a damaged record
    is passed over (status and delete say so for their server)."""
    regions: list[str] = []
    for record in sorted(state_root.glob(f"*/{REGION_RECORD}")) if state_root is not None else []:
        region = _read(record).get("region")
        if isinstance(region, str) and region not in regions:
            regions.append(region)
    return regions


def recorded_ids(data: dict) -> list[str]:
    ids = data.get("ids")
    if isinstance(ids, list):
        return [str(i) for i in ids]
    return [str(data["id"])] if data.get("id") else []


def _state_ids(state_dir: Path) -> list[str]:
    """The ids the server's own state holds, replicas included (create writes them as it learns them)."""
    meta = _read(state_dir / "server.json")
    replicas = meta.get("replicas") if isinstance(meta.get("replicas"), list) else []
    return [str(x["id"]) for x in [meta, *replicas] if isinstance(x, dict) and x.get("id")]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
