"""The lease plan (pure): fair shares, rebalancing as daemons join and leave, takeover after a
daemon dies — one daemon's decision from plain values, then whole fleets tick by tick."""

from __future__ import annotations

import pytest

from sync.runtime.lease_plan import LeasePlan, fair_share, plan_leases

SIX = [f"env_{i}" for i in range(1, 7)]


@pytest.mark.parametrize(
    ("mine", "free", "members", "others", "expected"),
    [
        # alone: everything
        ([], SIX, 1, {}, LeasePlan(6, ())),
        # three members, nothing held yet: two each
        ([], SIX, 3, {}, LeasePlan(2, ())),
        # at the share: nothing to do
        (["env_1", "env_2"], [], 3, {"b": 2, "c": 2}, LeasePlan(0, ())),
        # a third daemon joined: the surplus goes, the last by name first
        (SIX[:3], [], 3, {"b": 3}, LeasePlan(0, ("env_3",))),
        (SIX, [], 3, {}, LeasePlan(0, ("env_6", "env_5", "env_4", "env_3"))),
        # below the share, but nothing free
        (["env_1"], [], 3, {"b": 3, "c": 2}, LeasePlan(0, ())),
        # a member died: its leases expired, two members left → three each
        (["env_1", "env_2"], ["env_5", "env_6"], 2, {"b": 2}, LeasePlan(1, ())),
        # no more free than there are
        ([], ["env_6"], 3, {"b": 2, "c": 2}, LeasePlan(1, ())),
        # an environment removed from the configuration is given up at once
        (["env_1", "env_9"], [], 3, {"b": 2, "c": 2}, LeasePlan(0, ("env_9",))),
        # six over four: 2/2/1/1; at the ceiling, one goes while a member has none
        (["env_1", "env_2"], [], 4, {"b": 2, "c": 2}, LeasePlan(0, ("env_2",))),
        # …and who is at the floor leaves the free one to the starving member
        (["env_1"], ["env_2"], 4, {"b": 2, "c": 2}, LeasePlan(0, ())),
        # 2/2/1/1 is stable
        (["env_1", "env_2"], [], 4, {"b": 2, "c": 1, "d": 1}, LeasePlan(0, ())),
    ],
)
def test_one_daemons_plan(
    mine: list[str],
    free: list[str],
    members: int,
    others: dict[str, int],
    expected: LeasePlan,
) -> None:
    assert plan_leases(SIX, mine, free, members, others) == expected


def test_fair_share_rounds_up_and_survives_no_members() -> None:
    assert [fair_share(6, m) for m in (0, 1, 2, 3, 4, 6, 7)] == [6, 6, 3, 2, 2, 1, 1]


class Fleet:
    """Daemons sharing six environments; each tick every live daemon plans and acts in turn."""

    def __init__(self, environments: list[str]) -> None:
        self.environments = environments
        self.held: dict[str, set[str]] = {}

    def join(self, name: str) -> None:
        self.held[name] = set()

    def die(self, name: str) -> None:
        del self.held[name]  # its leases expire: free for the others

    def free(self) -> list[str]:
        owned = set().union(*self.held.values()) if self.held else set()
        return [e for e in self.environments if e not in owned]

    def tick(self) -> None:
        for name in sorted(self.held):
            mine = self.held[name]
            others = {o: len(h) for o, h in self.held.items() if o != name}
            plan = plan_leases(self.environments, mine, self.free(), len(self.held), others)
            mine.difference_update(plan.release)
            mine.update(self.free()[: plan.acquire])

    def settle(self, ticks: int = 6) -> list[int]:
        for _ in range(ticks):
            self.tick()
        assert sorted(set().union(*self.held.values())) == sorted(self.environments)
        assert sum(len(h) for h in self.held.values()) == len(self.environments)
        return sorted((len(h) for h in self.held.values()), reverse=True)


def test_three_daemons_joining_one_by_one_converge_to_two_each() -> None:
    fleet = Fleet(SIX)
    fleet.join("a")
    assert fleet.settle() == [6]
    fleet.join("b")
    assert fleet.settle() == [3, 3]
    fleet.join("c")
    assert fleet.settle() == [2, 2, 2]


def test_the_environments_of_a_dead_daemon_are_taken_over() -> None:
    fleet = Fleet(SIX)
    for name in "abc":
        fleet.join(name)
    assert fleet.settle() == [2, 2, 2]
    fleet.die("b")
    assert fleet.settle() == [3, 3]
    fleet.join("d")
    assert fleet.settle() == [2, 2, 2]


def test_a_fourth_daemon_gets_work_and_the_fleet_settles() -> None:
    fleet = Fleet(SIX)
    for name in "abc":
        fleet.join(name)
    fleet.settle()
    fleet.join("d")
    assert fleet.settle() == [2, 2, 1, 1]
    before = {name: set(held) for name, held in fleet.held.items()}
    fleet.tick()
    assert fleet.held == before, "a settled fleet moves nothing"


def test_daemons_starting_together_split_evenly() -> None:
    fleet = Fleet(SIX)
    for name in "abc":
        fleet.join(name)
    assert fleet.settle() == [2, 2, 2]


def test_a_holder_is_abandoned_only_when_its_process_is_known_to_be_gone() -> None:
    """Same host, boot and pid namespace, and the pid no longer exists: the lease may be taken
    at once. Another host, another namespace (a container), or a live pid: never."""
    import os
    import socket
    import subprocess
    import sys

    from sync.runtime.leases import PROCESS_SPACE, abandoned, new_holder

    host = socket.gethostname()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(gone.stdout)
    assert new_holder().startswith(f"{host}:{os.getpid()}:{PROCESS_SPACE}")
    assert not abandoned(new_holder())  # this very process
    if PROCESS_SPACE:
        assert abandoned(f"{host}:{dead_pid}:{PROCESS_SPACE}abc123")
        assert abandoned(f"{host}:{dead_pid}:{PROCESS_SPACE}abc123:backfill")
    assert not abandoned(f"{host}:{dead_pid}:ffffff" + "abc123")  # another namespace or boot
    assert not abandoned(f"elsewhere:{dead_pid}:{PROCESS_SPACE}abc123")  # another host
    assert not abandoned(f"{host}:1:{PROCESS_SPACE}abc123")  # init is alive
    assert not abandoned("garbage")
