from __future__ import annotations

import json

import msgpack
import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.models import ApiToken, Message, Room
from bridge.services.members import MemberRef, member_add
from bridge.services.rooms import room_create
from tests.support.hostile import encoded, message_bodies
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def lobby() -> Room:
    return room_create(slug="lobby", title="Lobby")


@pytest.fixture
def token() -> str:
    user = get_user_model().objects.create_user(username="script", password="pw")
    return ApiToken.objects.create(user=user).key


def post(client: Client, room: str, body: object, **headers: str) -> object:
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.post(f"/api/rooms/{room}/messages", raw, content_type="application/json", headers=headers)


def test_rooms_list_hides_private_rooms_from_anonymous(client: Client, lobby: Room) -> None:
    room_create(slug="secret", private=True)
    body = client.get("/api/rooms/").json()
    assert [r["slug"] for r in body["rooms"]] == ["lobby"]
    assert body["rooms"][0]["title"] == "Lobby"


def test_post_with_token_and_client_id_is_idempotent(client: Client, lobby: Room, token: str) -> None:
    first = post(client, "lobby", {"text": "hi", "client_id": "abc"}, Authorization=f"Token {token}")
    again = post(client, "lobby", {"text": "hi", "client_id": "abc"}, Authorization=f"Token {token}")
    assert first.status_code == 201 and again.status_code == 201  # type: ignore[attr-defined]
    assert first.json() == again.json()  # type: ignore[attr-defined]
    assert "Idempotent-Replayed" not in first and again["Idempotent-Replayed"] == "true"  # type: ignore[operator,index]
    assert first.json()["sender"] == {"kind": "user", "name": "script"}  # type: ignore[attr-defined]
    assert first.json()["origin"] == "api"  # type: ignore[attr-defined]
    assert Message.objects.count() == 1


def test_history_pagination(client: Client, lobby: Room, token: str) -> None:
    for i in range(7):
        post(client, "lobby", {"text": str(i)}, Authorization=f"Token {token}")
    seqs = lambda q: [m["seq"] for m in client.get(f"/api/rooms/lobby/messages{q}").json()["messages"]]  # noqa: E731
    assert seqs("") == [1, 2, 3, 4, 5, 6, 7]
    assert seqs("?limit=3") == [5, 6, 7]
    assert seqs("?after=2&limit=2") == [3, 4]
    assert seqs("?before=4&limit=2") == [2, 3]
    assert seqs("?after=7") == []
    assert [m["seq"] for m in client.get("/api/rooms/lobby/messages/?limit=1").json()["messages"]] == [7]
    for bad in ("?limit=0", "?limit=501", "?limit=ten", "?after=x"):
        response = client.get(f"/api/rooms/lobby/messages{bad}")
        assert response.status_code == 400 and response.json()["error"]["code"].startswith("invalid_")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("not json", 400, "invalid_json"),
        ("[1]", 400, "invalid_json"),
        ({"text": ""}, 400, "empty_message"),
        ({"text": 5}, 400, "invalid_text"),
        ({"text": "x" * 5000}, 413, "too_large"),
        ({"text": "x" * 20000}, 413, "too_large"),
        ('{"text": "hi", "data": ' + "[" * 3000 + "]" * 3000 + "}", 400, "invalid_json"),
    ],
)
def test_bad_posts_get_json_errors_and_store_nothing(client: Client, lobby: Room, token: str, body: object, status: int, code: str) -> None:
    response = post(client, "lobby", body, Authorization=f"Token {token}")
    assert response.status_code == status  # type: ignore[attr-defined]
    assert response.json()["error"]["code"] == code  # type: ignore[attr-defined]
    assert Message.objects.count() == 0


def test_auth_is_needed_to_post(client: Client, lobby: Room) -> None:
    response = post(client, "lobby", {"text": "hi"})
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert response.json()["error"]["code"] == "auth_required"  # type: ignore[attr-defined]
    bad = post(client, "lobby", {"text": "hi"}, Authorization="Token nope")
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"  # type: ignore[attr-defined]
    assert Message.objects.count() == 0


