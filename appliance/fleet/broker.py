"""The authority's short connection to the broker: connect, publish retained with QoS 1 and wait for each
PUBACK, read what is retained — blocking calls, each with a timeout, for one command line run.

This is not the door's :class:`appliance.mqtt_link.MqttLink` (a long-lived link with an outbox and
reconnects): an authority command connects, does its few publishes, and disconnects; a broker that is
unreachable, refuses the credentials or does not acknowledge in time is a :class:`FleetError` with
the broker's address, and the command fails (nothing is retried behind the operator's back).

Note: with MQTT 3.1.1 a broker acknowledges a publish its ACL refuses and drops it; allow the
authority's user to write ``{prefix}/{site}/records/+`` and ``{prefix}/{site}/manifest``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from ..config import MqttConfig
from ..mqtt_link import tls_context
from .errors import FleetError

logger = logging.getLogger(__name__)

Messages = Dict[str, bytes]


class FleetBroker:
    """One connection to the broker for one authority command (a context manager).

    Args:
        settings: ``[mqtt]`` of the authority file.
        client_id: the MQTT client id.
        timeout: longest wait for the connection and for each acknowledgement, in seconds.
    """

    def __init__(self, settings: MqttConfig, client_id: str, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.address = f"{settings.host}:{settings.port}"
        self._condition = threading.Condition()
        self._connected = False
        self._refused: Optional[str] = None
        self._lost = False
        self._granted: Dict[int, List[bool]] = {}
        self._messages: Messages = {}
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        self._client.suppress_exceptions = True
        self._client.connect_timeout = timeout
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._started = False

    # -- paho callbacks (network thread) ---------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        with self._condition:
            if getattr(reason, "is_failure", False):
                self._refused = str(reason)
            else:
                self._connected = True
            self._condition.notify_all()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        with self._condition:
            self._lost = self._connected
            self._connected = False
            self._condition.notify_all()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, codes: object, props: object
    ) -> None:
        granted = [not getattr(code, "is_failure", False) for code in (codes or [])]  # type: ignore[attr-defined]
        with self._condition:
            self._granted[mid] = granted
            self._condition.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._condition:
            if message.payload:
                self._messages[message.topic] = bytes(message.payload)
            else:  # an empty retained payload clears the topic
                self._messages.pop(message.topic, None)
            self._condition.notify_all()

    # -- blocking calls ---------------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def connect(self) -> FleetBroker:
        """Connect and wait for the broker's CONNACK.

        Raises:
            FleetError: unreachable (the address and the reason), credentials refused, or no answer
                within the timeout.
        """
        settings = self.settings
        if settings.tls.enabled:
            self._client.tls_set_context(tls_context(settings.tls))
            if settings.tls.insecure:
                self._client.tls_insecure_set(True)
        if settings.username is not None:
            secret = settings.secret_password()
            self._client.username_pw_set(
                settings.username, None if secret is None else secret.get_secret_value()
            )
        try:
            self._client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
        except (OSError, ValueError) as err:  # refused, unknown host, TLS handshake, timeout
            raise FleetError(f"cannot reach the MQTT broker {self.address}: {err}") from None
        self._client.loop_start()
        self._started = True
        if not self._wait(lambda: self._connected or self._refused is not None, self.timeout):
            self.close()
            raise FleetError(f"the MQTT broker {self.address} did not answer within {self.timeout:g} s")
        if self._refused is not None:
            self.close()
            raise FleetError(f"the MQTT broker {self.address} refused the connection: {self._refused}")
        logger.debug("connected to the MQTT broker %s", self.address)
        return self

    def close(self) -> None:
        """Disconnect and stop the network thread. Idempotent."""
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> FleetBroker:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """Publish with QoS 1 and wait until the broker acknowledged it (an empty retained payload
        clears the topic).

        Raises:
            FleetError: not connected, or no PUBACK within the timeout.
        """
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as err:
            raise FleetError(f"publishing to {topic} on {self.address} failed: {err}") from None
        if not info.is_published():
            raise FleetError(
                f"the MQTT broker {self.address} did not acknowledge {topic} within {self.timeout:g} s"
            )

    def subscribe(self, filters: Sequence[str]) -> List[bool]:
        """Subscribe (QoS 1) and wait for the SUBACK.

        Returns:
            Per filter, whether the broker granted it (an ACL may refuse one).

        Raises:
            FleetError: not connected, or no SUBACK within the timeout.
        """
        code, mid = self._client.subscribe([(topic, 1) for topic in filters])
        if code != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise FleetError(f"cannot subscribe on {self.address}: {mqtt.error_string(code)}")
        if not self._wait(lambda: mid in self._granted or self._lost, self.timeout):
            raise FleetError(f"the MQTT broker {self.address} did not acknowledge a subscription in time")
        if self._lost:
            raise FleetError(f"the connection to the MQTT broker {self.address} was lost")
        with self._condition:
            return list(self._granted[mid])

    def collect(self, wait_s: float, enough: Optional[Callable[[Messages], bool]] = None) -> Messages:
        """Messages received on the subscriptions (the last per topic), after ``wait_s`` seconds or as
        soon as ``enough(messages)`` holds."""
        with self._condition:
            snapshot = dict(self._messages)
        if enough is None or not enough(snapshot):
            self._wait(lambda: enough is not None and enough(dict(self._messages)), wait_s)
        with self._condition:
            return dict(self._messages)


__all__ = ["FleetBroker", "Messages"]
