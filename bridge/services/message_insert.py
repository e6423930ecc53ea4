"""Writing new message rows in bulk: one multi-row INSERT, values adapted once per column.

`bulk_create` compiled every value of every row through the ORM (field
preparation, placeholders, expressions): in a profile of a 200-message batch
it was a third of the batch's time, against a tenth for the SQL itself. The
rows here are plain (no expressions, no defaults left to compute), so each
column's value is adapted the way its field would and the statement is built
once per chunk (on PostgreSQL, a larger batch goes through COPY instead). Only
the message services call this, inside their transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connections, router

from bridge.models import Message

# PostgreSQL: batches of at least this many rows go through COPY (see `_copy`).
COPY_FROM = 20
# Every concrete column of Message, in the order of the tuples `_values` builds.
_FIELDS = ("id", "room", "seq", "origin", "sender", "text", "data", "created", "idempotency_key")


def messages_insert(rows: Sequence[Message]) -> None:
    """INSERT `rows` (built by the caller, every field set) as they are.

    Afterwards they are what `bulk_create` leaves: saved instances of the
    database written to. A constraint that fails raises IntegrityError and
    writes nothing of the statement, as `bulk_create` would.
    """
    if not rows:
        return
    alias = router.db_for_write(Message)
    connection = connections[alias]
    ops = connection.ops
    meta = Message._meta
    fields = [meta.get_field(name) for name in _FIELDS]
    native_uuid = connection.features.has_native_uuid_field
    data_field = meta.get_field("data")
    # A batch's rows share one `created`: adapted once (SQLite makes it a naive string).
    adapted: dict[datetime, Any] = {}

    def when(value: datetime) -> Any:
        if value not in adapted:
            adapted[value] = ops.adapt_datetimefield_value(value)
        return adapted[value]

    values = [
        (
            row.id if native_uuid else row.id.hex,
            row.room_id, row.seq, row.origin, row.sender_id, row.text,
            None if row.data is None else data_field.get_db_prep_save(row.data, connection),
            when(row.created), row.idempotency_key,
        )
        for row in rows
    ]
    table = ops.quote_name(meta.db_table)
    columns = ", ".join(ops.quote_name(field.column) for field in fields)  # type: ignore[arg-type,union-attr]
    if connection.vendor == "postgresql" and len(values) >= COPY_FROM:
        _copy(connection, f"COPY {table} ({columns}) FROM STDIN", values)
        _saved(rows, alias)
        return
    placeholder = "(" + ", ".join(["%s"] * len(fields)) + ")"
    size = max(1, ops.bulk_batch_size(fields, rows))  # SQLite's limit on parameters per statement
    with connection.cursor() as cursor:
        for start in range(0, len(values), size):
            chunk = values[start:start + size]
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([placeholder] * len(chunk))}",
                [value for row in chunk for value in row],
            )
    _saved(rows, alias)


def _copy(connection: Any, statement: str, values: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: the rows through COPY, adapted by psycopg's dumpers.

    A multi-row INSERT of a 500-message batch is a statement with 4,500
    placeholders, which psycopg rewrites for the server by scanning it in
    Python, every time (too long for its cache): in a profile of a PostgreSQL
    burst, that scan was a fifth of the database thread. COPY has no
    placeholders. It runs in the caller's transaction, and a constraint that
    fails raises IntegrityError and writes nothing, as the INSERT would.
    """
    with connection.cursor() as cursor, connection.wrap_database_errors:
        with cursor.cursor.copy(statement) as copy:
            for row in values:
                copy.write_row(row)


def _saved(rows: Sequence[Message], alias: str) -> None:
    """What `bulk_create` leaves: saved instances of the database written to."""
    for row in rows:
        row._state.adding = False
        row._state.db = alias
