# SPDX-License-Identifier: Apache-2.0
"""Sphinx configuration of the user guide and API reference (``make docs``)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

# autodoc imports the provider, which imports Airflow, which reads (and on first use writes) a config under
# AIRFLOW_HOME: keep that in the build folder, not the builder's ~/airflow, unless the caller chose a home.
os.environ.setdefault("AIRFLOW_HOME", str(DOCS / "_build" / "airflow-home"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

from airflow_provider_clio import __version__  # noqa: E402

project = "airflow-provider-clio"
author = "airflow-provider-clio contributors"
copyright = "the airflow-provider-clio contributors"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "requirements.txt", "README.md"]

# MyST: `{directive}` fences, auto anchors for "page.md#section" links, ::: fences for admonitions.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# The API reference documents only the public modules (docs/api/); their docstrings are reST.
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True

# The benchmark figure comes from `make bench`; until it is copied to docs/_static the page goes without it
# (a missing image would fail the build, and Sphinx reads images even inside an excluded `only` block).
RPS_PLOT = DOCS / "_static" / "requests-per-second.png"
_RPS_BLOCK = re.compile(r"<!-- rps-plot:.*?<!-- /rps-plot -->\n", re.DOTALL)


def _drop_missing_plot(app: Any, docname: str, source: list[str]) -> None:
    if docname == "rate-limit-design" and not RPS_PLOT.exists():
        source[0] = _RPS_BLOCK.sub("", source[0])


def setup(app: Any) -> None:
    app.connect("source-read", _drop_missing_plot)


# emulator.md shows an abbreviated JSON line ("{...}") that Pygments cannot lex; it falls back to plain text.
suppress_warnings = ["misc.highlighting_failure"]

html_theme = "furo"
html_title = f"airflow-provider-clio {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
