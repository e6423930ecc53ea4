from django.apps import AppConfig


class XmppConfig(AppConfig):
    name = "protocols.xmpp"
    label = "xmpp"
    verbose_name = "XMPP edge"
