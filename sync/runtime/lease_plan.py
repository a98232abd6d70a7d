"""Which environments one daemon should take or give up: pure, from what the lease rows say.

Every daemon sharing a store runs this on every lease tick with its own view. The fair share is
ceil(environments / live daemons): a daemon takes free (expired) environments while it has
fewer, and gives up its surplus (the last ones by name, so the choice is stable). Uneven counts
(6 environments, 4 daemons) leave some with the floor and some with the ceiling; a daemon at
the ceiling gives one up while another holds less than the floor (a daemon that just joined),
and nobody at the floor or above takes a free one meanwhile, so it goes to the one that starves.
Environments no longer configured are given up at once.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LeasePlan:
    acquire: int  # how many of the free environments to take (the store picks which)
    release: tuple[str, ...]  # environments to give up, in this order


def fair_share(environments: int, members: int) -> int:
    return math.ceil(environments / max(1, members))


def plan_leases(
    environments: Collection[str],
    mine: Collection[str],
    free: Collection[str],
    members: int,
    others: Mapping[str, int] | None = None,
) -> LeasePlan:
    """`mine`: environments this daemon holds; `free`: the ones nobody holds (expired or
    released); `members`: live daemons, this one included; `others`: how many current leases
    each other holder has (to see a daemon that starves)."""
    members = max(1, members)
    wanted = set(environments)
    gone = sorted(set(mine) - wanted)
    kept = sorted(set(mine) & wanted)
    share = fair_share(len(wanted), members)
    floor = len(wanted) // members
    counts = dict(others or {})
    without_lease = max(0, members - 1 - sum(1 for count in counts.values() if count > 0))
    starving = floor >= 1 and (
        without_lease > 0 or any(0 < count < floor for count in counts.values())
    )
    surplus = max(0, len(kept) - share)
    if surplus == 0 and starving and len(kept) == share > floor:
        surplus = 1
    release = (*gone, *reversed(kept[len(kept) - surplus :]))
    owned = len(kept) - surplus
    if starving and owned >= floor:
        return LeasePlan(0, release)
    takeable = len(set(free) & wanted - set(mine))
    return LeasePlan(max(0, min(share - owned, takeable)), release)
