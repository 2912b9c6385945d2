# SPDX-License-Identifier: Apache-2.0
"""Generate the emulator's records deterministically from a seed, lazily, one record at a time.

Only two small integer arrays per resource live in memory (``created_at`` and ``updated_at`` in
microseconds since the epoch); every other field is derived on demand from ``(seed, resource, id)``.
That keeps startup and memory cheap for hundreds of thousands of records. Record ids are ``1..n``
ascending; records added at run time continue the sequence.
"""

from __future__ import annotations

import datetime
import hashlib
import random
import threading
from array import array
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_RECORDS",
    "RESOURCES",
    "SCHEMAS",
    "RecordStore",
    "format_timestamp",
    "to_microseconds",
]

# Generated timestamps are spread over this half-year (UTC), as the contract promises.
_START_US = int(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp()) * 1_000_000
_END_US = (
    int(datetime.datetime(2026, 6, 30, 23, 59, 59, tzinfo=datetime.timezone.utc).timestamp()) * 1_000_000
)
_SECOND_US = 1_000_000
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

DEFAULT_RECORDS: Mapping[str, int] = {
    "contacts": 1000,
    "matters": 500,
    "activities": 2000,
    "users": 25,
    "sources": 10,
}

RESOURCES: tuple[str, ...] = tuple(DEFAULT_RECORDS)

# field -> None for a scalar, or the tuple of sub-fields of a nested record (one level only).
SCHEMAS: Mapping[str, Mapping[str, tuple[str, ...] | None]] = {
    "contacts": {
        "id": None,
        "name": None,
        "first_name": None,
        "last_name": None,
        "type": None,
        "email": None,
        "phone": None,
        "status": None,
        "clio_id": None,
        "global_id": None,
        "source": ("id", "name"),
        "created_at": None,
        "updated_at": None,
    },
    "matters": {
        "id": None,
        "display_number": None,
        "description": None,
        "status": None,
        "status_category": None,
        "clio_id": None,
        "client": ("id", "name"),
        "matter_type": None,
        "location": None,
        "hired_date": None,
        "is_locked": None,
        "created_at": None,
        "updated_at": None,
    },
    "activities": {
        "id": None,
        "type": None,
        "date": None,
        "quantity": None,
        "price": None,
        "total": None,
        "note": None,
        "billed": None,
        "matter": ("id", "display_number"),
        "user": ("id", "name"),
        "created_at": None,
        "updated_at": None,
    },
    "users": {
        "id": None,
        "name": None,
        "first_name": None,
        "last_name": None,
        "email": None,
        "enabled": None,
        "account": ("id", "firm_name"),
        "created_at": None,
        "updated_at": None,
    },
    "sources": {
        "id": None,
        "name": None,
        "category": None,
        "created_at": None,
        "updated_at": None,
    },
}

_FIRST = (
    "Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal",
    "Kira", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tomas",
)  # fmt: skip
_LAST = (
    "Okafor", "Smith", "Nguyen", "Garcia", "Muller", "Rossi", "Kowalski", "Tanaka", "Haddad", "Silva",
    "Dubois", "Cohen", "Andersen", "Murphy", "Patel", "Novak", "Ivanova", "Brown", "Lopez", "Singh",
)  # fmt: skip
_CONTACT_STATUS = ("Unassigned", "Intake", "Hired", "Did Not Hire")
_MATTER_STATUS = (("Open", "intake"), ("Pending", "intake"), ("Hired", "hired"), ("Declined", "declined"))
_MATTER_TYPES = (
    "Family",
    "Immigration",
    "Personal Injury",
    "Estate Planning",
    "Criminal Defense",
    "Real Estate",
)
_LOCATIONS = ("Vancouver", "Toronto", "Chicago", "London", "Sydney", "Dublin")
_SOURCES = (
    "Google",
    "Referral",
    "Website",
    "Facebook",
    "Yelp",
    "Avvo",
    "Newsletter",
    "Walk-in",
    "LinkedIn",
    "Radio",
)
_ACTIVITY_NOTES = ("Client call", "Draft motion", "Review documents", "Court appearance", "Research", "Email")
_FIRM = "Emulated Law LLP"


