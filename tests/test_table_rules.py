"""Which tables `tables` rules select, and why the others are left out: plain values in and
out (sync.mirror.table_rules), plus how the configuration accepts and refuses rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sync.config.tables import TableRules
from sync.config.tenants import Environment
from sync.mirror.discovery import rules_of
from sync.mirror.table_rules import Rules, TableInfo, resolve

TABLES = (
    TableInfo("account", metadata_id="A"),
    TableInfo("contact", metadata_id="C"),
    TableInfo("new_project", metadata_id="P", change_tracking=False),
    TableInfo("new_virtualthing", metadata_id="V", table_type="Virtual"),
    TableInfo("new_secret", metadata_id="S", is_private=True),
    TableInfo("new_account_contact", metadata_id="I", is_intersect=True),
    TableInfo("msdyn_flow", metadata_id="M"),
    TableInfo("new_nowebapi", metadata_id="N", entity_set=None),
)


def test_all_skips_virtual_private_intersect_and_unaddressable_tables_quietly() -> None:
    found = resolve(rules_of("all"), TABLES, {})
    assert found.tables == ("account", "contact", "msdyn_flow", "new_project")
    assert found.watermark == ("new_project",)
    assert found.left_out == {
        "new_virtualthing": "virtual table (its rows live in an external source)",
        "new_secret": "private table (IsPrivate)",
        "new_account_contact": "intersect table of an N:N relationship (mirrored only through `relationships`)",
        "new_nowebapi": "no Web API entity set: RetrieveMultiple cannot read it",
    }
    assert found.warnings == ()  # nothing was named, so nothing is said


def test_patterns_excludes_and_named_tables() -> None:
    rules = Rules(include=("account", "new_*", "new_secret", "nosuch"), exclude=("new_p*",))
    found = resolve(rules, TABLES, {})
    assert found.tables == ("account",)
    assert found.left_out["new_project"] == "excluded by 'new_p*'"
    assert found.left_out["nosuch"] == "no such table in this environment"
    # Named exactly: said out loud; matched by a pattern only: left out quietly.
    assert found.warnings == (
        "table 'new_secret' is not mirrored: private table (IsPrivate)",
        "table 'nosuch': no such table in this environment",
    )


def test_solutions_add_their_tables_and_exclude_still_wins() -> None:
    rules = Rules(include=("account",), exclude=("msdyn_*",), solutions=("Sales", "Gone"))
    members = {"Sales": frozenset({"c", "m", "v"})}  # MetadataIds compare case-insensitively
    found = resolve(rules, TABLES, members)
    assert found.tables == ("account", "contact")
    assert found.left_out["msdyn_flow"] == "excluded by 'msdyn_*'"
    assert found.left_out["new_virtualthing"].startswith("virtual table")
    assert found.warnings == ("solution 'Gone' does not exist in this environment",)
    # The solution lost its table: it is no longer resolved.
    assert resolve(rules, TABLES, {"Sales": frozenset()}).tables == ("account",)


def _env(tables: Any) -> Environment:
    return Environment.model_validate(
        {"name": "e", "url": "https://contoso.crm.dynamics.com", "tables": tables}
    )


def test_configuration_accepts_rules_and_refuses_bad_ones() -> None:
    env = _env({"include": ["account", "new_*"], "exclude": ["msdyn_*"], "solutions": ["Sales"]})
    assert isinstance(env.tables, TableRules) and env.fixed_tables is None
    assert rules_of(env.tables) == Rules(("account", "new_*"), ("msdyn_*",), ("Sales",))
    assert _env(["account"]).fixed_tables == ("account",)
    assert _env("all").fixed_tables is None
    for bad, message in (
        ({"include": ["Account Table"]}, "is not a glob over logical names"),
        ({"exclude": ["x"]}, "give include patterns or solutions"),
        ({"solutions": ["not a name"]}, "is not a solution unique name"),
        ({"include": ["a"], "other": 1}, "other: unknown key; use include, exclude and solutions"),
    ):
        with pytest.raises(ValidationError, match=message):
            _env(bad)
