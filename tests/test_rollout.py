"""A rolling update under load (deploy/rollout.py): three replicas behind nginx, each replaced
in turn as Kubernetes does it, loses no call, and the new replicas get the calls.

nginx runs here without deploy/nginx.conf's non_idempotent (post_retries=False): it never
sends a call again once it has sent it, so a call that meets a replica closing its
connection fails, rather than being hidden by a retry. A control checks that such calls do
fail without --shutdown-delay: that is what the others would catch.

The replicas run in network namespaces where this machine allows it (root), on loopback
ports otherwise; the asyncio run is on loopback ports always, so both ways are tested where
namespaces work. Without nginx (`make test` installs it), these tests skip, saying so.

The last two put nginx's stream module in front (--balancer tcp), which balances connections
as kube-proxy does, and add a third replica to two under load: with --max-connection-age,
the kept-alive clients reach it, none of their calls lost nor sent again; without, none
does. Without the stream module (Debian's libnginx-mod-stream), they skip, saying so.
"""

import pytest

from deploy import fleet, rollout, stream

NO_NGINX = "nginx is not installed: the rollout tests need it (apt-get install nginx)"
NO_STREAM = ("nginx's stream module is not installed: the TCP balancer's tests need it "
             "(apt-get install libnginx-mod-stream)")
SHUTDOWN_DELAY = 2.0  # more than the removal lag (1 s) and nginx's reload


def run(seconds: float = 1, **settings) -> rollout.RolloutResult:
    if fleet.nginx_program() is None:
        pytest.skip(NO_NGINX)
    if settings.get("balancer") == "tcp" and stream.stream_module() is None:
        pytest.skip(NO_STREAM)
    lines: list = []
    result = rollout.rollout(rollout.Settings(seconds=seconds, post_retries=False, **settings),
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
    assert [phase.calls.retried for phase in result.phases] == [0, 0, 0]
    # Each old replica went on serving for its shutdown delay, then exited cleanly.
    for replacement in result.replacements:
        assert replacement.exit_code == 0, replacement
        assert replacement.exited_after >= SHUTDOWN_DELAY, replacement
    # After the rollout, the calls are spread over the three new replicas.
    after = result.phases[-1].calls.answered
    assert set(after) == {replacement.new for replacement in result.replacements}, after
    assert min(after.values()) > 0.2 * sum(after.values()), after


def test_without_a_shutdown_delay_calls_meet_closed_connections():
    # The control: the old replica stops accepting and closes its idle kept-alive
    # connections at SIGTERM, while nginx still sends it calls for a second.
    result = run(shutdown_delay=0.0, max_connection_age=1.0)
    assert result.failed > 0 or sum(result.upstream_errors.values()) > 0, result.phases


def test_behind_a_tcp_balancer_the_connection_age_brings_clients_to_a_new_replica():
    # Connections last half a second, so in the 2 s after the scale-up each client
    # connects again about four times, and a third of those connections go to the new
    # replica. No replica stops: a shutdown delay would only slow the teardown.
    result = run(seconds=2, balancer="tcp", scale_up=True, shutdown_delay=0.0,
                 max_connection_age=0.5)
    assert result.failed == 0, result.errors[:3]
    # Each connection was closed after an answer (Connection: close), never while idle:
    # no client had to send a call again.
    assert [phase.calls.retried for phase in result.phases] == [0, 0, 0]
    after = result.phases[-1].calls.answered
    assert after[result.new[0]] > 0.2 * sum(after.values()), after


def test_behind_a_tcp_balancer_without_the_connection_age_a_new_replica_gets_nothing():
    # The control: each client keeps the connection it opened before the scale-up, and with
    # it the replica that the balancer picked then.
    result = run(balancer="tcp", scale_up=True, shutdown_delay=0.0, max_connection_age=0.0)
    assert result.failed == 0, result.errors[:3]
    after = result.phases[-1].calls.answered
    assert sum(after.values()) > 1000, after
    assert after[result.new[0]] < 0.05 * sum(after.values()), after
