"""Stanzas to events and events to stanzas: the only place that reads or builds XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from slixmpp import Iq, Message, Presence
from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.plugins.xep_0045 import stanza as muc_stanza
from slixmpp.plugins.xep_0203 import stanza as delay_stanza
from slixmpp.plugins.xep_0359 import stanza as sid_stanza
from slixmpp.xmlstream import StanzaBase, register_stanza_plugin

from protocols.xmpp.events import (
    AffiliationItem,
    FormField,
    XmppIqEvent,
    XmppMessageEvent,
    XmppPresenceEvent,
    XmppSendErrorEvent,
    XmppSendIqEvent,
    XmppSendMessageEvent,
    XmppSendPresenceEvent,
)

NS_SID = "urn:xmpp:sid:0"
NS_DELAY = "urn:xmpp:delay"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_DATA = "jabber:x:data"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"


def _error_condition(stanza: StanzaBase) -> str:
    """The defined condition of an error stanza, read from the XML itself: slixmpp's
    `stanza["error"]` looks in the client namespace and, on a component's stanzas,
    creates a fresh error saying feature-not-implemented instead of reading this one."""
    for child in stanza.xml:
        if child.tag.rpartition("}")[2] == "error":
            for condition in child:
                namespace, _, name = condition.tag[1:].partition("}")
                if namespace == NS_STANZAS and name != "text":
                    return name
    return "undefined-condition"


def register_stanza_plugins() -> None:
    """Declare the XEP-0045, XEP-0203 and XEP-0359 elements without their client-side handlers."""
    muc_stanza.register_plugins()
    sid_stanza.register_plugins()
    register_stanza_plugin(Message, delay_stanza.Delay)
    register_stanza_plugin(Presence, delay_stanza.Delay)


def _room_stanza_id(msg: Message) -> str:
    """The stanza-id the room itself assigned: others ('by' someone else) are not trusted."""
    by = msg["from"].bare
    for element in msg.xml.findall(f"{{{NS_SID}}}stanza-id"):
        if element.get("by") == by:
            return element.get("id", "")
    return ""


def _archived(msg: Message) -> Message | None:
    """The message inside a room's answer to an archive query (XEP-0313), if `msg` is one.
    Only the room itself (a bare JID) answers for its own archive, and only about itself:
    anything else wrapped the same way is read as the plain message it is."""
    sender = msg["from"]
    result = msg.xml.find(f"{{{NS_MAM}}}result")
    if result is None or sender.resource:
        return None
    for inner in result.findall(f"{{{NS_FORWARD}}}forwarded/*"):
        if inner.tag.rpartition("}")[2] == "message":
            archived = Message(xml=inner)
            if archived["from"].bare == sender.bare and archived["from"].resource:
                archived["to"] = msg["to"]
                return archived
    return None


def message_event(msg: Message) -> XmppMessageEvent:
    archived = _archived(msg)
    if archived is not None:
        return {**message_event(archived), "delayed": True}
    message_type = msg.xml.get("type") or "normal"
    subject_element = msg.xml.find(f"{{{msg.namespace}}}subject")
    origin = msg.xml.find(f"{{{NS_SID}}}origin-id")
    return {
        "type": "xmpp.message",
        "id": msg["id"],
        "sender": str(msg["from"]),
        "to": str(msg["to"]),
        "message_type": message_type,
        "body": msg["body"],
        "stanza_id": _room_stanza_id(msg),
        "origin_id": origin.get("id", "") if origin is not None else "",
        "delayed": msg.xml.find(f"{{{NS_DELAY}}}delay") is not None,
        "error_condition": _error_condition(msg) if message_type == "error" else "",
        "subject": None if subject_element is None else (subject_element.text or ""),
    }


def presence_event(pres: Presence) -> XmppPresenceEvent:
    presence_type = pres.xml.get("type") or "available"
    event: XmppPresenceEvent = {
        "type": "xmpp.presence",
        "sender": str(pres["from"]),
        "to": str(pres["to"]),
        "presence_type": presence_type,
        "status_codes": [],
        "real_jid": "",
        "nick": "",
        "affiliation": "",
        "role": "",
        "error_condition": _error_condition(pres) if presence_type == "error" else "",
    }
    # Reading pres["muc"] would create the element: look first.
    if pres.xml.find(f"{{{NS_MUC_USER}}}x") is not None:
        muc = pres["muc"]
        event["status_codes"] = sorted(muc["status_codes"])
        event["real_jid"] = str(muc["jid"]) if muc["jid"] else ""
        event["nick"] = muc["item"]["nick"] if muc["item"]["nick"] else ""
        event["affiliation"] = muc["affiliation"] or ""
        event["role"] = muc["role"] or ""
    return event


def build_message(xmpp: ComponentXMPP, event: XmppSendMessageEvent) -> Message:
    msg = xmpp.make_message(mto=event["to"], mfrom=event["sender"], mbody=event["body"])
    msg["type"] = event["message_type"]
    if "id" in event:
        msg["id"] = event["id"]
    if "origin_id" in event:
        msg["origin_id"]["id"] = event["origin_id"]
    return msg


def build_presence(xmpp: ComponentXMPP, event: XmppSendPresenceEvent) -> Presence:
    pres = xmpp.make_presence(pto=event["to"], pfrom=event["sender"], pstatus=event.get("status"))
    if event.get("presence_type"):
        pres["type"] = event["presence_type"]
    if event.get("join"):
        pres.enable("muc_join")
        pres["muc_join"]["history"]["maxstanzas"] = str(event.get("history", 0))
    return pres


def build_error(xmpp: ComponentXMPP, event: XmppSendErrorEvent) -> Message | Presence:
    stanza: Message | Presence
    if event["stanza"] == "presence":
        stanza = xmpp.make_presence(pto=event["to"], pfrom=event["sender"], ptype="error")
    else:
        stanza = xmpp.make_message(mto=event["to"], mfrom=event["sender"], mtype="error")
    stanza["id"] = event["id"]
    stanza["error"]["type"] = event["error_type"]
    stanza["error"]["condition"] = event["condition"]
    stanza["error"]["text"] = event["text"]
    return stanza


def iq_event(iq: Iq) -> XmppIqEvent:
    iq_type = iq.xml.get("type") or ""
    form: list[FormField] = []
    x = iq.xml.find(f"{{{NS_MUC_OWNER}}}query/{{{NS_DATA}}}x")
    if x is not None:
        for element in x.findall(f"{{{NS_DATA}}}field"):
            form.append({
                "var": element.get("var", ""),
                "type": element.get("type", "text-single"),
                "values": [v.text or "" for v in element.findall(f"{{{NS_DATA}}}value")],
                "options": [
                    v.text or ""
                    for v in element.findall(f"{{{NS_DATA}}}option/{{{NS_DATA}}}value")
                ],
            })
    items: list[AffiliationItem] = [
        {"jid": item.get("jid", ""), "affiliation": item.get("affiliation", "")}
        for item in iq.xml.findall(f"{{{NS_MUC_ADMIN}}}query/{{{NS_MUC_ADMIN}}}item")
    ]
    return {
        "type": "xmpp.iq",
        "id": iq["id"],
        "sender": str(iq["from"]),
        "to": str(iq["to"]),
        "iq_type": iq_type,
        "error_condition": _error_condition(iq) if iq_type == "error" else "",
        "form": form,
        "items": items,
    }


def build_iq(xmpp: ComponentXMPP, event: XmppSendIqEvent) -> Iq:
    iq = xmpp.make_iq(id=event["id"], ifrom=event["sender"], ito=event["to"],
                      itype=event["iq_type"])
    if event["query"] == "archive":
        # The last `max` messages: an empty <before/> pages from the end (XEP-0059).
        query = ET.SubElement(iq.xml, f"{{{NS_MAM}}}query", {"queryid": event["id"]})
        page = ET.SubElement(query, f"{{{NS_RSM}}}set")
        ET.SubElement(page, f"{{{NS_RSM}}}max").text = str(event.get("max", 50))
        ET.SubElement(page, f"{{{NS_RSM}}}before")
        return iq
    if event["query"] == "owner":
        query = iq["mucowner_query"]
        if "form" in event:
            form = query["form"]
            form["type"] = "submit"
            for var, values in event["form"].items():
                field = form.add_field(var=var)
                field["value"] = values if len(values) != 1 else values[0]
    else:
        query = iq["mucadmin_query"]
        for wanted in event.get("items", []):
            item = muc_stanza.MUCAdminItem()
            if wanted["jid"]:
                item["jid"] = wanted["jid"]
            item["affiliation"] = wanted["affiliation"]
            query.append(item)
        for change in event.get("roles", []):
            item = muc_stanza.MUCAdminItem()
            item["nick"] = change["nick"]
            item["role"] = change["role"]
            if change["reason"]:
                ET.SubElement(item.xml, f"{{{NS_MUC_ADMIN}}}reason").text = change["reason"]
            query.append(item)
    return iq
