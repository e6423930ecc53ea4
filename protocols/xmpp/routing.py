"""The `xmpp` scope's application: one consumer per component connection."""

from protocols.xmpp.consumers import BridgeXmppConsumer

xmpp_application = BridgeXmppConsumer.as_asgi()
