"""The XMPP edge as it runs: real Prosody and ejabberd (each test on both), real runxmpp and ASGI
processes, a real client on STARTTLS."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.support.ejabberd import Ejabberd
from tests.support.http import login_cookie, request
from tests.support.processes import Proc, query, start_manage
from tests.support.prosody import Prosody
from tests.support.stack import Stack, provision
from tests.xmpp.client import Seen, XmppTestClient, xmpp_client

pytestmark = pytest.mark.slow

PASSWORD = "carol-pw"


def wait_until(condition: Callable[[], bool], *, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


def bridging(proc: Proc, room: str, *, times: int = 1) -> bool:
    return proc.output().count(f"bridging {room}") >= times


def runxmpp(stack: Stack, server: XmppServer) -> Proc:
    proc = start_manage("runxmpp", ["runxmpp"], env=stack.env, log_dir=stack.tmp)
    stack.procs.append(proc)
    wait_until(lambda: bridging(proc, f"lobby@{server.muc}") or proc.popen.poll() is not None,
               what="runxmpp bridging the lobby")
    assert proc.popen.poll() is None, proc.output()
    return proc


def cursor(stack: Stack) -> int:
    rows = query(stack.database_url, "SELECT c.seq FROM bridge_edgecursor c JOIN bridge_room r "
                 "ON r.id = c.room_id WHERE c.edge = 'xmpp' AND r.slug = 'lobby'")
    return int(rows[0][0]) if rows else -1  # type: ignore[call-overload]


def history(base: str) -> list[dict[str, Any]]:
    status, body = request(f"{base}/api/rooms/lobby/messages?limit=500")
    assert status == 200, body
    return list(body["messages"])


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws/rooms/lobby/"


async def ws_frame(sock: Any, kind: str, *, timeout: float = 15) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(sock.recv(), timeout=timeout))
        if frame["type"] == kind:
            return frame


def groupchat_from(room: str, nick: str, body: str | None = None) -> Callable[[Seen], bool]:
    return lambda s: (s.kind == "groupchat" and s.sender == f"{room}/{nick}" and not s.delayed
                      and (body is None or s.body == body))


def occupant(room: str, nick: str) -> Callable[[Seen], bool]:
    return lambda s: s.kind == "presence" and s.sender == f"{room}/{nick}" and s.presence_type == "available"


XmppServer = Prosody | Ejabberd


@pytest.fixture(params=["prosody", "ejabberd"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[XmppServer]:
    """Each server with the repo's configuration for it, on loopback, with a user carol."""
    xmpp_server: XmppServer = (Prosody if request.param == "prosody" else Ejabberd)(base=tmp_path)
    xmpp_server.start()
    try:
        xmpp_server.register("carol", PASSWORD)
        yield xmpp_server
    finally:
        xmpp_server.stop()


def carol_client(server: XmppServer) -> Any:
    """carol on STARTTLS, verifying the server's certificate."""
    return xmpp_client(f"carol@{server.domain}", PASSWORD, port=server.c2s_port,
                       ca_file=server.ca_file)


@pytest.fixture
def xmpp_stack(tmp_path: Path, server: XmppServer, redis_url: str) -> Iterator[tuple[Stack, str, Proc]]:
    stack = provision(tmp_path, REDIS_URL=redis_url, **server.bridge_settings())
    try:
        base = stack.asgi("web")
        proc = runxmpp(stack, server)
        yield stack, base, proc
    finally:
        stack.stop()


# --- the three edges ---------------------------------------------------------------


