"""The area's other doors' events over a persistent MQTT session, so that an offline door catches up.

The main link (:mod:`appliance.mqtt_link`) uses a clean session on purpose: a command sent while the
appliance is away should time out at its sender, not run hours later. The other doors' passages are
the opposite: the ones made while this appliance was disconnected or restarting are exactly those it
needs. So they come over a second connection of their own:

* client id ``{mqtt client id}-area``, **clean session off**, each door's ``…/events`` subscribed at
  QoS 1: while this appliance is away, the broker keeps their events for it and delivers them at the
  next connect (within the broker's limits: Mosquitto keeps ``max_queued_messages``, 1000 by default,
  per client, and forgets a session left unused for ``persistent_client_expiration``, never by
  default; across a restart of the broker only with ``persistence true``);
* each message is acknowledged only once the pipeline thread has applied it to the presence store
  (or refused it): one that a crash or a stop interrupted comes again, from the broker, at the next
  connect (MQTT 3.1.1 §4.4). Acknowledgements go out in the order the messages came (§4.6), since
  every message, refused or not, passes through the feed's queue;
* while the queue is full, paho's network thread of this connection waits (up to
  :data:`OFFER_WAIT_S`), and the broker holds back what it has not had acknowledged
  (``max_inflight_messages``): back-pressure rather than loss. A message that still does not fit is
  left unacknowledged, counted as ``dropped``, and comes again at the next connect.

Same broker, same credentials and TLS as the main link; the broker's ACL must let this client id
connect too (with an ACL by user name, as the README shows, it does). No last will, no retained
document: the main link speaks for the appliance.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..config import ApplianceConfig
from ..logs import RateLimitedLog
from ..mqtt_link import configure_client, tls_context
from .area import AreaFeed

logger = logging.getLogger(__name__)

#: How long paho's thread of this connection waits for room in the feed's queue per message.
OFFER_WAIT_S = 2.0


class AreaLink:
    """The persistent session that brings the area's events to ``feed``. Started once, stopped once.

    Args:
        config: the appliance's configuration (``[mqtt]``, the client id).
        feed: where the messages go; its ``…/state`` reads the session from :meth:`state`.
    """

    def __init__(self, config: ApplianceConfig, feed: AreaFeed) -> None:
        self._config = config
        self._feed = feed
        self.client_id = f"{config.mqtt_client_id}-area"
        self._broker = f"{config.mqtt.host}:{config.mqtt.port}"
        self._lock = threading.Lock()
        self._generation = 0  # successful connects; an acknowledgement belongs to one of them
        self._connected = False
        self._resumed: Optional[bool] = None  # whether the broker had kept the session, at the last connect
        self._client: Optional[mqtt.Client] = None
        self._log = RateLimitedLog(logger, 60.0)
        feed.session = self.state

    def start(self) -> None:
        """Connect in the background (never blocks on the broker).

        Raises:
            MqttLinkError: TLS files cannot be loaded.
        """
        settings = self._config.mqtt
        context = tls_context(settings.tls) if settings.tls.enabled else None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,  # acknowledged once applied (see the module's docstring)
        )
        client.suppress_exceptions = True
        configure_client(client, settings, context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
        client.loop_start()

    def stop(self) -> None:
        """Disconnect, keeping the session on the broker (the events of the time away wait there).
        Idempotent; returns within about :data:`OFFER_WAIT_S` (a message waiting for room in the
        feed's queue is given up, unacknowledged)."""
        client, self._client = self._client, None
        if client is None:
            return
        with self._lock:
            self._connected = False
        client.disconnect()
        client.loop_stop()  # joins the network thread; a blocked offer ends within OFFER_WAIT_S

    def state(self) -> Dict[str, Any]:
        """``connected``, ``resumed`` (the broker had kept the session) and ``connects`` (any thread)."""
        with self._lock:
            return {"connected": self._connected, "resumed": self._resumed, "connects": self._generation}

    # -- paho's network thread ---------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self._log.report(
                "refused",
                "anti-passback: the broker %s refused the area's session %s: %s",
                self._broker,
                self.client_id,
                reason_code,
            )
            return
        resumed = bool(getattr(flags, "session_present", False))
        with self._lock:
            self._generation += 1
            self._connected, self._resumed = True, resumed
        # Subscribed again even on a resumed session: the same subscription replaces itself, and a
        # broker that lost the session (restarted without persistence) gets it back.
        for topic in self._feed.topics:
            client.subscribe(topic, qos=1)
        logger.info(
            "anti-passback: following %s over the session %s (%s)",
            ", ".join(sorted(self._feed.topics.values())),
            self.client_id,
            "resumed: what they published meanwhile follows" if resumed else "new",
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        with self._lock:
            self._connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            generation = self._generation
        qos, mid = message.qos, message.mid

        def acknowledge() -> None:  # the pipeline thread, once applied
            with self._lock:
                current = self._connected and generation == self._generation
            if qos > 0 and current:  # on a later connection the mid names another message
                client.ack(mid, qos)

        try:
            self._feed.offer(
                message.topic, bytes(message.payload), bool(message.retain), acknowledge, OFFER_WAIT_S
            )
        except Exception:  # never end paho's thread; the message comes again at the next connect
            logger.exception("anti-passback: an event of the area could not be taken")


__all__ = ["OFFER_WAIT_S", "AreaLink"]
