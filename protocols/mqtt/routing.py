"""The `mqtt` scope's application: one consumer per broker connection."""

from protocols.mqtt.consumers import BridgeConsumer

mqtt_application = BridgeConsumer.as_asgi()
