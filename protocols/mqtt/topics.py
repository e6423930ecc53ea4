"""The contract's MQTT topics, under the configurable prefix: building and parsing them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bridge.exceptions import InvalidInput
from bridge.names import is_device_id

TopicKind = Literal["post", "telemetry", "status", "bridge"]


class InvalidTopic(InvalidInput):
    code = "invalid_topic"


@dataclass(frozen=True)
class Topics:
    """Every topic the bridge reads or writes, with `prefix` ("" for none) in front."""

    prefix: str = ""
    shared_group: str = ""

    def _full(self, tail: str) -> str:
        return f"{self.prefix}/{tail}" if self.prefix else tail

    def inbound_filters(self) -> list[str]:
        """What the bridge subscribes to: all of `devices/`, so bad topics get an answer too.

        Shared (`$share/<group>/`) when a group is set, so several runmqtt
        processes split the stream instead of each storing a copy.
        """
        base = self.all_devices()
        return [f"$share/{self.shared_group}/{base}" if self.shared_group else base]

    def device_base(self, device: str) -> str:
        """`devices/<device>`: everything a device publishes is under it."""
        return self._full(f"devices/{device}")

    def all_devices(self) -> str:
        return self._full("devices/#")

    def all_rooms(self) -> str:
        return self._full("rooms/#")

    def room_messages(self, room: str) -> str:
        return self._full(f"rooms/{room}/messages")

    def commands(self, device: str) -> str:
        return self._full(f"devices/{device}/commands")

    def errors(self, device: str) -> str:
        return self._full(f"devices/{device}/errors")

    def device_of(self, topic: str) -> str | None:
        """The device a topic names, if it names a valid one (where to send an error)."""
        parts = self._relative(topic)
        if parts is None or len(parts) < 2 or parts[0] != "devices" or not is_device_id(parts[1]):
            return None
        return parts[1]

    def parse(self, topic: str) -> tuple[TopicKind, str, str | None]:
        """(kind, device, room or None). Raises InvalidTopic for anything not in the contract."""
        parts = self._relative(topic)
        if parts is None or len(parts) < 3 or parts[0] != "devices":
            raise InvalidTopic(f"{topic!r} is not a device topic of the bridge.")
        device = parts[1]
        if not is_device_id(device):
            raise InvalidTopic(f"{device!r} in {topic!r} is not a device id.")
        rest = parts[2:]
        if rest[0] == "rooms" and len(rest) == 2:
            return "post", device, rest[1]
        if rest == ["telemetry"]:
            return "telemetry", device, None
        if rest == ["status"]:
            return "status", device, None
        if rest in (["commands"], ["errors"]):
            return "bridge", device, None  # what the bridge itself publishes
        raise InvalidTopic(
            f"{topic!r}: devices publish on devices/<device>/rooms/<room>, "
            "devices/<device>/telemetry or devices/<device>/status."
        )

    def _relative(self, topic: str) -> list[str] | None:
        if self.prefix:
            if not topic.startswith(self.prefix + "/"):
                return None
            topic = topic[len(self.prefix) + 1 :]
        return topic.split("/")


ECHO_MAX = 200  # characters of a topic or detail echoed in a reply or a log line


def shorten(text: str, limit: int = ECHO_MAX) -> str:
    """`text` cut to `limit` characters (saying how long it was): a device may send a topic
    of 60,000 characters, and an error reply echoing it must stay a small packet."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
