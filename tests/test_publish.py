"""Dataset versions: immutable, content-hashed, with lineage; republishing is a no-op."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tasks import storage
from tasks.publish import get_version, list_versions, load_version, publish


def _table(n: int) -> pa.Table:
    return pa.table({"prompt_id": [f"p{i}" for i in range(n)], "x": list(range(n))})


def test_publish_versions_and_lineage(lake):
    v1, created = publish(lake, "prompts", _table(3), ["prompt_id"], "cfg1", {"run_id": "r1"})
    assert (v1.version, created, v1.row_count) == ("v1", True, 3)
    again, created = publish(lake, "prompts", _table(3).take([2, 0, 1]), ["prompt_id"], "cfg1",
                             {"run_id": "r2"})
    assert (again.version, created) == ("v1", False)   # same content in another order
    v2, created = publish(lake, "prompts", _table(4), ["prompt_id"], "cfg1", {"run_id": "r3"})
    assert (v2.version, created) == ("v2", True)

    assert [v.version for v in list_versions(lake)] == ["v1", "v2"]
    assert load_version(lake, "v1").num_rows == 3
    assert get_version(lake, "latest").version == "v2"
    assert get_version(lake, "2").lineage["run_id"] == "r3"
    manifest = json.loads(storage.read_bytes(storage.join(v1.uri, "manifest.json")))
    assert manifest["row_count"] == 3 and manifest["content_hash"] == v1.content_hash
    assert set(manifest["lineage"]["table_versions"]) >= {"prompts", "pairs", "judgments"}
    assert manifest["lineage"]["code_revision"]


def test_unknown_version_is_a_clear_error(lake):
    with pytest.raises(LookupError, match="no dataset version has been published"):
        get_version(lake, "v1")
    publish(lake, "prompts", _table(1), ["prompt_id"], "c", {})
    with pytest.raises(LookupError, match="have v1"):
        get_version(lake, "v9")