def test_unknown_room_is_404_and_not_created(client: Client, token: str) -> None:
    response = post(client, "nowhere", {"text": "hi"}, Authorization=f"Token {token}")
    assert response.status_code == 404  # type: ignore[attr-defined]
    assert response.json()["error"]["code"] == "room_not_found"  # type: ignore[attr-defined]
    assert client.get("/api/rooms/nowhere/messages").status_code == 404
    assert not Room.objects.exists()


def test_session_post_needs_csrf(lobby: Room) -> None:
    get_user_model().objects.create_user(username="alice", password="pw")
    browser = Client(enforce_csrf_checks=True)
    assert browser.login(username="alice", password="pw")
    refused = post(browser, "lobby", {"text": "hi"})
    assert refused.status_code == 403  # type: ignore[attr-defined]
    assert refused.json()["error"]["code"] == "csrf_failed"  # type: ignore[attr-defined]
    browser.get("/rooms/lobby/")
    csrf = browser.cookies["csrftoken"].value
    accepted = post(browser, "lobby", {"text": "hi"}, **{"X-CSRFToken": csrf})
    assert accepted.status_code == 201  # type: ignore[attr-defined]


def test_healthz(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_readyz_probes_the_database_and_the_channel_layer(client: Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["checks"]["database"]["ok"] is True
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):  # nothing listens there
        refused = client.get("/readyz")
        alive = client.get("/healthz")
    assert refused.status_code == 503 and refused.json()["status"] == "unavailable"
    assert refused.json()["checks"]["channel_layer"]["ok"] is False
    assert alive.status_code == 200  # alive: history and posts still work without Redis
    assert client.get("/readyz").status_code == 200  # the in-memory layer again: ready


def test_pages_escape_what_they_show(client: Client) -> None:
    room_create(slug="xss", title="<script>alert(1)</script>")
    page = client.get("/").content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert client.get("/rooms/xss/").status_code == 200
    assert client.get("/rooms/nowhere/").status_code == 404


def test_wrong_methods_get_json_405(client: Client, lobby: Room) -> None:
    for method, path in (("delete", "/api/rooms/lobby/messages"), ("post", "/api/rooms/"), ("post", "/healthz"), ("get", "/api/devices/x/commands")):
        response = getattr(client, method)(path)
        assert response.status_code == 405, (method, path)
        assert response.json()["error"]["code"] == "method_not_allowed"


def test_saving_a_stale_room_never_moves_last_seq_back(lobby: Room, token: str, client: Client) -> None:
    stale = Room.objects.get(slug="lobby")  # as the admin's form loaded it
    post(client, "lobby", {"text": "meanwhile"}, Authorization=f"Token {token}")
    stale.title = "New title"
    stale.save()
    fresh = Room.objects.get(slug="lobby")
    assert fresh.title == "New title" and fresh.last_seq == 1
    assert post(client, "lobby", {"text": "still works"}, Authorization=f"Token {token}").status_code == 201  # type: ignore[attr-defined]


def test_rooms_add_again_keeps_a_private_room_private() -> None:
    from django.core.management import call_command

    call_command("rooms", "add", "secret", "--private")
    call_command("rooms", "add", "secret", "--title", "Secret")
    assert Room.objects.get(slug="secret").private
    call_command("rooms", "add", "secret", "--public")
    assert not Room.objects.get(slug="secret").private


HOSTILE_BODIES = [
    ('{"text": "a\\u0000b"}', 400, "invalid_json"),
    ('{"text": "a\\u0001b"}', 400, "invalid_text"),
    ('{"text": "hi", "client_id": "k\\u0000"}', 400, "invalid_json"),
    ('{"text": "hi", "data": {"x": "\\u0000"}}', 400, "invalid_json"),
    ('{"text": "\\ud800"}', 400, "invalid_json"),
    ('{"text": "hi", "client_id": "\\udfff"}', 400, "invalid_json"),
    ('{"text": "hi", "data": ' + '{"a":' * 970 + "1" + "}" * 970 + "}", 400, "invalid_json"),
    ('{"text": "hi", "data": {"n": 18446744073709551616}}', 400, "invalid_json"),
    ('{"text": "hi", "data": {"n": NaN}}', 400, "invalid_json"),
    (b'{"text": "\xff"}', 400, "invalid_utf8"),
]


@pytest.mark.parametrize(("body", "status", "code"), HOSTILE_BODIES)
def test_hostile_bodies_get_the_contract_error_and_store_nothing(client: Client, lobby: Room, token: str, body: str | bytes, status: int, code: str) -> None:
    response = client.post("/api/rooms/lobby/messages", body, content_type="application/json", headers={"Authorization": f"Token {token}"})
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert Message.objects.count() == 0


def test_the_largest_integer_that_is_kept_is_delivered_as_sent(client: Client, lobby: Room, token: str) -> None:
    body = {"text": "big", "data": {"n": 2**63 - 1, "m": -(2**63)}}
    response = post(client, "lobby", body, Authorization=f"Token {token}")
    assert response.status_code == 201  # type: ignore[attr-defined]
    assert client.get("/api/rooms/lobby/messages").json()["messages"][0]["data"] == body["data"]


def test_a_5_mib_body_is_a_json_413_before_it_is_read(client: Client, lobby: Room, token: str) -> None:
    big = '{"text": "' + "x" * (5 * 1024 * 1024) + '"}'
    response = post(client, "lobby", big, Authorization=f"Token {token}")
    assert response.status_code == 413  # type: ignore[attr-defined]
    assert response.json()["error"]["code"] == "too_large"  # type: ignore[attr-defined]


@pytest.mark.parametrize("query", ["?after=18446744073709551616", "?before=-99999999999999999999", "?limit=1e3", "?after=%00"])
def test_out_of_range_query_numbers_are_400s(client: Client, lobby: Room, query: str) -> None:
    response = client.get(f"/api/rooms/lobby/messages{query}")
    assert response.status_code == 400 and response.json()["error"]["code"].startswith("invalid_")


@pytest.mark.parametrize("path", ["/api/nothing", "/api/rooms/lobby/messages/extra/", "/api/rooms/%00/messages"])
def test_django_error_pages_under_api_are_json(client: Client, lobby: Room, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] in {"not_found", "room_not_found"}


def test_pages_outside_api_keep_django_errors(client: Client) -> None:
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and not response["Content-Type"].startswith("application/json")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(message_bodies.map(lambda b: encoded(b, True)), message_bodies.map(lambda b: encoded(b, False)), st.binary(max_size=64)))
def test_any_body_is_stored_or_refused_with_a_json_error(client: Client, lobby: Room, token: str, body: str | bytes) -> None:
    if isinstance(body, str):
        try:
            body = body.encode("utf-8")
        except UnicodeEncodeError:
            body = body.encode("utf-8", "surrogatepass")  # what a broken client puts on the wire
    before = Message.objects.count()
    response = client.post("/api/rooms/lobby/messages", body, content_type="application/json", headers={"Authorization": f"Token {token}"})
    assert response["Content-Type"] == "application/json"
    if response.status_code == 201:
        assert Message.objects.count() <= before + 1
        stored = Message.objects.get(id=response.json()["id"])
        msgpack.packb(stored.data)
        stored.text.encode("utf-8")
    else:
        assert response.status_code in (400, 413)
        assert set(response.json()["error"]) == {"code", "detail"}
        assert Message.objects.count() == before


