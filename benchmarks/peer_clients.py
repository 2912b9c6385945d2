# SPDX-License-Identifier: Apache-2.0
"""The clients compared by ``bench_peers.py``; each stream runs this script as its own OS process.

``python peer_clients.py '<json spec>'``: builds the client named by ``spec["client"]`` (imports done,
token ready), touches ``spec["ready"]``, waits for ``spec["go"]`` (a monotonic start time), pages through one
resource (in a process forked at the go if ``spec["fork_at_go"]``), and writes what it measured to
``spec["result"]`` (JSON).

Each client is configured the way its own documentation suggests (see ``PEER_CONFIG``, published with the
figures in ``benchmarks/README.md``).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CLIENTS", "PEER_CONFIG", "main"]

FIELDS = {
    "contacts": "id,name,email,status,updated_at",
    "matters": "id,display_number,status,updated_at",
    "activities": "id,type,date,total,updated_at",
}
PAGE = 200

PEER_CONFIG = {
    "provider": "ClioHook(conn_id, pool_slots=1).paginate(endpoint, fields); connection extra "
    "requests_per_slot=1.0 (the default); default RetrySettings (6 attempts, full-jitter backoff 1-16 s, "
    "Retry-After honoured). One process per stream, as one Airflow task each.",
    "guide_loop": "requests.Session; GET the list, follow meta.paging.next; no pacing; after each 429 sleep "
    "1, 2, 4, 8, 16 s (reset after a success), give up after 5 retries: the loop Clio's rate-limit guide "
    "suggests.",
    "http_operator": "HttpOperator(method='GET', endpoint, data={fields, limit: 200}, "
    "headers={Authorization}, "
    "pagination_function=lambda r: {'data': {'page_token': <token of meta.paging.next>}} or None, "
    "retry_args={'wait': tenacity.wait_exponential(), 'stop': tenacity.stop_after_attempt(10), "
    "'retry': tenacity.retry_if_exception_type(Exception)}) (apache-airflow-providers-http docs: "
    "pagination_function howto and HttpHook.run_with_advanced_retry), executed with execute(context={}).",
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _provider(spec: dict[str, Any]) -> Callable[[], int]:
    from airflow_provider_clio.auth import MemoryTokenStore
    from airflow_provider_clio.hooks.clio import ClioHook

    hook = ClioHook(spec["conn_id"], pool_slots=1, token_store=MemoryTokenStore())
    hook.token_manager.access_token()  # the connection's access token: no request
    return lambda: sum(1 for _ in hook.paginate(f"grow/{spec['resource']}", fields=FIELDS[spec["resource"]]))


def _guide_loop(spec: dict[str, Any]) -> Callable[[], int]:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {spec['token']}"

    def run() -> int:
        url: str | None = f"{spec['url']}/grow/{spec['resource']}"
        params: dict[str, Any] | None = {"fields": FIELDS[spec["resource"]], "limit": PAGE}
        records = 0
        while url:
            for retry in range(6):
                response = session.get(url, params=params, timeout=60)
                if response.status_code != 429 or retry == 5:
                    break
                time.sleep(2**retry)  # 1, 2, 4, 8, 16 s
            response.raise_for_status()
            body = response.json()
            records += len(body["data"])
            url, params = body["meta"]["paging"].get("next"), None
        return records

    return run


def _http_operator(spec: dict[str, Any]) -> Callable[[], int]:
    from urllib.parse import parse_qs, urlsplit

    import tenacity
    from airflow.providers.http.operators.http import HttpOperator

    def next_page(response: Any) -> dict[str, Any] | None:
        link = response.json()["meta"]["paging"].get("next")
        if not link:
            return None
        return {"data": {"page_token": parse_qs(urlsplit(link).query)["page_token"][0]}}

    operator = HttpOperator(
        task_id=f"peer_{spec['resource']}",
        http_conn_id=spec["http_conn_id"],
        method="GET",
        endpoint=f"grow/{spec['resource']}",
        data={"fields": FIELDS[spec["resource"]], "limit": PAGE},
        headers={"Authorization": f"Bearer {spec['token']}"},
        pagination_function=next_page,
        retry_args={
            "wait": tenacity.wait_exponential(),
            "stop": tenacity.stop_after_attempt(10),
            "retry": tenacity.retry_if_exception_type(Exception),
        },
    )
    # Without a response_filter the operator returns every page's text: count the records in them.
    return lambda: sum(len(json.loads(text)["data"]) for text in operator.execute(context={}))


CLIENTS: dict[str, Callable[[dict[str, Any]], Callable[[], int]]] = {
    "provider": _provider,
    "guide_loop": _guide_loop,
    "http_operator": _http_operator,
}


def main(spec: dict[str, Any]) -> None:
    """Build the client, signal ready, wait for the common start, run, write the measurements."""
    import logging

    logging.disable(logging.INFO)  # the HTTP hook logs every call; logging is not what is measured
    run = CLIENTS[spec["client"]](spec)
    base_rss = _rss_mib()
    Path(spec["ready"]).touch()
    go = Path(spec["go"])
    while not go.exists():
        time.sleep(0.005)
    start_at = float(go.read_text())
    time.sleep(max(0.0, start_at - time.monotonic()))
    if spec.get("fork_at_go"):
        # As Airflow's supervisor forks a task's process: the stream runs in a process started at the go, so
        # the provider's limiter waits its whole slot hand-over second (the worst case: no start-up at all).
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)
            return
        try:
            _measure(spec, run, start_at, base_rss)
        finally:
            os._exit(0)
    _measure(spec, run, start_at, base_rss)


def _measure(spec: dict[str, Any], run: Callable[[], int], start_at: float, base_rss: float) -> None:
    cpu0 = os.times()
    error = None
    records = 0
    try:
        records = run()
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    end = time.monotonic()
    cpu1 = os.times()
    result = {
        "start": start_at,
        "end": end,
        "records": records,
        "cpu_seconds": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "base_rss_mib": base_rss,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "error": error,
    }
    Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
