from django.apps import AppConfig


class MqttConfig(AppConfig):
    """The MQTT edge: `runmqtt`, `simulate_devices` and the embedded broker."""

    name = "protocols.mqtt"
    label = "mqtt"
    verbose_name = "MQTT edge"