def test_private_room_is_for_members_over_http(client: Client, token: str) -> None:
    room = room_create(slug="secret", private=True)
    outsider = {"Authorization": f"Token {token}"}
    assert client.get("/api/rooms/secret/messages", headers=outsider).status_code == 404
    refused = post(client, "secret", {"text": "let me in"}, **outsider)
    assert (refused.status_code, refused.json()["error"]["code"]) == (404, "room_not_found")
    assert "secret" not in [r["slug"] for r in client.get("/api/rooms/", headers=outsider).json()["rooms"]]
    member_add(room=room, member=MemberRef(username="script"))
    assert post(client, "secret", {"text": "in"}, **outsider).status_code == 201
    assert [m["text"] for m in client.get("/api/rooms/secret/messages", headers=outsider).json()["messages"]] == ["in"]
    assert client.get("/api/rooms/secret/messages").status_code == 404  # anonymous


def test_tokens_are_stored_hashed_listed_and_revoked(client: Client) -> None:
    import io

    from django.core.management import call_command

    get_user_model().objects.create_user(username="ops", password="pw")
    room_create(slug="lobby")
    out = io.StringIO()
    call_command("tokens", "add", "ops", "--name", "ci", stdout=out)
    key = out.getvalue().strip()
    stored = ApiToken.objects.get()
    assert key not in {stored.key_hash, stored.prefix} and stored.key_hash != "" and key.startswith(stored.prefix)
    assert post(client, "lobby", {"text": "hi"}, Authorization=f"Token {key}").status_code == 201
    stored.refresh_from_db()
    assert stored.last_used is not None
    listing = io.StringIO()
    call_command("tokens", "list", stdout=listing)
    assert f"{stored.pk}\tops\tci\t{stored.prefix}...\t" in listing.getvalue()
    assert key not in listing.getvalue()
    call_command("tokens", "revoke", stored.prefix, stdout=io.StringIO())
    refused = post(client, "lobby", {"text": "again"}, Authorization=f"Token {key}")
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_token")