def format_timestamp(us: int) -> str:
    """Format microseconds since the epoch as ISO-8601 with a UTC offset (``2026-03-01T12:00:00+00:00``)."""
    return (_EPOCH + datetime.timedelta(microseconds=us)).isoformat()


def _rng(seed: int, resource: str, record_id: int) -> random.Random:
    # String seeding hashes with SHA-512, so records are identical across processes and Python runs.
    return random.Random(f"{seed}:{resource}:{record_id}")


class RecordStore:
    """Hold the records of every resource: timestamps in arrays, other fields derived on demand.

    Thread-safe: mutations and scans take one lock, record rendering needs none.

    :param seed: seed of every generated value.
    :param counts: records per resource; resources not named get ``DEFAULT_RECORDS``.
    :param updated_since_inclusive: whether ``updated_since`` keeps a record stamped exactly on it (``True``,
        the Platform spec) or only later ones (``False``, the Manage spec's "after").
    """

    def __init__(
        self, seed: int = 42, counts: Mapping[str, int] | None = None, updated_since_inclusive: bool = True
    ) -> None:
        unknown = set(counts or {}) - set(RESOURCES)
        if unknown:
            raise ValueError(f"unknown resources {sorted(unknown)}; known: {list(RESOURCES)}")
        self.seed = seed
        self.updated_since_inclusive = updated_since_inclusive
        self._lock = threading.Lock()
        self._deleted: dict[str, set[int]] = {resource: set() for resource in RESOURCES}
        self._created: dict[str, array[int]] = {}
        self._updated: dict[str, array[int]] = {}
        # Counts at construction: nested references point into this range, so adding records later
        # never changes an existing record.
        self._initial: dict[str, int] = {}
        merged = {**DEFAULT_RECORDS, **(counts or {})}
        for resource in RESOURCES:
            n = merged[resource]
            if n < 0:
                raise ValueError(f"record count for {resource} must be >= 0, got {n}")
            self._initial[resource] = n
            self._created[resource], self._updated[resource] = self._timeline(resource, n)

    def _timeline(self, resource: str, n: int) -> tuple[array[int], array[int]]:
        rng = random.Random(f"{self.seed}:{resource}:timeline")
        rand = rng.random
        step = (_END_US - _START_US) / max(n, 1)
        created: array[int] = array("q", bytes(8 * n))
        updated: array[int] = array("q", bytes(8 * n))
        for i in range(n):
            # Whole seconds, created_at ascending with the id, updated_at between created_at and the end.
            c = _START_US + int((i + rand()) * step) // _SECOND_US * _SECOND_US
            created[i] = c
            updated[i] = c + int(rand() * (_END_US - c)) // _SECOND_US * _SECOND_US
        return created, updated

    # -- size and timestamps -------------------------------------------------------------------

    def count(self, resource: str) -> int:
        """Return how many records ``resource`` has now."""
        return len(self._updated[resource])

    def exists(self, resource: str, record_id: int) -> bool:
        """Tell whether ``resource`` has a record with this id (not deleted)."""
        return 1 <= record_id <= len(self._updated[resource]) and record_id not in self._deleted[resource]

    def updated_us(self, resource: str, record_id: int) -> int:
        """Return the record's ``updated_at`` in microseconds since the epoch."""
        return self._updated[resource][record_id - 1]

    # -- mutation ------------------------------------------------------------------------------

    def touch(self, resource: str, ids: Iterable[int], at: datetime.datetime | None = None) -> None:
        """Set ``updated_at`` of existing records to ``at`` (default: now, always moving forward)."""
        with self._lock:
            updated = self._updated[resource]
            for record_id in ids:
                if not self.exists(resource, record_id):
                    raise KeyError(f"{resource} has no record {record_id}")
                if at is not None:
                    updated[record_id - 1] = to_microseconds(at)
                else:
                    # A bare touch must change the ETag even when called twice in one second.
                    updated[record_id - 1] = max(_now_us(), updated[record_id - 1] + _SECOND_US)

    def delete(self, resource: str, ids: Iterable[int]) -> None:
        """Delete existing records: lists and reads no longer return them; their ids are never reused."""
        with self._lock:
            for record_id in ids:
                if not self.exists(resource, record_id):
                    raise KeyError(f"{resource} has no record {record_id}")
                self._deleted[resource].add(record_id)

    def add(self, resource: str, n: int, at: datetime.datetime | None = None) -> list[int]:
        """Append ``n`` new records created and updated at ``at`` (default: now); return their ids."""
        if n < 0:
            raise ValueError("n must be >= 0")
        stamp = to_microseconds(at) if at is not None else _now_us() // _SECOND_US * _SECOND_US
        with self._lock:
            first = len(self._updated[resource]) + 1
            self._created[resource].extend([stamp] * n)
            self._updated[resource].extend([stamp] * n)
        return list(range(first, first + n))

    # -- queries -------------------------------------------------------------------------------

    def scan(
        self,
        resource: str,
        after_id: int,
        limit: int,
        *,
        updated_since_us: int | None = None,
        created_since_us: int | None = None,
        ids: Iterable[int] | None = None,
    ) -> list[int]:
        """Return up to ``limit`` ids greater than ``after_id`` matching every filter, ascending."""
        with self._lock:
            created = self._created[resource]
            updated = self._updated[resource]
            n = len(updated)
            deleted = self._deleted[resource]
            candidates: Iterable[int]
            if ids is not None:
                candidates = (i for i in sorted(set(ids)) if after_id < i <= n)
            else:
                candidates = range(max(after_id, 0) + 1, n + 1)
            if deleted:
                candidates = (i for i in candidates if i not in deleted)
            out: list[int] = []
            if updated_since_us is None and created_since_us is None:
                for record_id in candidates:
                    if len(out) >= limit:
                        break
                    out.append(record_id)
                return out
            u_min = updated_since_us if updated_since_us is not None else -(2**62)
            if updated_since_us is not None and not self.updated_since_inclusive:
                u_min += 1  # "after": a record stamped exactly on the bound is left out
            c_min = created_since_us if created_since_us is not None else -(2**62)
            for record_id in candidates:
                if updated[record_id - 1] >= u_min and created[record_id - 1] >= c_min:
                    out.append(record_id)
                    if len(out) >= limit:
                        break
            return out

    # -- rendering -----------------------------------------------------------------------------

    def render(self, resource: str, record_id: int) -> dict[str, Any]:
        """Return the full record (every schema field, nested records complete)."""
        with self._lock:
            created = self._created[resource][record_id - 1]
            updated = self._updated[resource][record_id - 1]
        record: dict[str, Any] = {"id": record_id}
        record.update(_GENERATORS[resource](self, record_id))
        record["created_at"] = format_timestamp(created)
        record["updated_at"] = format_timestamp(updated)
        return record

    def _ref(self, resource: str, rng: random.Random) -> int:
        return rng.randint(1, max(self._initial[resource], 1))

    def _person(self, resource: str, record_id: int) -> tuple[str, str]:
        rng = _rng(self.seed, resource + ":name", record_id)
        return rng.choice(_FIRST), rng.choice(_LAST)

    def _contact_name(self, record_id: int) -> str:
        first, last = self._person("contacts", record_id)
        if record_id % 7 == 0:
            return f"{last} Holdings Ltd"
        return f"{first} {last}"

    def _user_name(self, record_id: int) -> str:
        return " ".join(self._person("users", record_id))

    def _source_name(self, record_id: int) -> str:
        return _SOURCES[(record_id - 1) % len(_SOURCES)] + (
            "" if record_id <= len(_SOURCES) else f" {record_id}"
        )

    def _display_number(self, record_id: int) -> str:
        return f"{record_id:05d}-{self._person('contacts', self._matter_client(record_id))[1]}"

    def _matter_client(self, record_id: int) -> int:
        return self._ref("contacts", _rng(self.seed, "matters:client", record_id))

    def _contact(self, record_id: int) -> dict[str, Any]:
        rng = _rng(self.seed, "contacts", record_id)
        first, last = self._person("contacts", record_id)
        company = record_id % 7 == 0
        source_id = self._ref("sources", rng)
        return {
            "name": self._contact_name(record_id),
            "first_name": None if company else first,
            "last_name": None if company else last,
            "type": "Company" if company else "Person",
            "email": f"{first}.{last}.{record_id}@example.com".lower(),
            "phone": f"+1-555-{rng.randrange(10**7):07d}",
            "status": rng.choice(_CONTACT_STATUS),
            "clio_id": 500_000 + record_id,
            "global_id": hashlib.sha256(f"{self.seed}:contact:{record_id}".encode()).hexdigest()[:26].upper(),
            "source": {"id": source_id, "name": self._source_name(source_id)},
        }

    def _matter(self, record_id: int) -> dict[str, Any]:
        rng = _rng(self.seed, "matters", record_id)
        client_id = self._matter_client(record_id)
        status, category = rng.choice(_MATTER_STATUS)
        matter_type = rng.choice(_MATTER_TYPES)
        hired = None
        if category == "hired":
            hired = (datetime.date(2026, 1, 1) + datetime.timedelta(days=rng.randrange(180))).isoformat()
        return {
            "display_number": self._display_number(record_id),
            "description": f"{matter_type} matter for {self._contact_name(client_id)}",
            "status": status,
            "status_category": category,
            "clio_id": 800_000 + record_id,
            "client": {"id": client_id, "name": self._contact_name(client_id)},
            "matter_type": matter_type,
            "location": rng.choice(_LOCATIONS),
            "hired_date": hired,
            "is_locked": rng.random() < 0.05,
        }

    def _activity(self, record_id: int) -> dict[str, Any]:
        rng = _rng(self.seed, "activities", record_id)
        matter_id = self._ref("matters", rng)
        user_id = self._ref("users", rng)
        kind = "TimeEntry" if rng.random() < 0.8 else "ExpenseEntry"
        quantity = rng.randrange(6, 480) * 60 if kind == "TimeEntry" else 1
        price = (
            float(rng.choice((150, 200, 275, 350, 450)))
            if kind == "TimeEntry"
            else rng.randrange(500, 50000) / 100
        )
        total = round(price * quantity / 3600, 2) if kind == "TimeEntry" else price
        return {
            "type": kind,
            "date": (datetime.date(2026, 1, 1) + datetime.timedelta(days=rng.randrange(181))).isoformat(),
            "quantity": quantity,
            "price": price,
            "total": total,
            "note": rng.choice(_ACTIVITY_NOTES),
            "billed": rng.random() < 0.4,
            "matter": {"id": matter_id, "display_number": self._display_number(matter_id)},
            "user": {"id": user_id, "name": self._user_name(user_id)},
        }

    def _user(self, record_id: int) -> dict[str, Any]:
        first, last = self._person("users", record_id)
        return {
            "name": f"{first} {last}",
            "first_name": first,
            "last_name": last,
            "email": f"{first}.{last}.{record_id}@emulated-law.example".lower(),
            "enabled": record_id % 11 != 0,
            "account": {"id": 1, "firm_name": _FIRM},
        }

    def _source(self, record_id: int) -> dict[str, Any]:
        return {
            "name": self._source_name(record_id),
            "category": "clio_email_marketing" if record_id % 5 == 0 else "standard",
        }


_GENERATORS: Mapping[str, Callable[[RecordStore, int], dict[str, Any]]] = {
    "contacts": RecordStore._contact,
    "matters": RecordStore._matter,
    "activities": RecordStore._activity,
    "users": RecordStore._user,
    "sources": RecordStore._source,
}


def to_microseconds(at: datetime.datetime) -> int:
    """Return an aware datetime as microseconds since the epoch."""
    if at.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _SECOND_US + delta.microseconds


def _now_us() -> int:
    return to_microseconds(datetime.datetime.now(datetime.timezone.utc))