async def test_web_mqtt_and_xmpp_each_reach_the_other_two_exactly_once(
    tmp_path: Path, server: XmppServer, redis_url: str
) -> None:
    from tests.support.mosquitto import mosquitto_server
    from tests.support.mqtt_device import TestDevice

    broker = mosquitto_server(tmp_path / "mosquitto", {"sensor-1": "pw-sensor-1"})
    stack = provision(tmp_path, REDIS_URL=redis_url, MQTT_URL=broker.bridge_url,
                      MQTT_UNKNOWN_DEVICES="refuse", MQTT_SWEEP_INTERVAL="1",
                      **server.bridge_settings())
    room = f"lobby@{server.muc}"
    device = None
    try:
        from tests.support.processes import manage

        manage(["devices", "add", "sensor-1", "--room", "lobby"], env=stack.env)
        base = stack.asgi("web")
        mqtt = start_manage("runmqtt", ["runmqtt", "--client-id", "bridge-x"], env=stack.env,
                            log_dir=tmp_path)
        stack.procs.append(mqtt)
        wait_until(lambda: "subscribed (mid" in mqtt.output(), what="runmqtt subscribed")
        runxmpp(stack, server)

        device = TestDevice(broker.port, "sensor-1", "pw-sensor-1")
        device.subscribe("rooms/lobby/messages")
        device.publish("devices/sensor-1/status", "online", retain=True)
        cookie = await asyncio.to_thread(login_cookie, base, "demo", "demo")
        async with websockets.connect(  # type: ignore[arg-type]
            ws_url(base), origin=base, additional_headers={"Cookie": cookie}
        ) as sock, carol_client(server) as carol:
            await ws_frame(sock, "history")
            carol.join(room, "carol")
            # The browser user and the device are occupants, each under their own name.
            await carol.expect(occupant(room, "demo"))
            await carol.expect(occupant(room, "sensor-1"))
            # ... and the browser sees carol, the XMPP user, in the room's presence.
            while (await ws_frame(sock, "presence"))["who"] != {"kind": "xmpp", "name": "carol"}:
                pass

            ws_texts: list[str] = []
            xmpp_texts: list[str] = []
            device_texts: list[str] = []

            async def ws_message(text: str) -> dict[str, Any]:
                while True:
                    frame = await ws_frame(sock, "message")
                    ws_texts.append(frame["message"]["text"])
                    if frame["message"]["text"] == text:
                        return dict(frame["message"])

            async def device_message(text: str) -> dict[str, Any]:
                while True:
                    envelope = json.loads(await asyncio.to_thread(device.expect, "rooms/lobby/messages"))
                    device_texts.append(envelope["text"])
                    if envelope["text"] == text:
                        return dict(envelope)

            carol.say(room, "from xmpp", origin_id="carol-1")
            carol_sender = {"kind": "xmpp", "name": "carol"}
            assert (await ws_message("from xmpp"))["sender"] == carol_sender
            assert (await device_message("from xmpp"))["sender"] == carol_sender

            await sock.send(json.dumps({"type": "message", "text": "from web", "client_id": "w-1"}))
            await carol.expect(groupchat_from(room, "demo", "from web"))
            assert (await device_message("from web"))["sender"] == {"kind": "user", "name": "demo"}

            device.publish("devices/sensor-1/rooms/lobby", "from device")
            await carol.expect(groupchat_from(room, "sensor-1", "from device"))
            assert (await ws_message("from device"))["sender"] == {"kind": "device", "name": "sensor-1"}

            # Exactly once: let anything late arrive, then count everything each one got.
            await asyncio.sleep(2)
            while True:
                try:
                    frame = json.loads(await asyncio.wait_for(sock.recv(), 0.3))
                except TimeoutError:
                    break
                if frame["type"] == "message":
                    ws_texts.append(frame["message"]["text"])
            # carol's client kept every groupchat stanza it did not wait for in its inbox.
            xmpp_texts = ["from web", "from device"]
            while not carol.inbox.empty():
                seen = carol.inbox.get_nowait()
                if seen.kind == "groupchat" and seen.body and not seen.delayed:
                    xmpp_texts.append(seen.body)
        while not device.messages.empty():
            _, payload = device.messages.get_nowait()
            device_texts.append(json.loads(payload)["text"])
        everything = Counter({"from xmpp": 1, "from web": 1, "from device": 1})
        assert Counter(ws_texts) == everything, ws_texts
        assert Counter(xmpp_texts) == everything, xmpp_texts  # "from xmpp": the room's reflection
        assert Counter(device_texts) == everything, device_texts
        stored = [(m["origin"], m["text"]) for m in history(base)]
        assert stored == [("xmpp", "from xmpp"), ("web", "from web"), ("mqtt", "from device")]
    finally:
        if device is not None:
            device.close()
        stack.stop()
        broker.stop()


# --- faults ------------------------------------------------------------------------------


def _post_many(base: str, token: str, count: int, posted: list[int]) -> None:
    for i in range(count):
        status, body = request(f"{base}/api/rooms/lobby/messages", method="POST",
                               body={"text": f"m {i}", "client_id": f"m-{i}"},
                               headers={"Authorization": f"Token {token}"})
        assert status == 201, body
        posted.append(i)


def _log_time(line_re: str, text: str, nth: int) -> float:
    stamps = re.findall(r"^(\S+ \S+) .*" + line_re, text, flags=re.M)
    return datetime.strptime(stamps[nth], "%Y-%m-%d %H:%M:%S,%f").timestamp()


