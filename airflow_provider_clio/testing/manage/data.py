# SPDX-License-Identifier: Apache-2.0
"""Generate the Manage API's records deterministically from a seed, lazily, one record at a time.

As for the Platform records (:mod:`airflow_provider_clio.testing.data`), only ``created_at`` and
``updated_at`` live in memory; every other field derives from ``(seed, resource, id)``, so 20,000
activities cost two small arrays. Ids are ``1..n`` ascending. Every record has Manage's ``etag`` field.
"""

from __future__ import annotations

import datetime
import hashlib
import random
from array import array
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from airflow_provider_clio.testing.timeline import TimelineStore, format_timestamp, to_microseconds

__all__ = [
    "MANAGE_DEFAULT_RECORDS",
    "MANAGE_RESOURCES",
    "MANAGE_SCHEMAS",
    "NO_UPDATED_SINCE",
    "ManageStore",
]

MANAGE_DEFAULT_RECORDS: Mapping[str, int] = {
    "matters": 500,
    "activities": 2000,
    "bills": 300,
    "contacts": 1000,
    "tasks": 400,
    "outstanding_client_balances": 100,
}
MANAGE_RESOURCES: tuple[str, ...] = tuple(MANAGE_DEFAULT_RECORDS)

NO_UPDATED_SINCE = frozenset({"outstanding_client_balances"})
"""Lists Clio serves without ``updated_since`` (full load each run): the filter answers 400 there."""

_REF = ("id", "name")
_MATTER_REF = ("id", "display_number")
_STAMPS: dict[str, tuple[str, ...] | None] = {"created_at": None, "updated_at": None}

# field -> None for a scalar, or the sub-fields of a nested record (one level of braces only).
MANAGE_SCHEMAS: Mapping[str, Mapping[str, tuple[str, ...] | None]] = {
    "matters": dict.fromkeys(
        ("id", "etag", "display_number", "description", "status", "open_date", "close_date", "billable")
    )
    | {"client": _REF, "practice_area": _REF, "responsible_attorney": _REF, **_STAMPS},
    "activities": dict.fromkeys(
        ("id", "etag", "type", "date", "quantity", "price", "total", "note", "billed")
    )
    | {"matter": _MATTER_REF, "user": _REF, **_STAMPS},
    "bills": dict.fromkeys(("id", "etag", "number", "state", "issued_at", "due_at", "total", "balance"))
    | {"matter": _MATTER_REF, "client": _REF, **_STAMPS},
    "contacts": dict.fromkeys(
        ("id", "etag", "name", "first_name", "last_name", "type", "is_client", "primary_email_address")
    )
    | {**_STAMPS},
    "tasks": dict.fromkeys(("id", "etag", "name", "status", "priority", "due_at", "completed_at"))
    | {"matter": _MATTER_REF, "assignee": _REF, **_STAMPS},
    "outstanding_client_balances": dict.fromkeys(
        ("id", "etag", "total_outstanding_balance", "last_payment_date")
    )
    | {"contact": _REF, **_STAMPS},
}

