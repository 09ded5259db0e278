"""The status store keeps an SDK task's JSON result, and a store made before results existed gains the column."""

from __future__ import annotations

import json

import pytest
from qw_core.store import SCHEMA, open_store

pytestmark = pytest.mark.integration


def test_a_result_is_kept_with_the_succeeded_status(database_url):
    store = open_store(database_url)
    try:
        store.create_pending("t1", "acme", "inventory")
        store.start_attempt("t1", 1)
        assert store.succeed("t1", None, json.dumps({"reserved": 3}))
        assert not store.succeed("t1", None, json.dumps({"reserved": 99}))  # a duplicate cannot overwrite it
        rec = store.get("t1", "acme")
        assert (rec.status, json.loads(rec.result), rec.result_key) == ("succeeded", {"reserved": 3}, None)
    finally:
        store.close()


def test_a_store_from_before_results_gains_the_column_and_keeps_its_rows(database_url):
    old_tasks = SCHEMA[0]  # the tasks table as it was made before the result column
    assert "result TEXT" not in old_tasks
    store = open_store(database_url)
    with store._tx() as cur:
        cur.execute("DROP TABLE tasks")
        cur.execute(old_tasks)
        cur.execute(
            store._sql(
                "INSERT INTO tasks (task_id, tenant, kind, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
            ),
            ("old", "acme", "email", "succeeded", 1.0, 1.0),
        )
    store.close()
    for _ in range(2):  # every process migrates at start; the second finds the column there
        store = open_store(database_url)
        assert store.get("old").result is None and store.get("old").status == "succeeded"
        store.close()
