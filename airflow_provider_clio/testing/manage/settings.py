# SPDX-License-Identifier: Apache-2.0
"""The knobs of the emulator's Clio Manage API v4 mode, from Python (:class:`ManageSettings`) or the CLI."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLIO_SCHEDULE",
    "DEFAULT_API_VERSION",
    "ManageSettings",
    "PeakSetting",
    "add_manage_arguments",
    "manage_settings_from_args",
]

DEFAULT_API_VERSION = "4.0.13"
"""The ``X-API-VERSION`` answered when a request sends none (Clio's default in April 2026)."""

CLIO_SCHEDULE = "clio"
"""``peak`` value: peak or off-peak follows Clio's weekday schedule of the token's region (wall clock)."""

PeakSetting = bool | str | Callable[[str, float], bool]
"""``True`` (peak), ``False`` (off-peak), ``"clio"``, or ``schedule(region, unix_time) -> is_peak``."""


def check_peak(peak: object) -> None:
    """Raise ``ValueError`` unless ``peak`` is a valid :data:`PeakSetting`."""
    if not (peak is True or peak is False or peak == CLIO_SCHEDULE or callable(peak)):
        raise ValueError(f"peak must be True, False, {CLIO_SCHEDULE!r} or a callable, got {peak!r}")


@dataclass(frozen=True)
class ManageSettings:
    """How the emulated Manage API behaves; every field has Clio's default (or a test-friendly one).

    :param records: records per Manage resource (see ``MANAGE_RESOURCES``); others keep their defaults.
    :param peak_limit: requests per window and access token at peak (Clio: 50/min).
    :param off_peak_limit: requests per window and access token off-peak (one vendor reports 300/min).
    :param peak: ``True`` (peak), ``False`` (off-peak), ``"clio"`` (Clio's schedule of the app's region)
        or a callable ``(region, unix_time) -> is_peak`` (a scripted schedule for tests).
    :param endpoint_limits: resource -> its own per-token limit (a separate window), at any time of day.
    :param window: window length in seconds (60 like Clio; shorter makes tests that wait for a reset fast).
    :param access_token_ttl: ``expires_in`` of issued access tokens (Clio: 30 days).
    :param refresh_returns_token: a refresh response repeats the (unchanged) refresh token; Clio may omit it.
    :param updated_since_inclusive: ``updated_since`` keeps ``updated_at >= since`` instead of Manage's ``>``.
    :param api_version: the default ``X-API-VERSION`` (echoed when the request sends none).
    :param retired_versions: ``4.0.x`` versions that answer 410 although well-formed.
    :param offset_cap: records reachable by offset paging; a page reaching past it answers 422.
    """

    records: Mapping[str, int] = field(default_factory=dict)
    peak_limit: int | None = 50
    off_peak_limit: int | None = 300
    peak: PeakSetting = True
    endpoint_limits: Mapping[str, int] = field(default_factory=dict)
    window: float = 60.0
    access_token_ttl: float = 2_592_000.0
    refresh_returns_token: bool = False
    updated_since_inclusive: bool = False
    api_version: str = DEFAULT_API_VERSION
    retired_versions: tuple[str, ...] = ()
    offset_cap: int = 10_000

    def __post_init__(self) -> None:
        check_peak(self.peak)
        if self.window <= 0 or self.access_token_ttl <= 0 or self.offset_cap < 0:
            raise ValueError("window and access_token_ttl must be > 0, offset_cap >= 0")
        for name in ("peak_limit", "off_peak_limit"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None")
        object.__setattr__(self, "retired_versions", tuple(self.retired_versions))

    @classmethod
    def coerce(cls, value: ManageSettings | Mapping[str, Any] | None) -> ManageSettings:
        """Accept settings, a mapping of their field names (unknown names raise ``ValueError``) or None."""
        if value is None:
            return cls()
        if isinstance(value, ManageSettings):
            return value
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown Manage settings {sorted(unknown)}")
        return cls(**value)


def _pairs(raw: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            out[name] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME=N: {item!r}") from None
    return out


def _peak(raw: str) -> bool | str:
    choices: dict[str, bool | str] = {"peak": True, "off-peak": False, CLIO_SCHEDULE: CLIO_SCHEDULE}
    if raw not in choices:
        raise argparse.ArgumentTypeError(f"expected one of {list(choices)}")
    return choices[raw]


def add_manage_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--manage-...`` options to the emulator's command line."""
    g = parser.add_argument_group("Clio Manage API v4 (/api/v4)")
    g.add_argument("--manage-records", type=_pairs, default={}, help="e.g. activities=20000,matters=5000")
    g.add_argument("--manage-peak-limit", type=int, default=50, help="requests per window per token at peak")
    g.add_argument("--manage-off-peak-limit", type=int, default=300, help="same, off-peak")
    g.add_argument("--manage-no-rate-limit", action="store_true", help="admit every Manage request")
    g.add_argument("--manage-peak", type=_peak, default=True, help="peak (default), off-peak or clio")
    g.add_argument("--manage-endpoint-limits", type=_pairs, default={}, help="e.g. activities=20")
    g.add_argument("--manage-window", type=float, default=60.0, help="window length in seconds")
    g.add_argument("--manage-access-token-ttl", type=float, default=2_592_000.0)
    g.add_argument("--manage-refresh-returns-token", action="store_true", help="repeat it in refreshes")
    g.add_argument("--manage-api-version", default=DEFAULT_API_VERSION)
    g.add_argument("--manage-retired-versions", default="", help="comma-separated 4.0.x answering 410")
    g.add_argument("--manage-app", action="append", default=[], help="extra Manage app ID:SECRET:REGION")


def manage_settings_from_args(args: argparse.Namespace) -> ManageSettings:
    """Build :class:`ManageSettings` from parsed ``--manage-...`` options."""
    unlimited = args.manage_no_rate_limit
    return ManageSettings(
        records=args.manage_records,
        peak_limit=None if unlimited else args.manage_peak_limit,
        off_peak_limit=None if unlimited else args.manage_off_peak_limit,
        peak=args.manage_peak,
        endpoint_limits={} if unlimited else args.manage_endpoint_limits,
        window=args.manage_window,
        access_token_ttl=args.manage_access_token_ttl,
        refresh_returns_token=args.manage_refresh_returns_token,
        api_version=args.manage_api_version,
        retired_versions=tuple(v.strip() for v in args.manage_retired_versions.split(",") if v.strip()),
    )
