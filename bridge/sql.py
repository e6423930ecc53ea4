"""Hand-written SQL for the few statements every stored batch runs.

A batch of device messages, and the publisher's claim of it, ran 16 statements;
with one message per batch (a device fleet at a few hundred messages a second)
that cost about 4 ms of CPU, most of it Django compiling the queries (filters,
joins, column lists), not the database running them: 30 us for SQLite to
execute one, against 150-250 us to build it. The simple statements of that path
(one table, equality filters, a row lock, an UPDATE) are written here once, with
the same meaning as the ORM's; everything that returns related objects stays
with the ORM.

Identifiers come from the models' metadata and are quoted by the backend;
values are always parameters. Datetimes are adapted as the ORM adapts them
(SQLite stores naive UTC text; PostgreSQL takes the aware value).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from django.db import connection
from django.db.models import BooleanField, Model

M = TypeVar("M", bound=Model)


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def column(model: type[Model], field: str) -> str:
    return connection.ops.quote_name(model._meta.get_field(field).column)  # type: ignore[arg-type,union-attr]


def columns(model: type[Model], attnames: Sequence[str], alias: str = "") -> str:
    """The quoted columns of `attnames` ("room_id" for a foreign key), comma-separated,
    each prefixed with `alias.` if given."""
    by_attname = {f.attname: f.column for f in model._meta.concrete_fields}
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + connection.ops.quote_name(by_attname[a]) for a in attnames)


def from_row(model: type[M], attnames: Sequence[str], row: Sequence[Any]) -> M:
    """An instance from `row` (the values of `attnames`), as the ORM builds one from a
    query that deferred the other fields: those are loaded if asked for. Booleans come
    back from SQLite as 0/1 and are made bool here, as the ORM's converter does."""
    given = dict(zip(attnames, row, strict=True))
    names, values = [], []
    for field in model._meta.concrete_fields:
        if field.attname in given:
            value = given[field.attname]
            if isinstance(field, BooleanField) and value is not None:
                value = bool(value)
            names.append(field.attname)
            values.append(value)
    return model.from_db(connection.alias, names, values)


def when(value: datetime | None) -> Any:
    """A datetime as a parameter, the way a DateTimeField adapts it."""
    return None if value is None else connection.ops.adapt_datetimefield_value(value)


def execute(sql: str, params: Sequence[Any]) -> int:
    """Run one statement; the rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def fetchone(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def fetchall(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def fetchcol(sql: str, params: Sequence[Any]) -> list[Any]:
    """The first column of every row."""
    return [row[0] for row in fetchall(sql, params)]


def for_update() -> str:
    """" FOR UPDATE" where the database locks rows so (SQLite: the transaction's
    BEGIN IMMEDIATE already holds the whole database)."""
    return " FOR UPDATE" if connection.features.has_select_for_update else ""


def in_texts(values: Sequence[str]) -> tuple[str, list[Any]]:
    """`IN (...)` for text `values` (not empty): one array parameter on PostgreSQL (a
    placeholder each makes psycopg scan a long statement in Python, see
    message_insert), a placeholder each elsewhere. The SQL after the column, and its
    parameters."""
    if connection.vendor == "postgresql":
        return "= ANY(%s::text[])", [list(values)]
    return "IN (" + ", ".join(["%s"] * len(values)) + ")", list(values)
