"""`mqtts://`: the MQTT edge talks TLS to a real mosquitto, checks its certificate, and says
clearly when it cannot trust it (and keeps trying, without dying)."""

from __future__ import annotations

import asyncio
import datetime
import getpass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.health import HEALTH
from protocols.mqtt.config import MqttConfig
from protocols.mqtt.server import HEALTH_CHECK, MqttServer
from tests.support.mqtt_device import TestDevice
from tests.support.processes import free_port, require_binary, start, wait_for_port

pytestmark = pytest.mark.slow


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(directory: Path) -> None:
    """A test CA (ca.pem) and a certificate for `localhost` it signed (server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("bridge test CA")).issuer_name(_name("bridge test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ))


@pytest.fixture
def tls_broker(tmp_path: Path) -> Any:
    """mosquitto with a TLS listener (the bridge) and a plain one (the test's device)."""
    make_certificates(tmp_path)
    tls_port, plain_port = free_port(), free_port()
    (tmp_path / "mosquitto.conf").write_text(
        f"per_listener_settings false\nallow_anonymous true\nuser {getpass.getuser()}\n"
        f"listener {plain_port} 127.0.0.1\n"
        f"listener {tls_port} 127.0.0.1\ncertfile {tmp_path}/server.pem\nkeyfile {tmp_path}/server.key\n"
    )
    proc = start(f"mosquitto-tls-{tls_port}",
                 [require_binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(tmp_path / "mosquitto.conf")],
                 log_dir=tmp_path)
    wait_for_port(tls_port, proc=proc)
    wait_for_port(plain_port, proc=proc)
    yield tls_port, plain_port, tmp_path / "ca.pem"
    proc.stop()


async def _relay_one(server: MqttServer, plain_port: int, got: asyncio.Queue[dict[str, Any]]) -> None:
    running = asyncio.create_task(server.run())
    device = None
    try:
        await asyncio.wait_for(server.connected.wait(), 10)
        await asyncio.sleep(0.3)  # the SUBACK
        device = await asyncio.to_thread(TestDevice, plain_port, "sensor-1", "")
        device.client.publish("devices/sensor-1/telemetry", b'{"t": 21}', qos=1)
        event = await asyncio.wait_for(got.get(), 10)
        assert event["topic"] == "devices/sensor-1/telemetry"
        assert event["payload"] == b'{"t": 21}'
    finally:
        if device is not None:
            device.close()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def _app(got: asyncio.Queue[dict[str, Any]]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            event = await receive()
            if event["type"] == "mqtt.connect":
                await send({"type": "mqtt.subscribe", "topics": ["devices/#"], "qos": 1})
            elif event["type"] == "mqtt.message":
                await send({"type": "mqtt.ack", "ack_id": event["ack_id"]})
                got.put_nowait(event)

    return app


async def test_the_edge_connects_over_tls_to_a_broker_it_trusts(
    tls_broker: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    tls_port, plain_port, ca = tls_broker
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the system trust store, as an operator extends it
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    config = MqttConfig.from_url(f"mqtts://localhost:{tls_port}", client_id="bridge-tls")
    assert config.tls
    await _relay_one(MqttServer(_app(got), config), plain_port, got)


async def test_an_untrusted_broker_certificate_is_refused_said_and_retried(
    tls_broker: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    tls_port, _plain_port, _ca = tls_broker
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    server = MqttServer(_app(got), MqttConfig.from_url(f"mqtts://localhost:{tls_port}", client_id="bridge-tls"))
    running = asyncio.create_task(server.run())
    try:
        await asyncio.sleep(2.5)  # the first attempt and at least one retry
        assert not running.done()  # not dead: it keeps trying, with back-off
        assert not server.connected.is_set()
        assert "certificate verify failed" in HEALTH.snapshot()[HEALTH_CHECK].detail
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert "certificate verify failed" in caplog.text