# Records spread over the first half of 2026 (UTC), like the Platform records.
_START_US = to_microseconds(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
_SPAN_US = 181 * 86_400 * 1_000_000
_S = 1_000_000
_DAY0 = datetime.date(2026, 1, 1)
_USERS = 25
_GIVEN = ("Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam")
_FAMILY = ("Okafor", "Smith", "Nguyen", "Garcia", "Muller", "Rossi", "Tanaka", "Haddad", "Silva", "Patel")
_AREAS = ("Family", "Immigration", "Personal Injury", "Estate Planning", "Criminal Defense", "Real Estate")
_NOTES = ("Client call", "Draft motion", "Review documents", "Court appearance", "Research", "Email")


def _rng(seed: int, *parts: object) -> random.Random:
    # String seeds hash with SHA-512: identical records in every process and Python run.
    return random.Random(":".join(map(str, (seed, "manage", *parts))))


def _day(rng: random.Random) -> str:
    return (_DAY0 + datetime.timedelta(days=rng.randrange(181))).isoformat()


class ManageStore(TimelineStore):
    """The Manage records: timestamps in arrays, other fields derived on demand. Thread-safe.

    :param seed: seed of every generated value.
    :param counts: records per resource; resources not named get ``MANAGE_DEFAULT_RECORDS``.
    """

    def __init__(self, seed: int = 42, counts: Mapping[str, int] | None = None) -> None:
        unknown = set(counts or {}) - set(MANAGE_RESOURCES)
        if unknown:
            raise ValueError(f"unknown Manage resources {sorted(unknown)}; known: {list(MANAGE_RESOURCES)}")
        self.seed = seed
        super().__init__()
        merged = {**MANAGE_DEFAULT_RECORDS, **(counts or {})}
        # Nested references point into the initial ranges: adding records never changes existing ones.
        self._initial = dict(merged)
        for resource, n in merged.items():
            if n < 0:
                raise ValueError(f"record count for {resource} must be >= 0, got {n}")
            rng = _rng(seed, resource, "timeline")
            step = _SPAN_US // max(n, 1)
            created = [_START_US + (i * step + int(rng.random() * step)) // _S * _S for i in range(n)]
            self._created[resource] = array("q", created)
            self._updated[resource] = array(
                "q", [c + int(rng.random() * (_START_US + _SPAN_US - c)) // _S * _S for c in created]
            )

    def exists(self, resource: str, record_id: int) -> bool:
        """Tell whether ``resource`` has this id."""
        return 1 <= record_id <= self.count(resource)

    def touch(self, resource: str, ids: Iterable[int], at: datetime.datetime | None = None) -> None:
        """Set ``updated_at`` (and so the etag) of records to ``at`` (default: now, moving forward)."""
        now = to_microseconds(at or datetime.datetime.now(datetime.timezone.utc))
        with self._lock:
            updated = self._updated[resource]
            for record_id in ids:
                if not 1 <= record_id <= len(updated):
                    raise KeyError(f"{resource} has no record {record_id}")
                updated[record_id - 1] = now if at is not None else max(now, updated[record_id - 1] + _S)

    def _added_stamp(self, at: datetime.datetime | None) -> int:
        # Manage stamps added records in whole seconds, a given ``at`` too.
        return to_microseconds(at or datetime.datetime.now(datetime.timezone.utc)) // _S * _S

    def scan(
        self,
        resource: str,
        after_id: int,
        limit: int,
        *,
        skip: int = 0,
        updated_after_us: int | None = None,
        created_since_us: int | None = None,
        ids: frozenset[int] | None = None,
    ) -> list[int]:
        """Return up to ``limit`` matching ids above ``after_id``, ascending, after skipping ``skip`` matches.

        ``updated_after_us`` keeps records updated strictly after it (pass ``since - 1`` for inclusive).
        """
        u_min = -(2**62) if updated_after_us is None else updated_after_us
        c_min = -(2**62) if created_since_us is None else created_since_us
        out: list[int] = []
        with self._lock:
            created, updated = self._created[resource], self._updated[resource]
            for record_id in range(max(after_id, 0) + 1, len(updated) + 1):
                if (ids is None or record_id in ids) and updated[record_id - 1] > u_min:
                    if created[record_id - 1] < c_min:
                        continue
                    if skip:
                        skip -= 1
                        continue
                    out.append(record_id)
                    if len(out) >= limit:
                        break
        return out

    def etag(self, resource: str, record_id: int) -> str:
        """Return the record's ``etag`` (quoted, as Manage sends it); it changes with ``updated_at``."""
        src = f"{self.seed}:{resource}:{record_id}:{self.updated_us(resource, record_id)}"
        return '"' + hashlib.sha256(src.encode()).hexdigest()[:32] + '"'

    def render(self, resource: str, record_id: int) -> dict[str, Any]:
        """Return the full record: every schema field, nested records complete."""
        with self._lock:
            created = self._created[resource][record_id - 1]
            updated = self._updated[resource][record_id - 1]
        record: dict[str, Any] = {"id": record_id, "etag": self.etag(resource, record_id)}
        record.update(_GENERATORS[resource](self, _rng(self.seed, resource, record_id), record_id))
        record["created_at"] = format_timestamp(created)
        record["updated_at"] = format_timestamp(updated)
        return record

    # -- generators ----------------------------------------------------------------------------

    def _ref(self, resource: str, rng: random.Random) -> int:
        return rng.randint(1, max(self._initial[resource], 1))

    def _name(self, kind: str, record_id: int) -> tuple[str, str]:
        rng = _rng(self.seed, kind, "name", record_id)
        return rng.choice(_GIVEN), rng.choice(_FAMILY)

    def _contact_ref(self, contact_id: int) -> dict[str, Any]:
        first, last = self._name("contacts", contact_id)
        return {
            "id": contact_id,
            "name": f"{last} Holdings Ltd" if contact_id % 7 == 0 else f"{first} {last}",
        }

    def _user_ref(self, rng: random.Random) -> dict[str, Any]:
        user_id = rng.randint(1, _USERS)
        return {"id": user_id, "name": " ".join(self._name("users", user_id))}

    def _matter_ref(self, matter_id: int) -> dict[str, Any]:
        family = self._name("contacts", self._matter_client(matter_id))[1]
        return {"id": matter_id, "display_number": f"{matter_id:05d}-{family}"}

    def _matter(self, rng: random.Random, record_id: int) -> dict[str, Any]:
        client = self._contact_ref(self._matter_client(record_id))
        status = rng.choice(("Open", "Open", "Pending", "Closed"))
        area = rng.randrange(len(_AREAS))
        return {
            "display_number": self._matter_ref(record_id)["display_number"],
            "description": f"{_AREAS[area]} matter for {client['name']}",
            "status": status,
            "open_date": _day(rng),
            "close_date": _day(rng) if status == "Closed" else None,
            "billable": rng.random() < 0.9,
            "client": client,
            "practice_area": {"id": area + 1, "name": _AREAS[area]},
            "responsible_attorney": self._user_ref(rng),
        }

    def _matter_client(self, matter_id: int) -> int:
        return _rng(self.seed, "matters", "client", matter_id).randint(1, max(self._initial["contacts"], 1))

    def _activity(self, rng: random.Random, record_id: int) -> dict[str, Any]:
        time_entry = rng.random() < 0.8
        # quantity is in seconds since 4.0.4 (the routes convert to hours for older pinned versions).
        quantity = rng.randrange(6, 480) * 60 if time_entry else 1
        price = (
            float(rng.choice((150, 200, 275, 350, 450))) if time_entry else rng.randrange(500, 50000) / 100
        )
        return {
            "type": "TimeEntry" if time_entry else "ExpenseEntry",
            "date": _day(rng),
            "quantity": quantity,
            "price": price,
            "total": round(price * quantity / 3600, 2) if time_entry else price,
            "note": rng.choice(_NOTES),
            "billed": rng.random() < 0.4,
            "matter": self._matter_ref(self._ref("matters", rng)),
            "user": self._user_ref(rng),
        }

    def _bill(self, rng: random.Random, record_id: int) -> dict[str, Any]:
        matter_id = self._ref("matters", rng)
        total = rng.randrange(10_000, 2_000_000) / 100
        state = rng.choice(("draft", "awaiting_approval", "awaiting_payment", "paid", "void"))
        issued = _DAY0 + datetime.timedelta(days=rng.randrange(150))
        return {
            "number": f"B-{record_id:06d}",
            "state": state,
            "issued_at": issued.isoformat(),
            "due_at": (issued + datetime.timedelta(days=30)).isoformat(),
            "total": total,
            "balance": 0.0 if state in ("paid", "void") else total,
            "matter": self._matter_ref(matter_id),
            "client": self._contact_ref(self._matter_client(matter_id)),
        }

    def _contact(self, rng: random.Random, record_id: int) -> dict[str, Any]:
        first, last = self._name("contacts", record_id)
        company = record_id % 7 == 0
        return {
            "name": self._contact_ref(record_id)["name"],
            "first_name": None if company else first,
            "last_name": None if company else last,
            "type": "Company" if company else "Person",
            "is_client": rng.random() < 0.6,
            "primary_email_address": f"{first}.{last}.{record_id}@example.com".lower(),
        }

    def _task(self, rng: random.Random, record_id: int) -> dict[str, Any]:
        status = rng.choice(("pending", "in_progress", "in_review", "complete"))
        due = f"{_day(rng)}T17:00:00+00:00"
        return {
            "name": f"{rng.choice(_NOTES)} #{record_id}",
            "status": status,
            "priority": rng.choice(("High", "Normal", "Low")),
            "due_at": due,
            "completed_at": due if status == "complete" else None,
            "matter": self._matter_ref(self._ref("matters", rng)),
            "assignee": self._user_ref(rng),
        }

    def _balance(self, rng: random.Random, record_id: int) -> dict[str, Any]:
        return {
            "total_outstanding_balance": rng.randrange(0, 5_000_000) / 100,
            "last_payment_date": _day(rng) if rng.random() < 0.7 else None,
            "contact": self._contact_ref(self._ref("contacts", rng)),
        }


_GENERATORS: Mapping[str, Callable[[ManageStore, random.Random, int], dict[str, Any]]] = {
    "matters": ManageStore._matter,
    "activities": ManageStore._activity,
    "bills": ManageStore._bill,
    "contacts": ManageStore._contact,
    "tasks": ManageStore._task,
    "outstanding_client_balances": ManageStore._balance,
}
