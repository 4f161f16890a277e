"""The data card page on a dataset artifact written by hand, with a shareable release."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from shoestring.ui.app import create_app
from shoestring.ui.config import UiConfig
from shoestring.ui.store import Store


def test_a_release_shows_what_a_partner_receives(tmp_path: Path) -> None:
    ws = tmp_path / ".shoestring" / "ws"
    d = ws / "artifacts" / "curate-abcd"
    (d / "share").mkdir(parents=True)
    stats = {"read": 12, "kept": 9, "dropped": 2, "quarantined": 1, "dropped_by": {"dedup": {"exact_duplicate": 2}}}
    (d / "manifest.json").write_text(json.dumps({"kind": "dataset", "stage": "curate", "hash": "abcd" * 16,
                                                 "stats": stats, "inputs": {}, "timings": {}}))
    (d / "datacard.json").write_text(json.dumps({"accounting": stats, "sources": {"s": {"read": 12, "kept": 9,
                                                                                        "quarantined": 1}}}))
    (d / "quarantine.jsonl").write_text(json.dumps({"source": "s", "location": "line 3", "reason": "bad_json",
                                                    "raw": "{oops"}) + "\n")
    (d / "share" / "release_report.json").write_text(json.dumps({
        "records": {"curated": 9, "released": 7}, "pii_mode": "pseudonym", "epsilon_spent": 0.5,
        "dp_counts": {"mechanism": "Laplace, sensitivity 1"}, "removed_columns": ["email"],
        "pseudonymised_columns": ["id", "cluster_id"], "residual_pii_scan": {"records_scanned": 7, "hits": 0},
        "k_anonymity": {"quasi_identifiers": ["zip"], "k_required": 3, "k_achieved": 3, "records_suppressed": 2}}))
    ws_id = Store([".shoestring"], base=tmp_path).workspace_of(ws).id
    c = TestClient(create_app(UiConfig(cwd=str(tmp_path))), base_url="http://127.0.0.1:8600")
    page = c.get(f"/ws/{ws_id}/a/curate-abcd").text
    assert "7 released of 9 curated" in page and "0 hits in 7 records" in page and "epsilon 0.5" in page
    assert "k=3 on zip: smallest class 3, 2 records suppressed" in page
    assert 'id="acct-quarantined" data-value="1"' in page
    rows = c.get(f"/ws/{ws_id}/a/curate-abcd/rows/quarantine.jsonl").text
    assert "line 3" in rows and "{oops" in rows