async def test_server_restart_during_500_messages_loses_none_and_repeats_none(
    xmpp_stack: tuple[Stack, str, Proc], server: XmppServer, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, base, bridge = xmpp_stack
    room = f"lobby@{server.muc}"
    total = 500
    live: list[str] = []
    async with carol_client(server) as carol:
        carol.join(room, "carol")
        await carol.expect(occupant(room, "carol"))
        posted: list[int] = []
        poster = threading.Thread(target=_post_many, args=(base, stack.token, total, posted))
        poster.start()
        await asyncio.to_thread(wait_until, lambda: len(posted) >= 150, what="150 posted")
        server.kill()
        killed_at = time.time()
        await asyncio.sleep(1)
        server.start()
        restarted_at = time.time()
        # The bridge is back by itself: the relay has rejoined the room.
        await asyncio.to_thread(wait_until, lambda: bridging(bridge, room, times=2), timeout=30,
                                what="runxmpp back in the room")
        back_at = _log_time(f"bridging {re.escape(room)}", bridge.output(), 1)
        while not carol.inbox.empty():
            seen = carol.inbox.get_nowait()
            if seen.kind == "groupchat" and seen.sender == f"{room}/demo" and not seen.delayed:
                live.append(seen.body)
        await asyncio.to_thread(poster.join, 120)
    await asyncio.to_thread(wait_until, lambda: cursor(stack) >= total, timeout=120,
                            what="all 500 delivered to the room")
    async with carol_client(server) as carol:
        archived = [body for nick, body, _ in await carol.archive(room) if nick == "demo"]
    expected = [f"m {i}" for i in range(total)]
    missing = [body for body in expected if body not in set(archived)]
    twice = [body for body, n in Counter(archived).items() if n > 1]
    assert archived == expected, (len(archived), missing[:3], missing[-3:], twice[:5])
    assert len(live) == len(set(live))
    with capsys.disabled():
        print(f"\nxmpp restart: killed->restarted {restarted_at - killed_at:.1f} s, "
              f"restarted->bridging {back_at - restarted_at:.2f} s, "
              f"killed->bridging {back_at - killed_at:.2f} s; {len(live)} live before the kill, "
              f"{len(archived)} in the archive")
    assert back_at - restarted_at < 30


async def test_an_occupants_message_redelivered_is_stored_once(
    xmpp_stack: tuple[Stack, str, Proc], server: XmppServer
) -> None:
    _, base, _ = xmpp_stack
    room = f"lobby@{server.muc}"
    async with carol_client(server) as carol:
        carol.join(room, "carol")
        await carol.expect(occupant(room, "carol"))
        for _ in range(3):
            carol.say(room, "only once", origin_id="same-origin-id")
        carol.say(room, "after")
        await asyncio.to_thread(wait_until, lambda: len(history(base)) >= 2, what="stored")
        await asyncio.sleep(1)
    assert [(m["sender"]["name"], m["text"]) for m in history(base)] == [
        ("carol", "only once"), ("carol", "after")
    ]


async def test_an_occupant_that_keeps_flooding_loses_its_voice_for_a_while(
    tmp_path: Path, server: XmppServer, redis_url: str
) -> None:
    """The relay, the room's moderator, makes a flooder a visitor (the server then refuses its
    messages itself: nothing broadcast or archived) and gives its voice back after
    XMPP_FLOOD_MUTE seconds."""
    stack = provision(tmp_path, REDIS_URL=redis_url, XMPP_FLOOD_MUTE="8", **server.bridge_settings())
    try:
        base = stack.asgi("web")
        bridge = runxmpp(stack, server)
        room = f"lobby@{server.muc}"
        async with carol_client(server) as carol:
            carol.join(room, "carol")
            await carol.expect(occupant(room, "carol"))
            for i in range(40):
                carol.say(room, f"flood {i}")
            muted = await carol.expect(lambda s: s.kind == "presence" and s.sender == f"{room}/carol"
                                       and s.role == "visitor")
            assert muted.presence_type == "available"
            # Muted: the server itself refuses what it sends.
            carol.say(room, "while muted", origin_id="while-muted")
            refusal = await carol.expect(lambda s: s.kind == "error" and s.sender.startswith(room))
            assert refusal.error == "forbidden", refusal
            # She leaves and comes back: Prosody gives her her voice again (roles last one
            # visit) and the relay takes it at once; ejabberd keeps the role it set.
            carol.leave(room, "carol")
            await carol.expect(lambda s: s.kind == "presence" and s.sender == f"{room}/carol"
                               and s.presence_type == "unavailable")
            carol.join(room, "carol")
            back = await carol.expect(lambda s: s.kind == "presence" and s.sender == f"{room}/carol")
            if back.role != "visitor":
                await carol.expect(lambda s: s.kind == "presence" and s.sender == f"{room}/carol"
                                   and s.role == "visitor")
            carol.say(room, "rejoined, still muted", origin_id="rejoined-muted")
            refusal = await carol.expect(lambda s: s.kind == "error" and s.sender.startswith(room))
            assert refusal.error == "forbidden", refusal
            await carol.expect(lambda s: s.kind == "presence" and s.sender == f"{room}/carol"
                               and s.role == "participant", timeout=20)
            carol.say(room, "heard again")
            await asyncio.to_thread(
                wait_until, lambda: any(m["text"] == "heard again" for m in history(base)),
                what="carol's message after the mute")
        texts = [m["text"] for m in history(base)]
        assert "while muted" not in texts and "rejoined, still muted" not in texts
        assert sum(t.startswith("flood ") for t in texts) <= 12  # the burst, and the rate meanwhile
        assert "keeps flooding" in bridge.output() and "gets its voice back" in bridge.output()
        assert back.role == "visitor" or "rejoined" in bridge.output()
    finally:
        stack.stop()


async def test_bad_stanzas_get_errors_and_the_bridge_keeps_running(
    xmpp_stack: tuple[Stack, str, Proc], server: XmppServer
) -> None:
    _, base, bridge = xmpp_stack
    room = f"lobby@{server.muc}"
    async with carol_client(server) as carol:
        carol.join(room, "carol")
        await carol.expect(occupant(room, "carol"))

        carol.say(room, "x" * 20000)
        error = await carol.expect(lambda s: s.kind == "error" and s.sender == server.component)
        assert error.error == "not-acceptable"

        carol.tell(f"nosuchroom@{server.component}", "hello?")
        error = await carol.expect(lambda s: s.kind == "error" and s.sender.startswith("nosuchroom@"))
        assert error.error == "item-not-found"

        # A room of the MUC service the bridge does not bridge: what is said there stays there.
        carol.join(f"elsewhere@{server.muc}", "carol")
        await carol.expect(occupant(f"elsewhere@{server.muc}", "carol"))
        carol.say(f"elsewhere@{server.muc}", "not for the bridge")

        carol.tell(server.component, "help")
        help_reply = await carol.expect(lambda s: s.kind == "chat" and s.sender == server.component)
        assert room in help_reply.body

        carol.say(room, "still here")
        await asyncio.to_thread(wait_until, lambda: len(history(base)) >= 1, what="stored")
    assert bridge.popen.poll() is None
    assert [m["text"] for m in history(base)] == ["still here"]
    assert "refused a message of carol" in bridge.output()
    assert "unknown address" in bridge.output()


# --- TLS on the client port, as the shipped configurations set it -------------------------


async def test_a_client_on_starttls_verifying_the_certificate_logs_in_joins_and_chats(
    xmpp_stack: tuple[Stack, str, Proc], server: XmppServer
) -> None:
    _, base, _ = xmpp_stack
    room = f"lobby@{server.muc}"
    async with carol_client(server) as carol:
        # STARTTLS done, the server's certificate checked against ca_file (the pinned one).
        peer = carol.xmpp.transport.get_extra_info("peercert")
        assert peer is not None and ("DNS", server.domain) in peer["subjectAltName"]
        carol.join(room, "carol")
        await carol.expect(occupant(room, "carol"))
        carol.say(room, "over tls")
        await carol.expect(groupchat_from(room, "carol", "over tls"))
        await asyncio.to_thread(wait_until, lambda: len(history(base)) >= 1, what="stored")
    assert [m["text"] for m in history(base)] == ["over tls"]


async def test_plain_authentication_without_tls_is_refused(server: XmppServer) -> None:
    client = XmppTestClient(f"carol@{server.domain}", PASSWORD, port=server.c2s_port, ca_file=None)
    with pytest.raises(TimeoutError):
        await client.start(timeout=10)
    await client.stop()
    assert not client.session.is_set()


async def test_a_client_pinning_another_certificate_does_not_connect(
    server: XmppServer, tmp_path: Path
) -> None:
    from tests.support.prosody import make_cert

    stranger = make_cert(tmp_path / "stranger", server.domain)
    client = XmppTestClient(f"carol@{server.domain}", PASSWORD, port=server.c2s_port,
                            ca_file=stranger)
    with pytest.raises(TimeoutError):
        await client.start(timeout=10)
    await client.stop()
    assert not client.session.is_set()


# --- identities --------------------------------------------------------------------------


def senders(stack: Stack) -> list[tuple[str, str, str]]:
    return [(str(k), str(n), str(t)) for k, n, t in query(
        stack.database_url,
        "SELECT i.kind, i.name, m.text FROM bridge_message m JOIN bridge_identity i "
        "ON i.id = m.sender_id ORDER BY m.seq")]


async def test_identity_is_the_real_jid_a_nick_change_keeps_it_a_squatter_gets_its_own(
    xmpp_stack: tuple[Stack, str, Proc], server: XmppServer
) -> None:
    stack, base, _ = xmpp_stack
    room = f"lobby@{server.muc}"
    server.register("mallory", "mallory-pw")
    mallory_client = xmpp_client(f"mallory@{server.domain}", "mallory-pw", port=server.c2s_port,
                                 ca_file=server.ca_file)
    async with carol_client(server) as carol, mallory_client as mallory:
        # mallory sits on the web user demo's nick before demo's puppet comes.
        mallory.join(room, "demo")
        await mallory.expect(occupant(room, "demo"))
        carol.join(room, "carol")
        await carol.expect(occupant(room, "carol"))
        carol.say(room, "as carol")
        carol.change_nick(room, "caroline")
        await carol.expect(occupant(room, "caroline"))
        carol.say(room, "as caroline")
        mallory.say(room, "I am demo")
        # The room keeps flowing: demo's web messages reach XMPP from "demo (web)".
        for i in range(3):
            status, body = await asyncio.to_thread(
                request, f"{base}/api/rooms/lobby/messages", method="POST",
                body={"text": f"web {i}", "client_id": f"w-{i}"},
                headers={"Authorization": f"Token {stack.token}"})
            assert status == 201, body
        for i in range(3):
            await carol.expect(groupchat_from(room, "demo (web)", f"web {i}"), timeout=10)
        await asyncio.to_thread(wait_until, lambda: len(history(base)) >= 6, what="all stored")
    stored = senders(stack)
    assert ("xmpp", "carol", "as carol") in stored
    assert ("xmpp", "carol", "as caroline") in stored
    assert ("xmpp", f"demo (mallory@{server.domain})", "I am demo") in stored
    assert [s for s in stored if s[0] == "user"] == [("user", "demo", f"web {i}") for i in range(3)]


# --- private rooms -----------------------------------------------------------------------


async def test_a_private_room_admits_only_its_members_and_follows_membership_changes(
    tmp_path: Path, server: XmppServer, redis_url: str
) -> None:
    from slixmpp.exceptions import IqError, IqTimeout

    from tests.support.processes import manage

    stack = provision(tmp_path, REDIS_URL=redis_url, **server.bridge_settings())
    secret = f"secret@{server.muc}"
    try:
        manage(["rooms", "add", "secret", "--private"], env=stack.env)
        manage(["rooms", "members", "add", "secret", "--jid", f"carol@{server.domain}"], env=stack.env)
        base = stack.asgi("web")
        bridge = runxmpp(stack, server)
        await asyncio.to_thread(wait_until, lambda: bridging(bridge, secret), what="secret bridged")
        server.register("mallory", "mallory-pw")
        mallory_client = xmpp_client(f"mallory@{server.domain}", "mallory-pw",
                                     port=server.c2s_port, ca_file=server.ca_file)
        async with carol_client(server) as carol, mallory_client as mallory:
            carol.join(secret, "carol")
            await carol.expect(occupant(secret, "carol"))
            mallory.join(secret, "mallory")
            refused = await mallory.expect(lambda s: s.sender.startswith(secret) and bool(s.error))
            assert refused.error == "registration-required"
            status, body = await asyncio.to_thread(
                request, f"{base}/api/rooms/secret/messages", method="POST",
                body={"text": "members only", "client_id": "s-1"},
                headers={"Authorization": f"Token {stack.token}"})
            assert status == 201, body
            await carol.expect(groupchat_from(secret, "demo", "members only"))
            # The archive is the members' too.
            try:
                leaked = await mallory.archive(secret)
            except (IqError, IqTimeout):
                leaked = []
            assert leaked == []
            seen_by_mallory = []
            while not mallory.inbox.empty():
                seen_by_mallory.append(mallory.inbox.get_nowait().body)
            assert "members only" not in seen_by_mallory

            # Made a member in Django: the room lets mallory in.
            await asyncio.to_thread(manage, ["rooms", "members", "add", "secret", "--jid",
                                             f"mallory@{server.domain}"], env=stack.env)
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                mallory.join(secret, "mallory")
                seen = await mallory.expect(lambda s: s.sender == f"{secret}/mallory", timeout=5)
                if not seen.error:
                    break
                assert asyncio.get_running_loop().time() < deadline, "mallory never admitted"
                await asyncio.sleep(0.5)
    finally:
        stack.stop()


# --- Redis going away under runxmpp -----------------------------------------------------------


async def test_runxmpp_rides_out_a_redis_restart_and_sends_what_was_stored_meanwhile(
    tmp_path: Path,
) -> None:
    from tests.support.processes import free_port, redis_server, start

    prosody = Prosody(base=tmp_path / "xmpp")
    prosody.start()
    redis = redis_server(tmp_path)
    ops = free_port()
    stack = provision(tmp_path, REDIS_URL=str(redis.extra["url"]), OPS_PORT=str(ops),
                      **prosody.bridge_settings())
    room = f"lobby@{prosody.muc}"
    base = ""

    def post(text: str) -> None:
        status, body = request(f"{base}/api/rooms/lobby/messages", method="POST",
                               body={"text": text, "client_id": text},
                               headers={"Authorization": f"Token {stack.token}"})
        assert status == 201, body

    def readyz() -> tuple[int, Any]:
        return request(f"http://127.0.0.1:{ops}/readyz")  # type: ignore[no-any-return]

    try:
        prosody.register("carol", PASSWORD)
        base = stack.asgi("web")
        bridge = runxmpp(stack, prosody)
        async with carol_client(prosody) as carol:
            carol.join(room, "carol")
            await carol.expect(occupant(room, "carol"))
            redis.kill()
            await asyncio.to_thread(post, "while redis is down")  # stored; its wake-up is lost
            # runxmpp says it is not ready (its channel layer is away) and keeps running.
            await asyncio.to_thread(wait_until, lambda: readyz()[0] == 503, what="runxmpp not ready")
            assert bridge.popen.poll() is None, bridge.output()
            redis = start("redis-again", [str(a) for a in redis.popen.args], log_dir=tmp_path)
            await carol.expect(groupchat_from(room, "demo", "while redis is down"), timeout=30)
            await asyncio.to_thread(post, "after redis is back")
            await carol.expect(groupchat_from(room, "demo", "after redis is back"), timeout=30)
            await asyncio.to_thread(wait_until, lambda: readyz()[0] == 200, what="runxmpp ready")
        assert bridge.popen.poll() is None
    finally:
        stack.stop()
        redis.stop()
        prosody.stop()


async def test_a_user_links_their_account_from_their_page_and_then_speaks_as_themselves(
    xmpp_stack: tuple[Stack, str, Proc], server: XmppServer
) -> None:
    import html
    import urllib.request

    stack, base, _ = xmpp_stack
    room = f"lobby@{server.muc}"
    cookie = await asyncio.to_thread(login_cookie, base, "demo", "demo")

    def account_page() -> str:
        page = urllib.request.Request(f"{base}/accounts/xmpp/", headers={"Cookie": cookie})
        with urllib.request.urlopen(page, timeout=15) as response:
            return str(response.read().decode())

    page = await asyncio.to_thread(account_page)
    code = html.unescape(page.split('<pre class="link-code">', 1)[1].split("</pre>", 1)[0])
    assert code.startswith("link ")
    async with carol_client(server) as carol:
        carol.tell(server.component, code)
        reply = await carol.expect(lambda s: s.kind == "chat" and s.sender == server.component)
        assert reply.body.startswith("Linked"), reply.body
        carol.join(room, "carol")
        await carol.expect(occupant(room, "carol"))
        carol.say(room, "it is demo, on xmpp")
        await asyncio.to_thread(wait_until, lambda: len(history(base)) >= 1, what="stored")
    assert [(m["sender"], m["origin"], m["text"]) for m in history(base)] == [
        ({"kind": "user", "name": "demo"}, "xmpp", "it is demo, on xmpp")
    ]
    assert f"carol@{server.domain}" in await asyncio.to_thread(account_page)
