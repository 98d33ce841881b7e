"""A rolling update under load (deploy/rollout.py): three replicas behind nginx, each replaced
in turn as Kubernetes does it, loses no call, and the new replicas get the calls.

nginx runs here without deploy/nginx.conf's non_idempotent (post_retries=False): it never
sends a call again once it has sent it, so a call that meets a replica closing its
connection fails, rather than being hidden by a retry. The last test checks that such calls
do fail without --shutdown-delay: that is what the others would catch.

The replicas run in network namespaces where this machine allows it (root), on loopback
ports otherwise; the asyncio run is on loopback ports always, so both ways are tested where
namespaces work. Without nginx (`make test` installs it), these tests skip, saying so.
"""

import pytest

from deploy import fleet, rollout

NO_NGINX = "nginx is not installed: the rollout tests need it (apt-get install nginx)"
SHUTDOWN_DELAY = 2.0  # more than the removal lag (1 s) and nginx's reload


def run(**settings) -> rollout.RolloutResult:
    if fleet.nginx_program() is None:
        pytest.skip(NO_NGINX)
    lines: list = []
    result = rollout.rollout(rollout.Settings(seconds=1, post_retries=False, **settings),
                             lines.append)
    print("\n".join([*lines, *rollout.summary(result),
                     *(error.splitlines()[0] for error in result.errors[:3])]))
    return result


@pytest.mark.parametrize("loop, workers, network", [
    ("eventlet", 1, "auto"),
    ("asyncio", 1, "loopback"),
    ("eventlet", 2, "auto"),
], ids=["eventlet", "asyncio-loopback", "eventlet-2-workers"])
def test_a_rolling_update_loses_no_call(loop, workers, network):
    result = run(loop=loop, workers=workers, network=network,
                 shutdown_delay=SHUTDOWN_DELAY, max_connection_age=1.0)
    assert result.made > 1000  # in the windows of 1 s before and after alone, thousands
    assert result.failed == 0, result.errors[:3]
    # nginx met no closed connection nor refused one: it had nothing to send again.
    assert [phase.nginx.retried for phase in result.phases] == [0, 0, 0]
    # Each old replica went on serving for its shutdown delay, then exited cleanly.
    for replacement in result.replacements:
        assert replacement.exit_code == 0, replacement
        assert replacement.exited_after >= SHUTDOWN_DELAY, replacement
    # After the rollout, the calls are spread over the three new replicas.
    after = result.phases[-1].nginx.answered
    assert set(after) == {replacement.new for replacement in result.replacements}, after
    assert min(after.values()) > 0.2 * sum(after.values()), after


def test_without_a_shutdown_delay_calls_meet_closed_connections():
    # The control: the old replica stops accepting and closes its idle kept-alive
    # connections at SIGTERM, while nginx still sends it calls for a second.
    result = run(shutdown_delay=0.0, max_connection_age=1.0)
    assert result.failed > 0 or sum(result.upstream_errors.values()) > 0, result.phases
