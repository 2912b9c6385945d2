# SPDX-License-Identifier: Apache-2.0
"""Follow README.md's "Set up a clio connection" steps literally, as a newcomer would, against the emulator.

The commands are read out of the README's code blocks, so this test breaks when the README changes. They
run through ``bash`` in a fresh AIRFLOW_HOME with the venv's ``airflow`` first on PATH and no
``AIRFLOW__*`` or ``AIRFLOW_CONN_*`` variables inherited, so the connection lives in the metadata
database exactly as ``airflow connections add`` put it. Only three literals are replaced, each asserted to
be in the README: the emulator's port 8765 and the redirect port 8910 (free ports, so parallel runs do not
collide) and the SQLite warehouse path. The person approving in a browser is played by an HTTP GET of the
printed authorize URL, which follows the emulator's redirect to the listening ``airflow clio auth``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from airflow_provider_clio.testing.data import DEFAULT_RECORDS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Set up a `clio` connection"


def readme_commands() -> list[str]:
    """Return the shell commands of the README's setup section, continuation lines joined, in order."""
    section = README.read_text().split(SECTION, 1)[1].split("\n##", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```console\n(.*?)```", section, flags=re.DOTALL):
        pending = ""
        for raw in block.splitlines():
            line = raw.strip()
            if not line:
                continue
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            commands.append(pending + line)
            pending = ""
    return commands


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def newcomer_env(home: Path) -> dict[str, str]:
    """A shell with this venv's tools first on PATH and no Airflow settings from the test session."""
    env = {k: v for k, v in os.environ.items() if not k.lstrip("_").startswith("AIRFLOW")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["AIRFLOW_HOME"] = str(home)
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"  # a fresh airflow.cfg would load ~80 example DAGs
    return env


class Newcomer:
    """Runs README commands one by one in one shell-like environment and keeps what they printed."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.outputs: dict[str, str] = {}
        self.background: list[subprocess.Popen] = []

    def run(self, command: str) -> None:
        if command.startswith("export "):
            # Let bash expand it ($PWD, quotes) and keep the resulting environment.
            done = self._bash(f"{command}\nenv -0")
            self.env = dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)
        elif "testing.emulator" in command:
            self._start_emulator(command)
        elif command.startswith("airflow clio auth"):
            self._authorize(command)
        else:
            done = self._bash(command)
            self.outputs[command] = done.stdout + done.stderr

    def _bash(self, script: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
        return done

    def _popen(self, command: str, stdin: int) -> subprocess.Popen:
        return subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=ROOT,
            env=self.env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _start_emulator(self, command: str) -> None:
        proc = self._popen(command, subprocess.DEVNULL)
        self.background.append(proc)
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert "clio-emulator-us" in ready["apps"]

    def _authorize(self, command: str) -> None:
        proc = self._popen(command, subprocess.DEVNULL)  # no paste: only the redirect can complete it
        assert proc.stdout is not None
        assert proc.stderr is not None
        head, url = "", ""
        while not url:
            line = proc.stdout.readline()
            assert line, f"auth ended early: {head}{proc.stderr.read()}"
            head += line
            if "/oauth/authorize?" in line:
                url = line.strip()
        page = requests.get(url, timeout=60)  # the browser: approve, follow the redirect to the listener
        out, err = proc.stdout.read(), proc.stderr.read()
        assert proc.wait(timeout=300) == 0, head + out + err
        assert page.status_code == 200
        assert "Authorization received" in page.text
        self.outputs[command] = head + out + err

    def stop(self) -> None:
        for proc in self.background:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.timeout(900)
def test_the_readme_setup_steps_work_as_written(tmp_path: Path):
    commands = readme_commands()
    text = "\n".join(commands)
    warehouse = tmp_path / "clio_warehouse.db"
    replacements = {
        "8765": str(free_port()),
        "localhost:8910": f"localhost:{free_port()}",
        "/tmp/clio_warehouse.db": str(warehouse),  # noqa: S108 - the README's literal, replaced
    }
    for literal in replacements:
        assert literal in text, f"README no longer contains {literal!r}: update this test"
    for literal, value in replacements.items():
        commands = [command.replace(literal, value) for command in commands]
    prefixes = [
        "python -m airflow_provider_clio.testing.emulator",
        "export CLIO_CLIENT_ID=",
        "airflow db migrate",
        "airflow connections add clio_default --conn-type clio --conn-host http://127.0.0.1:",
        "airflow clio auth --conn-id clio_default --redirect-uri http://localhost:",
        "airflow clio pools --conn-id clio_default",
        "airflow clio check --conn-id clio_default",
        "export AIRFLOW__CORE__DAGS_FOLDER=",
        "airflow connections add clio_warehouse",
        "airflow dags test clio_incremental_warehouse",
    ]
    assert [next(c for c in commands if c.startswith(p)) for p in prefixes] == commands

    newcomer = Newcomer(newcomer_env(tmp_path / "airflow-home"))
    started = time.monotonic()
    try:
        for command in commands:
            newcomer.run(command)
    finally:
        newcomer.stop()
    elapsed = time.monotonic() - started

    out = newcomer.outputs
    auth = next(v for k, v in out.items() if k.startswith("airflow clio auth"))
    assert "where this command is listening" in auth
    assert "Stored the OAuth tokens of connection 'clio_default'" in auth
    pools = next(v for k, v in out.items() if k.startswith("airflow clio pools"))
    assert "Pool clio_us created: 3 slots, include_deferred=True (limit 3 req/s / 1 req/s per slot)" in pools
    check = next(v for k, v in out.items() if k.startswith("airflow clio check"))
    for line in ("OK: Connected to Clio (us)", "OK: Token store:", "OK: Pool: clio_us (3 slots"):
        assert line in check
    with sqlite3.connect(warehouse) as db:
        for resource in ("contacts", "matters", "activities"):
            query = f"SELECT COUNT(DISTINCT id) FROM clio_{resource}"  # noqa: S608 - fixed names
            assert db.execute(query).fetchone() == (DEFAULT_RECORDS[resource],)
    print(f"README setup steps: {len(commands)} commands in {elapsed:.0f} s")
