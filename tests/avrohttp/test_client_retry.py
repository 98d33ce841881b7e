"""EchoClient's retry of a call on a kept-alive connection that the server closed (once, and
never after a timeout), against test_client.py's scripted_server; and the words of a call
cut off on a kept-alive connection, by Client and by AsyncClient alike."""

import time

import pytest

import avrohttp
import avrohttp.client
import client
import server
from conftest import serving
from protocol import PROTOCOL_JSON
from test_client import fails_with, scripted_server


def test_a_kept_alive_connection_that_the_server_closed_is_retried_on_a_new_one():
    # Each connection answers one call, then is closed by the server when the next arrives.
    with scripted_server((1, "close")) as (address, counts), \
            client.EchoClient(*address, timeout=5) as echo_client:
        assert echo_client.echo("one") == "one"
        assert echo_client.echo("two") == "two"  # sent twice: on the old connection, then anew
        assert echo_client.split("three") == "th"
    assert (counts.connections, counts.requests) == (3, 5)


def test_the_retry_is_made_once_only():
    # The first connection answers one call; every later one closes without an answer.
    with scripted_server((1, "close"), (0, "close")) as (address, counts), \
            client.EchoClient(*address, timeout=5) as echo_client:
        assert echo_client.echo("one") == "one"
        with fails_with(f"the server at {address[0]}:{address[1]} closed the connection "
                        "before answering"):
            echo_client.echo("two")
        assert (counts.connections, counts.requests) == (2, 3)
        # A failure on a new connection is not retried at all.
        with fails_with(f"cannot reach the server at {address[0]}:{address[1]}: the server "
                        "closed the connection without an answer (if the server serves HTTPS, "
                        "call it with TLS)"):
            echo_client.echo("three")
        assert (counts.connections, counts.requests) == (3, 4)


def test_a_timeout_is_not_retried():
    with scripted_server((1, "hang")) as (address, counts), \
            client.EchoClient(*address, timeout=0.3) as echo_client:
        assert echo_client.echo("one") == "one"
        with fails_with(f"the server at {address[0]}:{address[1]} sent no answer within 0.3 s"):
            echo_client.echo("two")
        assert (counts.connections, counts.requests) == (1, 2)


# --- the words of a call cut off on a kept-alive connection ------------------------------------

TLS_HINT = " (if the server serves HTTPS, call it with TLS)"


def test_a_stopping_server_that_cuts_off_a_kept_alive_connection_is_not_a_tls_mismatch(
        host, monkeypatch):
    # Without a retry, the call meets the kept-alive connection that the stop closed (its
    # check for a connection closed while idle is put off here: it would connect anew, and
    # find the server gone, as the last call below does). That connection had answered: the
    # server was reached over plain HTTP, so no TLS hint.
    monkeypatch.setattr(avrohttp.client.Transceiver, "drop_if_closed_while_idle",
                        lambda transceiver: None)
    with serving(server.EchoResponder(), host) as address:
        plain_client = avrohttp.Client(PROTOCOL_JSON, *address, timeout=5)
        assert plain_client.call("echo", query="one") == "one"
    with plain_client:
        with fails_with(f"the server at {address[0]}:{address[1]} closed the connection "
                        "before answering"):
            plain_client.call("echo", query="two")
        # The next call is on a new connection, which nothing answers.
        with fails_with(f"cannot reach the server at {address[0]}:{address[1]}: "
                        "[Errno 111] Connection refused"):
            plain_client.call("echo", query="three")


def test_a_new_connection_closed_without_an_answer_keeps_the_tls_hint():
    with scripted_server((0, "close")) as (address, counts), \
            avrohttp.Client(PROTOCOL_JSON, *address, timeout=5) as plain_client:
        with fails_with(f"cannot reach the server at {address[0]}:{address[1]}: the server "
                        f"closed the connection without an answer{TLS_HINT}"):
            plain_client.call("echo", query="one")


@pytest.mark.parametrize("retry", [False, True])
def test_the_async_client_words_a_cut_off_kept_alive_connection_alike(retry):
    import asyncio

    async def calls(address) -> list:
        failures = []
        async with avrohttp.AsyncClient(PROTOCOL_JSON, *address, timeout=5,
                                        retry=retry) as async_client:
            assert await async_client.call("echo", query="one") == "one"
            for query in ("two", "three"):  # on the kept-alive connection, then on a new one
                with pytest.raises(avrohttp.CallFailed) as failed:
                    await async_client.call("echo", query=query)
                failures.append(str(failed.value))
        return failures

    # Connection 1 answers one call, then closes on the next; every later one closes at once.
    with scripted_server((1, "close"), (0, "close")) as (address, counts):
        failures = asyncio.run(calls(address))
    where = f"{address[0]}:{address[1]}"
    assert failures == [
        f"the server at {where} closed the connection before answering",
        f"cannot reach the server at {where}: the server closed the connection without an "
        f"answer{TLS_HINT}"]
    assert counts.connections == (3 if retry else 2)


def test_a_connection_closed_while_idle_costs_no_call_even_without_retry(host):
    # The server's idle timeout closes the kept-alive connection between two calls. The
    # client sees that before it sends (nothing was sent: a new connection is safe for any
    # message), so even a client without retry loses no call.
    with serving(server.EchoResponder(), host, idle_timeout=0.2) as address, \
            avrohttp.Client(PROTOCOL_JSON, *address, timeout=5) as plain_client:
        assert plain_client.call("echo", query="one") == "one"
        first = plain_client.transceiver.conn.sock
        time.sleep(1.0)  # the server's sweep closes it within the timeout and a quarter
        assert plain_client.call("echo", query="two") == "two"
        assert plain_client.transceiver.conn.sock is not first
