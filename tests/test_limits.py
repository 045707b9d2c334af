"""Connection limits: beyond max_connections, clients wait in the backlog."""
import pytest

from conftest import RawConn, get_request


def test_connections_beyond_the_limit_wait_then_are_served(server):
    live = server(lambda ex: ex.respond(200, [], b"ok"), max_connections=2)
    a, b = live.connect(), live.connect()
    try:
        for c in (a, b):
            c.send(get_request("/"))
            assert c.read_response().status == 200
        third = live.connect(timeout=0.5)
        third.send(get_request("/"))
        # Accepted by the kernel, not by yimmo: no answer while two are open.
        with pytest.raises(AssertionError, match="timed out"):
            third.read_response()
        a.close()
        third.sock.settimeout(5)
        resp = third.read_response()
        assert resp.status == 200 and resp.body == b"ok"
        third.close()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("wsgi", [False, True], ids=["native", "wsgi"])
@pytest.mark.parametrize("limit", [1, 3])
def test_every_connection_waiting_at_the_limit_is_still_served(server, limit, wsgi):
    """At max_connections the listeners pause. When every open connection
    then has a request waiting for the next dispatch, the loop watched
    nothing else: run() returned and the requests went unanswered (under
    yimmo-wsgi --worker-connections the worker exited)."""
    import yimmo
    from conftest import LiveServer, stop_servers, wait_accepting
    if wsgi:
        # As the arbiter runs it: a heartbeat on the loop.
        live = LiveServer(yimmo.WSGIServer(lambda e, sr: (sr("200 OK", []), [b"ok"])[1],
                                           port=0, max_connections=limit,
                                           on_tick=lambda: None, tick_interval=0.05))
        live.thread.start()
        wait_accepting(live)
    else:
        live = server(lambda ex: ex.respond(200, [], b"ok"), max_connections=limit)
    try:
        for _ in range(2):  # new connections each round, the last ones closed
            conns = [live.connect() for _ in range(limit)]
            for _ in range(3):  # keep-alive rounds, all requests sent at once
                for c in conns:
                    c.send(get_request("/"))
                for c in conns:
                    resp = c.read_response()
                    assert resp.status == 200 and resp.body == b"ok"
            for c in conns:
                c.close()
        assert not live.returned.is_set(), "run() returned while serving"
    finally:
        if wsgi:
            stop_servers([live])


def test_max_connections_is_checked(server):
    import yimmo
    with pytest.raises(ValueError, match="max_connections"):
        yimmo.Server(lambda ex: None, port=0, max_connections=0)
    with pytest.raises(TypeError, match="max_connections"):
        yimmo.Server(lambda ex: None, port=0, max_connections="many")


def test_small_send_high_water_still_serves_a_large_response(server):
    """With a 4 KiB high-water mark, a 1 MiB response still arrives whole."""
    body = bytes(range(256)) * 4096
    live = server(lambda ex: ex.respond(200, [], body), send_high_water=4096, read_size=512)
    with live.connect() as c:
        c.send(get_request("/"))
        resp = c.read_response()
        assert resp.status == 200 and resp.body == body


def test_buffer_settings_are_checked():
    import yimmo
    for name in ("read_size", "send_high_water"):
        with pytest.raises(ValueError, match=name):
            yimmo.Server(lambda ex: None, port=0, **{name: 0})
