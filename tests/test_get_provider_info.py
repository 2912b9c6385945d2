# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import json
from importlib import resources
from importlib.metadata import entry_points

import jsonschema
import pytest

from airflow_provider_clio import __version__
from airflow_provider_clio.get_provider_info import REGION_LABELS, get_provider_info
from airflow_provider_clio.regions import REGIONS


def _airflow_schema(name: str) -> dict:
    with resources.files("airflow").joinpath(name).open("rb") as f:
        return json.load(f)


def test_entry_point_returns_the_provider_info():
    eps = entry_points(group="apache_airflow_provider")
    (ep,) = [ep for ep in eps if ep.dist is not None and ep.dist.name == "airflow-provider-clio"]
    info = ep.load()()
    assert info["package-name"] == "airflow-provider-clio"
    assert info["versions"][0] == __version__


def test_provider_info_validates_against_airflows_runtime_schema():
    jsonschema.validate(get_provider_info(), _airflow_schema("provider_info.schema.json"))


def test_connection_type_validates_against_the_strict_provider_yaml_schema():
    # The runtime schema does not check conn-fields; the provider.yaml schema (the UI loader's) does.
    item_schema = _airflow_schema("provider.yaml.schema.json")["properties"]["connection-types"]["items"]
    (conn_type,) = get_provider_info()["connection-types"]
    jsonschema.validate(conn_type, item_schema)
    assert conn_type["connection-type"] == "clio"
    assert conn_type["hook-class-name"] == "airflow_provider_clio.hooks.clio.ClioHook"
    fields = conn_type["conn-fields"]
    assert fields["region"]["schema"]["enum"] == ["us", "ca", "eu", "au"]
    assert fields["refresh_token"]["schema"]["format"] == "password"
    assert {"requests_per_slot", "pool", "pool_size"} <= set(fields)
    from airflow_provider_clio.apis import API_NAMES

    assert fields["api"]["schema"]["enum"] == list(API_NAMES) == ["platform", "manage"]
    assert set(fields["api"]["schema"]["values_display"]) == {"platform", "manage"}
    relabel = conn_type["ui-field-behaviour"]["relabeling"]
    assert {"login", "password", "host"} <= set(relabel)


def test_providers_manager_discovers_the_connection_form():
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "airflow-provider-clio" in pm.providers
    assert pm.providers["airflow-provider-clio"].version == __version__
    behaviours = pm.field_behaviours["clio"]
    assert behaviours["relabeling"]["login"].startswith("OAuth client id")
    widgets = {name for name in pm.connection_form_widgets if name.startswith("extra__clio__")}
    assert {"extra__clio__region", "extra__clio__refresh_token", "extra__clio__requests_per_slot"} <= widgets
    assert pm.connection_form_widgets["extra__clio__refresh_token"].is_sensitive


def test_form_texts_are_plain_text():
    # Airflow 3's form renders conn-field descriptions as plain text, so Markdown would show literally.
    (conn_type,) = get_provider_info()["connection-types"]
    fields = conn_type["conn-fields"].values()
    texts = [text for field in fields for text in (field["label"], field["description"])]
    for group in ("relabeling", "placeholders"):
        texts += conn_type["ui-field-behaviour"][group].values()
    assert texts
    assert not [text for text in texts if "`" in text or "**" in text]


def test_region_choices_carry_readable_labels_through_the_ui_api():
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    (meta,) = [meta for meta in HookMetaService.hook_meta_data() if meta.connection_type == "clio"]
    region = meta.extra_fields["region"]
    assert region["schema"]["enum"] == list(REGIONS)
    assert region["schema"]["values_display"] == REGION_LABELS
    assert set(REGION_LABELS) == set(REGIONS)
    assert region["schema"]["title"] == "Region"
    assert region["value"] == "us"
    assert meta.standard_fields.port.hidden
    assert meta.standard_fields.url_schema.hidden


@pytest.mark.parametrize("module", ["hooks", "operators", "sensors", "triggers"])
def test_declared_modules_import(module):
    import importlib

    for entry in get_provider_info()[module]:
        for name in entry["python-modules"]:
            importlib.import_module(name)
