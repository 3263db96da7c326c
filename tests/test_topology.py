"""The pure part of the topology handling: when a connection counts as pinned to one
server session, and the literal SET LOCAL statements (Citus forwards only those)."""

from __future__ import annotations

import pytest

from safeddl import Policy
from safeddl.runtime.topology import CITUS_FORWARD, Topology, set_local_sql


def test_a_direct_connection_is_pinned_unless_the_policy_says_otherwise() -> None:
    direct = Topology(server_pid=4242, client_key=4242)
    pooled = Topology(server_pid=4242, client_key=-1_722_222_111)  # a pooler's key
    assert direct.direct and not pooled.direct
    assert direct.pinned("auto") and not pooled.pinned("auto")
    assert pooled.pinned("session") and not direct.pinned("transaction")


def test_set_local_statements_are_literal_and_forwarded_on_citus() -> None:
    values = {"lock_timeout": "300ms", "statement_timeout": "0ms"}
    assert set_local_sql(values, citus=False) == [
        "SET LOCAL lock_timeout = '300ms'", "SET LOCAL statement_timeout = '0ms'"]
    assert set_local_sql(values, citus=True)[0] == CITUS_FORWARD
    assert CITUS_FORWARD == "SET LOCAL citus.propagate_set_commands = 'local'"


@pytest.mark.parametrize("name,value", [("lock_timeout", "1s'; RESET ALL; --"),
                                        ("search_path", "public"),
                                        ("lock_timeout", "")])
def test_set_local_writes_nothing_but_durations_of_the_two_timeouts(name: str,
                                                                    value: str) -> None:
    with pytest.raises(ValueError):
        set_local_sql({name: value}, citus=False)


def test_pool_mode_is_checked() -> None:
    assert Policy(pool_mode="Session").pool_mode == "session"
    assert Policy().pool_mode == "auto"
    with pytest.raises(ValueError, match="pool_mode"):
        Policy(pool_mode="statement")
