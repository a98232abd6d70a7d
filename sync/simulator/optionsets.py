"""Option sets as Dataverse serves them: labels in every installed language, global option sets,
and relabelling an option at runtime (reference 13).

Every label is ``{LocalizedLabels: [{Label, LanguageCode}, …], UserLocalizedLabel}``: one entry
per installed language, ``UserLocalizedLabel`` in the calling user's language (English here).
The simulator has no translator: labels in the other languages are the English label with the
language's name appended (a few common words are translated), which is all a client needs to tell
languages apart.

Relabelling is a metadata change only: the rows keep their versionnumber, and their
FormattedValue annotations show the new label from then on (reference 13).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from sync.simulator.attributes import CHOICE_TYPES, AttributeDef, Option
from sync.simulator.dataset import Table

USER_LANGUAGE = 1033
INSTALLED_LANGUAGES: tuple[int, ...] = (1033, 1031, 1036)
_LANGUAGE_NAMES = {1031: "Deutsch", 1036: "Français"}
_WORDS = {
    1031: {"Active": "Aktiv", "Inactive": "Inaktiv", "Yes": "Ja", "No": "Nein"},
    1036: {"Active": "Actif", "Inactive": "Inactif", "Yes": "Oui", "No": "Non"},
}
_NAMESPACE = uuid.UUID("0b0f6f5e-5a0c-4c39-8d55-2f1c6f3b7a21")


def translated(text: str, language: int) -> str:
    """The label `text` (English) as the simulator shows it in `language`."""
    if language == USER_LANGUAGE or not text:
        return text
    known = _WORDS.get(language, {}).get(text)
    return known or f"{text} ({_LANGUAGE_NAMES.get(language, str(language))})"


def localized_label(text: str, *parts: str) -> dict[str, Any]:
    """A Label complex value with one LocalizedLabels entry per installed language."""
    if not text:
        return {"LocalizedLabels": [], "UserLocalizedLabel": None}
    entries = [
        {
            "Label": translated(text, language),
            "LanguageCode": language,
            "IsManaged": True,
            "MetadataId": str(uuid.uuid5(_NAMESPACE, ".".join((*parts, str(language))))),
            "HasChanged": None,
        }
        for language in INSTALLED_LANGUAGES
    ]
    user = next(e for e in entries if e["LanguageCode"] == USER_LANGUAGE)
    return {"LocalizedLabels": entries, "UserLocalizedLabel": user}


def _option(attr: AttributeDef, option: Option) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Value": option.value,
        "Label": localized_label(option.label, attr.logical_name, str(option.value)),
        "Description": {"LocalizedLabels": [], "UserLocalizedLabel": None},
    }
    if attr.attribute_type == "Status":
        out["State"] = option.state
    return out


def option_set(attr: AttributeDef, *, hostile: bool = False) -> dict[str, Any] | None:
    """The OptionSet of a choice or Yes/No column (for ``$expand=OptionSet``); a column bound to
    a global option set shows that one (``IsGlobal`` true, its ``Name``). `hostile` (the
    table's ``bad_option_set`` fault) sends the option values as strings."""
    if attr.attribute_type == "Boolean":
        false, true = attr.options
        return {
            "OptionSetType": "Boolean",
            "IsGlobal": False,
            "Name": f"{attr.logical_name}_bool",
            "FalseOption": _option(attr, false),
            "TrueOption": _option(attr, true),
        }
    if attr.attribute_type in CHOICE_TYPES or attr.is_multiselect:
        kind = attr.attribute_type if attr.attribute_type in CHOICE_TYPES else "Picklist"
        return {
            "OptionSetType": kind,
            "IsGlobal": attr.global_option_set is not None,
            "Name": attr.global_option_set or attr.logical_name,
            "Options": [
                {**_option(attr, o), "Value": str(o.value)} if hostile else _option(attr, o)
                for o in attr.options
            ],
        }
    return None


def global_option_set(attr: AttributeDef) -> dict[str, Any] | None:
    """``$expand=GlobalOptionSet``: the global option set the column uses, else null."""
    return option_set(attr) if attr.global_option_set is not None else None


def relabel(table: Table, column: str, value: int, text: str) -> dict[str, Any]:
    """Give option `value` of `column` the (English) label `text`; no row changes."""
    if not text or len(text) > 200:
        raise ValueError("label must be 1 to 200 characters")
    for i, attr in enumerate(table.attributes):
        if attr.logical_name != column or attr.attribute_of is not None:
            continue
        if not attr.options:
            raise ValueError(f"column {column!r} of {table.name} has no options")
        if all(o.value != value for o in attr.options):
            raise ValueError(f"column {column!r} of {table.name} has no option {value}")
        options = tuple(replace(o, label=text) if o.value == value else o for o in attr.options)
        table.attributes[i] = replace(attr, options=options)
        table._changed_columns()  # the FormattedValue renderers read the labels
        return {"table": table.name, "column": column, "value": value, "label": text}
    raise ValueError(f"{table.name} has no column {column!r}")
