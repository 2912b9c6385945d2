# SPDX-License-Identifier: Apache-2.0
"""The complete DAG examples of the guide build DAGs (blocks with ``...`` placeholder lines are skipped)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
_PLACEHOLDER = re.compile(r"^\s*\.\.\.,?\s*$", re.MULTILINE)


def _dag_examples() -> list[tuple[str, str]]:
    examples = []
    for page in sorted(DOCS.glob("*.md")):
        for number, code in enumerate(_BLOCK.findall(page.read_text(encoding="utf-8"))):
            if "with DAG(" in code and not _PLACEHOLDER.search(code):
                examples.append((f"{page.name}#{number}", code))
    return examples


EXAMPLES = _dag_examples()


def test_the_guide_has_complete_dag_examples() -> None:
    assert {name.split("#")[0] for name, _ in EXAMPLES} >= {"getting-started.md", "recipes.md"}


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_dag_example_builds_a_dag_in_its_region_pool(name: str, code: str) -> None:
    from airflow.sdk import DAG

    namespace: dict[str, object] = {}
    exec(compile(code, name, "exec"), namespace)  # noqa: S102 - the repository's own documentation

    tasks = [task for value in namespace.values() if isinstance(value, DAG) for task in value.tasks]
    assert tasks, f"{name} defines no task"
    assert {task.pool for task in tasks} == {"clio_us"}