def test_room_admins_manage_members_over_the_api(client: Client, token: str) -> None:
    room = room_create(slug="secret", private=True)
    get_user_model().objects.create_user(username="bob", password="pw")
    admin = {"Authorization": f"Token {token}"}
    url = "/api/rooms/secret/members"
    assert client.get(url, headers=admin).status_code == 404  # not even a member
    member_add(room=room, member=MemberRef(username="script"))
    refused = client.get(url, headers=admin)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "not_room_admin")
    member_add(room=room, member=MemberRef(username="script"), role="admin")
    added = client.post(url, json.dumps({"user": "bob", "jid": "bob@example.org"}),
                        content_type="application/json", headers=admin)
    assert added.status_code == 201
    assert {"kind": "user", "name": "bob", "role": "member", "jid": "bob@example.org"} in added.json()["members"]
    bad = client.post(url, json.dumps({"user": "ghost"}), content_type="application/json", headers=admin)
    assert (bad.status_code, bad.json()["error"]["code"]) == (404, "unknown_user")
    assert client.delete(f"{url}/user/bob", headers=admin).status_code == 204
    gone = client.delete(f"{url}/user/bob", headers=admin)
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "not_a_member")


def test_a_sender_over_its_rate_gets_429_with_retry_after_and_others_do_not(client: Client, lobby: Room, token: str) -> None:
    other = ApiToken.objects.create(user=get_user_model().objects.create_user(username="other", password="pw")).key
    with override_settings(API_RATE=0.01, API_BURST=2):
        codes = [post(client, "lobby", {"text": str(i)}, Authorization=f"Token {token}").status_code for i in range(3)]  # type: ignore[attr-defined]
        refused = post(client, "lobby", {"text": "again"}, Authorization=f"Token {token}")
        assert post(client, "lobby", {"text": "me"}, Authorization=f"Token {other}").status_code == 201  # type: ignore[attr-defined]
    assert codes == [201, 201, 429]
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1  # type: ignore[attr-defined,index]
    assert refused.json()["error"]["code"] == "rate_limited"  # type: ignore[attr-defined]
    assert list(Message.objects.values_list("text", flat=True)) == ["0", "1", "me"]


def test_a_crash_under_api_is_a_json_500(lobby: Room, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("bridge.views.api.room_list", broken)
    response = Client(raise_request_exception=False).get("/api/rooms/")
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "internal_error"


def test_the_database_away_is_a_503_with_retry_after_not_a_500(lobby: Room, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import OperationalError

    from bridge.health import HEALTH

    def away(**kwargs: object) -> None:
        raise OperationalError("connection to server was lost")

    monkeypatch.setattr("bridge.views.api.room_list", away)
    client = Client(raise_request_exception=False)
    response = client.get("/api/rooms/")
    assert response.status_code == 503 and response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "unavailable" and int(response["Retry-After"]) >= 1
    assert not HEALTH.ready()  # /readyz says so before its own probe runs
    HEALTH.ok("database")
