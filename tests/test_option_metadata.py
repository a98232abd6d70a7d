"""The metadata tables' pure parts: rows from hand-built metadata answers, label changes, and the
daemon's cache of structural answers (plain values, a fake clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from sync.errors import HostileResponseError
from sync.mirror import option_metadata as om
from sync.mirror.metadata_refresh import StructureCache, fetch_source, label_fixes

ATTRS = (
    om.MirroredAttribute("industrycode", "Picklist", "Industry"),
    om.MirroredAttribute("tags", "MultiSelectPicklist", "Tags"),
    om.MirroredAttribute("statecode", "State"),
    om.MirroredAttribute("statuscode", "Status"),
    om.MirroredAttribute("donotemail", "Boolean"),
    om.MirroredAttribute("primarycontactid", "Lookup", "Primary Contact"),
    om.MirroredAttribute("name", "String", "Name"),
    om.MirroredAttribute("revenue", "Money", "Revenue"),
)


def label(*entries: tuple[int, str], user: int | None = 1033) -> dict[str, Any]:
    localized = [{"Label": text, "LanguageCode": code} for code, text in entries]
    chosen = next((e for e in localized if e["LanguageCode"] == user), None)
    return {"LocalizedLabels": localized, "UserLocalizedLabel": chosen}


def options(*values: tuple[int, str], **extra: Any) -> dict[str, Any]:
    return {
        "Options": [
            {"Value": v, "Label": label((1033, t), (1031, f"{t}-de")), **extra} for v, t in values
        ]
    }


def source(**overrides: Any) -> om.TableSource:
    casts: dict[str, Any] = {
        "Picklist": [
            {"LogicalName": "industrycode", "OptionSet": options((1, "Retail"), (2, "Farm"))},
            {"LogicalName": "not_mirrored", "OptionSet": options((1, "X"))},
            {
                "LogicalName": "category",  # not mirrored either: no rows
                "GlobalOptionSet": {"Name": "g", **options((5, "G"))},
            },
        ],
        "MultiSelectPicklist": [
            {
                "LogicalName": "tags",
                "OptionSet": None,
                "GlobalOptionSet": {"Name": "shared_tags", **options((1, "A"), (2, "B"))},
            }
        ],
        "State": [{"LogicalName": "statecode", "OptionSet": options((0, "Active"))}],
        "Status": [{"LogicalName": "statuscode", "OptionSet": options((1, "Open"), State=0)}],
        "Boolean": [
            {
                "LogicalName": "donotemail",
                "OptionSet": {
                    "OptionSetType": "Boolean",
                    "TrueOption": {"Value": 1, "Label": label((1033, "Yes"))},
                    "FalseOption": {"Value": 0, "Label": label((1033, "No"))},
                },
            }
        ],
        "Lookup": [{"LogicalName": "primarycontactid", "Targets": ["contact", "lead"]}],
        "String": [{"LogicalName": "name", "MaxLength": 160}],
        "Money": [{"LogicalName": "revenue", "Precision": 2}],
    }
    casts.update(overrides)
    m2o = [
        {
            "ReferencingAttribute": "primarycontactid",
            "ReferencedEntity": "contact",
            "ReferencedAttribute": "contactid",
        }
    ]
    return om.TableSource("account", ATTRS, casts, m2o)


def test_rows_of_every_table() -> None:
    rows = om.all_rows([source()])
    assert rows[om.OPTIONSET] == [
        ("account", "donotemail", 0, 1, 1033, "No"),
        ("account", "donotemail", 1, 1, 1033, "Yes"),
        ("account", "industrycode", 1, 0, 1031, "Retail-de"),
        ("account", "industrycode", 1, 1, 1033, "Retail"),
        ("account", "industrycode", 2, 0, 1031, "Farm-de"),
        ("account", "industrycode", 2, 1, 1033, "Farm"),
    ]
    assert rows[om.GLOBAL_OPTIONSET][:2] == [
        ("account", "tags", "shared_tags", 1, 0, 1031, "A-de"),
        ("account", "tags", "shared_tags", 1, 1, 1033, "A"),
    ]
    assert rows[om.STATE] == [
        ("account", 0, 0, 1031, "Active-de"),
        ("account", 0, 1, 1033, "Active"),
    ]
    assert rows[om.STATUS][1] == ("account", 0, 1, 1, 1033, "Open")
    # One row per target; the referenced attribute from ManyToOneRelationships (unknown: NULL).
    assert rows[om.TARGET] == [
        ("account", "primarycontactid", "contact", "contactid"),
        ("account", "primarycontactid", "lead", None),
    ]
    by_name = {r[1]: r for r in rows[om.ATTRIBUTE]}
    assert by_name["name"] == ("account", "name", "String", 14, "Name", None, None, 160)
    assert by_name["revenue"][2:4] == ("Money", 8) and by_name["revenue"][6] == 2
    assert by_name["tags"][2:4] == ("MultiSelectPicklist", 17)  # AttributeType Virtual


def test_duplicate_languages_keep_one_row_and_no_user_label_marks_none() -> None:
    twice = {"Options": [{"Value": 1, "Label": label((1033, "A"), (1033, "B"), user=None)}]}
    rows = om.option_rows([source(Picklist=[{"LogicalName": "industrycode", "OptionSet": twice}])])
    assert rows[om.OPTIONSET][-1:] == [("account", "industrycode", 1, 0, 1033, "A")]


@pytest.mark.parametrize(
    "bad",
    [
        {"Options": "nope"},
        {"Options": [{"Value": "1", "Label": label((1033, "A"))}]},
        {"Options": [{"Value": True, "Label": label((1033, "A"))}]},
        {"Options": [{"Value": 2**31, "Label": label((1033, "A"))}]},
        {"Options": [{"Value": 1, "Label": {"LocalizedLabels": [{"Label": 5}]}}]},
        {"Options": [{"Value": 1, "Label": "text"}]},
    ],
)
def test_malformed_option_sets_refuse_the_refresh(bad: dict[str, Any]) -> None:
    with pytest.raises(HostileResponseError, match=r"table account: .*previous rows"):
        om.all_rows([source(Picklist=[{"LogicalName": "industrycode", "OptionSet": bad}])])


def test_targets_must_be_names() -> None:
    with pytest.raises(HostileResponseError, match="Targets of primarycontactid"):
        om.all_rows([source(Lookup=[{"LogicalName": "primarycontactid", "Targets": [1]}])])


def test_catalogue_columns_become_attributes() -> None:
    found = om.mirrored_attributes(
        [
            ("accountid", "Uniqueidentifier", "Account", None),
            ("_primarycontactid_value", "Lookup", "Primary Contact", None),
            ("_primarycontactid_value__type", "Lookup", "Primary Contact", None),
            ("industrycode", "Picklist", "Industry", None),
            ("industrycode__label", "Picklist", "Industry", None),
            ("revenue__old_text", "Money", None, None),
        ]
    )
    assert [(a.name, a.kind) for a in found] == [
        ("accountid", "Uniqueidentifier"),
        ("industrycode", "Picklist"),
        ("primarycontactid", "Lookup"),
    ]
    assert om.casts_needed(found) == ["Picklist", "Lookup"]


def test_relabel_fixes_only_changed_options_of_labelled_columns() -> None:
    before = om.all_rows([source()])
    relabelled = options((1, "Retail"), (2, "Farming"))
    tags = {"Name": "shared_tags", **options((1, "A"), (2, "Bee"))}
    after = om.all_rows(
        [
            source(
                Picklist=[{"LogicalName": "industrycode", "OptionSet": relabelled}],
                MultiSelectPicklist=[{"LogicalName": "tags", "GlobalOptionSet": tags}],
            )
        ]
    )
    fixes = {(f.table, f.column): f for f in label_fixes(before, after, {"account": ATTRS})}
    assert set(fixes) == {("account", "industrycode"), ("account", "tags")}
    assert fixes["account", "industrycode"].labels == {2: "Farming"}
    assert fixes["account", "industrycode"].recompute is None
    recompute = fixes["account", "tags"].recompute
    assert recompute is not None
    assert recompute("1,2") == "A; Bee"
    assert recompute("2,9") is None  # an option without a label: the stored label stays
    assert label_fixes(before, before, {"account": ATTRS}) == []
    # A Yes/No column has no __label column: nothing to fix.
    yes = {"Value": 1, "Label": label((1033, "Sure"))}
    boolean = [{"LogicalName": "donotemail", "OptionSet": {"TrueOption": yes}}]
    assert label_fixes(before, om.all_rows([source(Boolean=boolean)]), {"account": ATTRS}) == []


def test_hash_follows_the_rows() -> None:
    rows = om.all_rows([source()])
    assert om.rows_hash(rows[om.OPTIONSET]) == om.rows_hash(list(rows[om.OPTIONSET]))
    assert om.rows_hash(rows[om.OPTIONSET]) != om.rows_hash(rows[om.OPTIONSET][1:])


class FakeSource:
    """Answers metadata GETs from a table of answers and counts them."""

    def __init__(self, answers: Mapping[str, Any]) -> None:
        self.answers = answers
        self.urls: list[str] = []

    async def get(
        self, url: str, *, table: str | None = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        self.urls.append(url)
        for marker, answer in self.answers.items():
            if marker in url:
                return {"value": answer}
        return {"value": []}


def test_daemon_reads_structure_again_only_when_columns_change_or_it_is_old() -> None:
    now = [0.0]
    cache = StructureCache(clock=lambda: now[0])
    client = FakeSource({"Picklist": [], "ManyToOne": [], "Lookup": [], "String": []})
    attrs = ATTRS[:1] + ATTRS[5:7]  # a choice, a lookup, a string

    def fetch(attributes: tuple[om.MirroredAttribute, ...]) -> int:
        _, requests = asyncio.run(fetch_source(client, "https://x", "account", attributes, cache))
        return requests

    assert fetch(attrs) == 4  # Picklist, Lookup, String, ManyToOneRelationships
    assert fetch(attrs) == 1  # only the option cast, which carries the labels
    assert fetch(attrs[:2]) == 3  # the mirrored columns changed: structure read again
    now[0] = 4000.0
    assert fetch(attrs[:2]) == 3
    assert all("$select=" in url for url in client.urls)
