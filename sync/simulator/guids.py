"""How SQL Server orders ``uniqueidentifier`` values, for the canonical GUID text Dataverse sends.

Dataverse keeps its rows in SQL Server, so ``$orderby`` on an ``Edm.Guid`` property (primary
keys, ``_x_value`` lookups) and ``gt``/``ge``/``lt``/``le`` comparisons with a GUID literal
follow SQL Server's ``uniqueidentifier`` order, which is not the order of the text.

The rule, from .NET's ``System.Data.SqlTypes.SqlGuid`` (dotnet/runtime
``src/libraries/System.Data.Common/src/System/Data/SQLTypes/SQLGuid.cs``: ``Compare`` walks
``s_rgiGuidOrder = {10, 11, 12, 13, 14, 15, 8, 9, 6, 7, 4, 5, 0, 1, 2, 3}`` over the stored
bytes and the first differing byte decides) and "Comparing GUID and uniqueidentifier values"
(https://learn.microsoft.com/dotnet/framework/data/adonet/sql/comparing-guid-and-uniqueidentifier-values:
SqlGuid "uses SQL Server behavior", the last six bytes are the most significant). The stored
bytes are .NET's ``Guid.ToByteArray()``: the first three groups of the text little-endian, the
last two as written. For the text ``g1-g2-g3-g4-g5`` that gives, most significant first:

1. ``g5`` (the last 12 hex digits), its bytes left to right as written;
2. ``g4``, left to right as written;
3. ``g3``, its two bytes right to left (the last written byte first);
4. ``g2``, right to left;
5. ``g1``, its four bytes right to left.

So ``01000000-…`` < ``10000000-…`` < ``00010000-…`` (the first written byte is the least
significant of all), and anything in ``g5`` outweighs everything before it.
"""

from __future__ import annotations

import uuid
from functools import lru_cache


@lru_cache(maxsize=4096)  # filter literals and cookie positions are compared against every row
def sqlserver_guid_key(text: str) -> bytes:
    """16 bytes whose plain byte order is SQL Server's order of the GUID `text`.

    Accepts what ``uuid.UUID`` accepts (any case, with or without braces or hyphens);
    raises ValueError for anything that is not a GUID. See the module docstring for the rule
    and its sources.
    """
    raw = uuid.UUID(text).bytes  # the 16 bytes in the order the text writes them
    return raw[10:16] + raw[8:10] + raw[7:5:-1] + raw[5:3:-1] + raw[3::-1]
