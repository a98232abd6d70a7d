"""``GET /api/data/v9.2/$metadata``: the CSDL XML document of one simulated environment.

The shape follows "Web API Service Documents", "Web API EntityTypes" and "Web API Properties"
(learn.microsoft.com/power-apps/developer/data-platform/webapi/…): an ``edmx:Edmx Version="4.0"``
document whose ``Schema`` has ``Namespace="Microsoft.Dynamics.CRM" Alias="mscrm"``; one
``EntityType`` per table (``Name`` = logical name, ``BaseType="mscrm.crmbaseentity"``, a
``Key`` on the primary id, a ``Property`` per Web API property); the abstract ``crmbaseentity``;
and an ``EntityContainer`` with an ``EntitySet`` per table (``EntityType`` fully qualified).

Properties are exactly the row properties the simulator sends (IsValidODataAttribute, no
AttributeOf), with the Edm types of reference 5.3: lookups as ``_<name>_value`` ``Edm.Guid``,
keys ``Edm.Guid``, Money/Decimal ``Edm.Decimal`` (``Scale="Variable"``), DateTime
``Edm.Date`` for DateOnly *behaviour* and ``Edm.DateTimeOffset`` for every other behaviour
whatever its Format, choices ``Edm.Int32``, multi-select choices ``Edm.String``.

``?annotations=true`` (or ``Prefer: odata.include-annotations="*"``, which the same page says
works too) adds, on each entity set with change tracking, the annotation reference 4.1 quotes
(S12): ``Org.OData.Capabilities.V1.ChangeTracking`` with ``Supported`` true; and on lookup
properties the ``Computed`` and read-only ``Permissions`` annotations "Web API Properties"
describes. Left out (the simulator serves none of it): navigation properties, the metadata
entity types behind ``EntityDefinitions``, actions, and functions other than ``WhoAmI`` and
``RetrieveTotalRecordCount`` (described with their response types and function imports).
"""

from __future__ import annotations

from collections.abc import Iterable
from xml.sax.saxutils import quoteattr

from sync.simulator.attributes import AttributeDef
from sync.simulator.dataset import Table
from sync.simulator.selection import edm_type

XML_CONTENT_TYPE = "application/xml"
_EDMX = "http://docs.oasis-open.org/odata/ns/edmx"
_EDM = "http://docs.oasis-open.org/odata/ns/edm"
_VOCABULARIES = (
    (
        "http://vocabularies.odata.org/OData.Community.Keys.V1.xml",
        "OData.Community.Keys.V1",
        "Keys",
    ),
    (
        "http://vocabularies.odata.org/OData.Community.Display.V1.xml",
        "OData.Community.Display.V1",
        "Display",
    ),
)
_CHANGE_TRACKING = (
    '<Annotation Term="Org.OData.Capabilities.V1.ChangeTracking"><Record>'
    '<PropertyValue Property="Supported" Bool="true" /></Record></Annotation>'
)
_READ_ONLY = (
    '<Annotation Term="Org.OData.Core.V1.Computed" Bool="true" />'
    '<Annotation Term="Org.OData.Core.V1.Permissions">'
    "<EnumMember>Org.OData.Core.V1.PermissionType/Read</EnumMember></Annotation>"
)
_FUNCTIONS = (
    '<ComplexType Name="WhoAmIResponse">'
    '<Property Name="BusinessUnitId" Type="Edm.Guid" Nullable="false" />'
    '<Property Name="UserId" Type="Edm.Guid" Nullable="false" />'
    '<Property Name="OrganizationId" Type="Edm.Guid" Nullable="false" /></ComplexType>'
    '<ComplexType Name="EntityRecordCountCollection">'
    '<Property Name="Count" Type="Edm.Int32" Nullable="false" />'
    '<Property Name="IsReadOnly" Type="Edm.Boolean" Nullable="false" />'
    '<Property Name="Keys" Type="Collection(Edm.String)" Nullable="false" />'
    '<Property Name="Values" Type="Collection(Edm.Int64)" Nullable="false" /></ComplexType>'
    '<ComplexType Name="RetrieveTotalRecordCountResponse">'
    '<Property Name="EntityRecordCountCollection" Type="mscrm.EntityRecordCountCollection" />'
    "</ComplexType>"
    '<Function Name="WhoAmI"><ReturnType Type="mscrm.WhoAmIResponse" Nullable="false" />'
    "</Function>"
    '<Function Name="RetrieveTotalRecordCount">'
    '<Parameter Name="EntityNames" Type="Collection(Edm.String)" Nullable="false" />'
    '<ReturnType Type="mscrm.RetrieveTotalRecordCountResponse" Nullable="false" /></Function>'
)
_FUNCTION_IMPORTS = (
    '<FunctionImport Name="WhoAmI" Function="Microsoft.Dynamics.CRM.WhoAmI" />'
    '<FunctionImport Name="RetrieveTotalRecordCount" '
    'Function="Microsoft.Dynamics.CRM.RetrieveTotalRecordCount" />'
)


def _property(attr: AttributeDef, annotations: bool) -> str:
    """One ``Property`` element, with the facets and annotations a real org gives it."""
    kind = edm_type(attr)
    facets = ' Scale="Variable"' if kind == "Edm.Decimal" else ""
    head = f"<Property Name={quoteattr(attr.web_name)} Type={quoteattr(kind)}{facets}"
    if annotations and attr.is_lookup:
        return f"{head}>{_READ_ONLY}</Property>"
    return f"{head} />"


def _entity_type(table: Table, annotations: bool) -> str:
    template = table.template
    properties = "".join(_property(a, annotations) for a in table.row_attributes())
    return (
        f'<EntityType Name={quoteattr(template.logical_name)} BaseType="mscrm.crmbaseentity">'
        f"<Key><PropertyRef Name={quoteattr(template.primary_id)} /></Key>"
        f"{properties}</EntityType>"
    )


def _entity_set(table: Table, annotations: bool) -> str:
    template = table.template
    head = (
        f"<EntitySet Name={quoteattr(template.entity_set)} "
        f"EntityType={quoteattr('Microsoft.Dynamics.CRM.' + template.logical_name)}"
    )
    if annotations and table.spec.change_tracking:
        return f"{head}>{_CHANGE_TRACKING}</EntitySet>"
    return f"{head} />"


def csdl_document(tables: Iterable[Table], *, annotations: bool) -> bytes:
    """The whole ``$metadata`` document for these tables, UTF-8 encoded."""
    tables = list(tables)
    references = "".join(
        f"<edmx:Reference Uri={quoteattr(uri)}>"
        f"<edmx:Include Namespace={quoteattr(namespace)} Alias={quoteattr(alias)} />"
        f"<edmx:IncludeAnnotations TermNamespace={quoteattr(namespace)} />"
        "</edmx:Reference>"
        for uri, namespace, alias in _VOCABULARIES
    )
    types = "".join(_entity_type(t, annotations) for t in tables)
    sets = "".join(_entity_set(t, annotations) for t in tables)
    document = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<edmx:Edmx Version="4.0" xmlns:edmx="{_EDMX}">{references}<edmx:DataServices>'
        f'<Schema Namespace="Microsoft.Dynamics.CRM" Alias="mscrm" xmlns="{_EDM}">'
        '<EntityType Name="crmbaseentity" Abstract="true" />'
        f"{types}{_FUNCTIONS}"
        f'<EntityContainer Name="System">{sets}{_FUNCTION_IMPORTS}</EntityContainer>'
        "</Schema></edmx:DataServices></edmx:Edmx>"
    )
    return document.encode()
