"""The XMPP edge's ASGI contract: the scope and every event, in and out.

One scope per component connection to the XMPP server. The protocol server
only translates: stanzas become `xmpp.*` events on the application's queue,
and the application's `xmpp.*` events become stanzas. JIDs travel as strings.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict


class XmppScope(TypedDict):
    type: Literal["xmpp"]
    # The component's own domain: every address the bridge speaks from is on it.
    component: str
    muc_service: str
    domain: str


# --- server to application ---------------------------------------------------


class XmppConnectEvent(TypedDict):
    """The component is accepted by the server (again, after a reconnect)."""

    type: Literal["xmpp.connect"]


class XmppDisconnectEvent(TypedDict):
    """The stream is gone; nothing sent from now until the next connect arrives."""

    type: Literal["xmpp.disconnect"]
    reason: str


class XmppMessageEvent(TypedDict):
    type: Literal["xmpp.message"]
    id: str
    sender: str  # the stanza's 'from'
    to: str
    message_type: str  # groupchat, chat, normal, headline, error
    body: str
    # XEP-0359: the stanza-id the room assigned (with the room as 'by'), and the sender's origin-id.
    stanza_id: str
    origin_id: str
    # XEP-0203: present on history a room replays on join; true as well for a message of the
    # room's archive (XEP-0313) that answers our query, which arrives as this event: the
    # archived message itself, with its sender (room@service/nick) and origin-id.
    delayed: bool
    # Empty unless message_type is "error".
    error_condition: str
    subject: str | None  # None: no <subject/>; "" an empty one (ends the join history)


class XmppMessagesEvent(TypedDict):
    """Several message stanzas that arrived back to back, in order (at most `MAX_BATCH`):
    what the server had queued behind one, so that a burst is handled as one batch."""

    type: Literal["xmpp.messages"]
    messages: list[XmppMessageEvent]


class XmppPresenceEvent(TypedDict):
    type: Literal["xmpp.presence"]
    sender: str
    to: str
    presence_type: str  # "available", "unavailable", "error", ...
    # XEP-0045 muc#user: status codes (110 = this is you), and what the room shows.
    status_codes: list[int]
    real_jid: str
    nick: str  # a new nick on a nick change (303)
    affiliation: str
    role: str
    error_condition: str


class FormField(TypedDict):
    """One field of a XEP-0004 data form, as a room's owner form offers it."""

    var: str
    type: str  # boolean, text-single, list-single, hidden, ...
    values: list[str]
    options: list[str]


class AffiliationItem(TypedDict):
    jid: str  # a bare JID
    affiliation: str  # owner, admin, member, outcast, none


class RoleItem(TypedDict):
    """A role change by nick (XEP-0045 §8.4, §8.5): a moderator gives or takes voice."""

    nick: str
    role: str  # visitor, participant
    reason: str


class XmppIqEvent(TypedDict):
    """The answer to an IQ the application sent (requests to the component are answered by
    the protocol server itself)."""

    type: Literal["xmpp.iq"]
    id: str
    sender: str
    to: str
    iq_type: str  # result, error
    error_condition: str
    # A muc#owner result: the room's configuration form (empty otherwise).
    form: list[FormField]
    # A muc#admin result: the affiliation list asked for (empty otherwise).
    items: list[AffiliationItem]


# --- application to server ---------------------------------------------------


class XmppSendMessageEvent(TypedDict):
    type: Literal["xmpp.message"]
    sender: str
    to: str
    message_type: str
    body: str
    id: NotRequired[str]
    # Sent as the XEP-0359 origin-id as well, so a room's echo and archive carry it.
    origin_id: NotRequired[str]


class XmppSendPresenceEvent(TypedDict):
    type: Literal["xmpp.presence"]
    sender: str
    to: str
    presence_type: NotRequired[str]  # "unavailable"; absent means available
    status: NotRequired[str]
    # With join, the presence carries XEP-0045's <x/>: how many history stanzas to replay.
    join: NotRequired[bool]
    history: NotRequired[int]


class XmppSendErrorEvent(TypedDict):
    """An error reply to a stanza the application refuses."""

    type: Literal["xmpp.error"]
    sender: str
    to: str
    stanza: Literal["message", "presence"]
    id: str
    condition: str  # RFC 6120 defined condition: bad-request, not-acceptable, item-not-found, ...
    error_type: str  # modify, cancel, wait, auth
    text: str


class XmppSendIqEvent(TypedDict):
    """A XEP-0045 owner or admin request to a room, or a XEP-0313 query of its archive; its
    answer comes back as `xmpp.iq`.

    query "owner", iq_type "get": ask for the configuration form; "set" with `form`: submit
    it (an empty `form` accepts the server's defaults, an instant room). query "admin",
    iq_type "get" with one item: list the JIDs of that affiliation; "set": change `items`,
    or occupants' roles (`roles`).
    query "archive", iq_type "set": the room's last `max` archived messages, which come as
    `xmpp.message` events (`delayed`) before the answer.
    """

    type: Literal["xmpp.iq"]
    sender: str
    to: str
    id: str
    iq_type: Literal["get", "set"]
    query: Literal["owner", "admin", "archive"]
    max: NotRequired[int]
    form: NotRequired[dict[str, list[str]]]
    items: NotRequired[list[AffiliationItem]]
    roles: NotRequired[list[RoleItem]]


XmppIncoming = (
    XmppConnectEvent | XmppDisconnectEvent | XmppMessageEvent | XmppMessagesEvent | XmppPresenceEvent
    | XmppIqEvent
)
XmppOutgoing = XmppSendMessageEvent | XmppSendPresenceEvent | XmppSendErrorEvent | XmppSendIqEvent
