"""The broker side of the appliance: availability, state, access events and commands over MQTT.

Topics (``{root}`` is ``config.topic_root`` = ``{mqtt.prefix}/{device.id}``):

==============================  ========  ====  ===============================================
topic                           retained  QoS   content
==============================  ========  ====  ===============================================
``{root}/availability``         yes       1     ``online`` on connect; ``offline`` at stop and
                                                as the last will (set before connecting)
``{root}/state``                yes       0     JSON from :meth:`MqttLink.publish_state`
``{root}/model``                yes       0     JSON from :meth:`MqttLink.publish_model`
``{root}/events``               no        1     access events, from the outbox
``{root}/door``                 no        1     door events (relay inputs, OSDP panel), from the
                                                outbox (:mod:`appliance.peripherals`)
``{root}/cmd/{name}``           no        1     commands in (subscribed when enabled)
``{root}/cmd/{name}/result``    no        1     command results out
``{ha}/sensor/{node}/…/config`` yes       1     Home Assistant discovery (opt-in)
``{ha}/button/{node}/…/config`` yes       1     its "Open door" button (with ``[door]``)
``{ha}/binary_sensor/{node}/…`` yes       1     its "Duress" alarm (when a door asks for PINs)
==============================  ========  ====  ===============================================

Protocol: **MQTT 3.1.1**. Everything this contract needs (QoS 1, retained messages, a retained last
will) exists in 3.1.1, and 3.1.1 is what every broker a building may run speaks (older Mosquitto,
VerneMQ, EMQX, cloud IoT hubs, PLC gateways). MQTT 5's extras (reason strings, request/response
properties) are not needed: commands carry their ``request_id`` in the payload. Clean session:
the broker keeps nothing for us while we are away. Delivery of events rests on the on-disk outbox,
not on a broker session, and a command sent while the appliance is offline should time out at the
sender rather than run hours later. (The area's other doors' events, which a door needs after being
away, come over a persistent session of their own: :mod:`appliance.access.area_link`.)

Events (at least once)
----------------------
The daemon puts each access event into the :class:`~appliance.outbox.Outbox` (committed to disk)
and calls :meth:`MqttLink.notify`. A publisher thread of this module takes the pending entries
oldest first and publishes them with QoS 1, at most ``window`` (10) in flight. An entry is deleted
from the outbox only when its PUBACK arrives (``on_publish`` with its message id). After a lost
connection, paho re-sends the unacknowledged messages, oldest first, as soon as it is connected
again; the publisher sends nothing newer until those are acknowledged, so order is kept. After a
restart of the process, the outbox still holds whatever was not acknowledged and it is sent again.
An event can therefore arrive **twice** (its PUBACK was lost, or the process died before deleting
it): consumers must de-duplicate by ``event_id``. Should a broker keep events unacknowledged for a
minute on a live connection, they are sent again from the oldest pending one (a safety net; it does
not happen with a working broker).

Why a thread of its own rather than paho's loop: deleting an acknowledged entry is an SQLite commit
with ``synchronous=FULL`` (an fsync: milliseconds, tens of them on an SD card) that must not stall
paho's network loop (keep-alives, PUBACKs, commands); and paho calls ``on_publish`` while holding
its own message lock, so the callback only records the message id and wakes the publisher.

State and model documents are published with QoS 0 and retained: the latest document always wins.
QoS 1 would make paho queue every state update in memory during an outage and replay stale ones
after the fresh document of the reconnect. The latest documents are republished on every connect.

Commands
--------
``{root}/cmd/{name}`` messages are handed to ``on_command(name, payload)`` on the ``mqtt-publisher``
thread, in order of arrival: the handler must be quick (validate, queue the
work, return) and answer each command exactly once, now or later, with :meth:`MqttLink.publish_result`.

Every command gets its answer: a command is taken only with one of :data:`ANSWER_SLOTS` answer slots
free, and its slot is held until the broker acknowledges the answer (paho's outgoing queue has room
for all slots, so an answer is never refused there). A command is acknowledged to the broker (QoS 1
acknowledgements are manual) once taken; with no slot free, commands wait in order of arrival, **not
acknowledged**, and are taken as answers are acknowledged; a broker that bounds what a client has unacknowledged (Mosquitto's
``max_inflight_messages``) then keeps the rest queued (Mosquitto: ``max_queued_messages``, 1000 by
default, beyond which the broker drops them). Beyond :data:`MAX_DEFERRED_BYTES` held back, a
command is dropped unanswered, without running, and an ERROR is logged. Results are JSON documents; errors produced here look like
``{"request_id": <id or null>, "ok": false, "error": {"code": "...", "message": "..."}}``, and the
daemon's own results should follow the same shape (``"ok": true, "result": …``). A payload above
``commands.max_payload_kb`` is refused without being parsed (``payload_too_large``; its
``request_id`` is the first ``"request_id"`` member in its first :data:`REQUEST_ID_SCAN_BYTES`
bytes, if any); a command the broker flags retained is refused (``retained``: it would run again at
every reconnect); an exception in the handler is logged and answered (``handler_failed``), never
propagated into paho. MQTT 3.1.1 clears the retain flag of a message sent to a live subscriber, so a
command published with ``retain=True`` while the link is connected runs once, and is refused at
every later (re)subscription; a stamped command (``ts``) older than ``commands.max_age_s`` is
refused by the command service (``stale``).

Broker ACL (what the appliance's user needs)::

    topic readwrite {root}/availability          # read: the echo check below
    topic write {root}/state
    topic write {root}/model
    topic write {root}/events
    topic write {root}/door
    topic read  {root}/cmd/+
    topic write {root}/cmd/+/result
    topic write {ha}/sensor/{node}/+/config      # only with mqtt.homeassistant.discovery
    topic write {ha}/button/{node}/+/config      # and with door.enabled
    topic write {ha}/binary_sensor/{node}/+/config   # and with a PIN asked (access.second_factor)

MQTT 3.1.1 gives a client no way to learn that the broker's ACL drops what it publishes (the
broker acknowledges and discards), and Mosquitto grants a denied subscription without saying so. So
the link subscribes to its own ``{root}/availability`` and expects its retained ``online`` back: if
it does not come within :data:`ECHO_TIMEOUT_S` of a connection, the link reports (ERROR, and in
``last_error``) that the broker does not pass its messages — a user outside the ACL, or an ACL
missing these lines — instead of looking connected while nothing gets through.

Works with paho-mqtt 2.0 to 2.2 (2.2 needs Python 3.9; Python 3.8 gets 2.1).

Threads: :meth:`MqttLink.start` and :meth:`MqttLink.stop` run on the caller's thread (the daemon's
main thread); paho's network thread (``paho-mqtt-client-…``) runs the ``on_*`` callbacks; the
``mqtt-publisher`` thread runs ``on_command``, moves outbox entries to paho and deletes acknowledged
ones. ``notify``, ``drain``, ``publish_*`` and ``status`` may be called from any thread.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Set, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from . import __version__
from .access.second_factor import ACCEPTS
from .config import ApplianceConfig, MqttConfig, MqttTlsConfig
from .errors import ApplianceError
from .outbox import Outbox, OutboxError

logger = logging.getLogger(__name__)
_paho_logger = logging.getLogger(__name__ + ".paho")

#: Events in flight (published, PUBACK not yet received) at most.
DEFAULT_WINDOW = 10
ONLINE = "online"
OFFLINE = "offline"
_MODEL_NAME = "Face access appliance"
_ORIGIN_NAME = "face-appliance"

#: An event connected this long without its PUBACK is sent again (a broker that lost it).
_UNACKED_RESEND_S = 60.0
#: After a connection, our own ``online`` must come back within this long (the ACL check).
ECHO_TIMEOUT_S = 10.0
#: Command answers outstanding at most: owed (the command was taken, its answer not yet published)
#: plus published and not yet acknowledged by the broker. A command is taken only with a slot free.
ANSWER_SLOTS = 1000
#: Answers (and other messages besides events) sent unacknowledged at most; more wait in paho's queue.
_ANSWERS_IN_FLIGHT = 100
#: Other QoS 1 messages paho may hold besides events and answers (availability, discovery).
_OTHER_QUEUED = 20
#: Payload bytes of the commands held back (not taken, not acknowledged) at most. A broker may bound
#: what it sends unacknowledged (Mosquitto's ``max_inflight_messages``), but not every release does;
#: beyond this a command is dropped unanswered, without running, and logged.
MAX_DEFERRED_BYTES = 16 * 2**20

CommandHandler = Callable[[str, bytes], None]
#: ``handler(topic, payload, retained)`` of an extra subscription (:meth:`MqttLink.subscribe`).
MessageHandler = Callable[[str, bytes, bool], None]


def tls_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """The client's TLS context of ``[mqtt.tls]``: TLS 1.2 at least, the CA and the client certificate
    when given (the daemon's link and the fleet authority's connection).

    Raises:
        MqttLinkError: a TLS file cannot be loaded.
    """
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if tls.ca_file is None else str(tls.ca_file)
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        raise MqttLinkError(
            f"cannot load the MQTT TLS files (mqtt.tls: ca_file={tls.ca_file}, cert_file={tls.cert_file}, "
            f"key_file={tls.key_file}): {err}"
        ) from err
    return context


def configure_client(client: mqtt.Client, settings: MqttConfig, context: Optional[ssl.SSLContext]) -> None:
    """What every client of this appliance shares: TLS (``context`` from :func:`tls_context`), the
    user name and password, and the reconnect delays of ``[mqtt]``."""
    if context is not None:
        client.tls_set_context(context)
        if settings.tls.insecure:
            client.tls_insecure_set(True)
    if settings.username is not None:
        secret = settings.secret_password()
        client.username_pw_set(settings.username, None if secret is None else secret.get_secret_value())
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]


def _deliver_to(handler: MessageHandler) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
    """A paho message callback that acknowledges (acknowledgements are manual, for commands) and hands
    the message to ``handler``; the handler only queues it, so acknowledging first loses nothing the
    broker would not send again (retained records come back at every connect)."""

    def deliver(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.qos > 0:
            client.ack(message.mid, message.qos)
        handler(message.topic, bytes(message.payload), bool(message.retain))

    return deliver


class MqttLinkError(ApplianceError):
    """The MQTT link cannot start.

    Example scenarios: ``mqtt.tls.ca_file`` does not exist or is not PEM; the client certificate
    and key do not match.
    """


class _Deferred(NamedTuple):
    """A command not taken yet: no answer slot was free when it arrived."""

    message: mqtt.MQTTMessage
    #: The connection it arrived on (it is acknowledged only on that one).
    generation: int


class _InFlight(NamedTuple):
    seq: int
    #: The connection (count of successful connects) it was published on.
    generation: int
    #: When it was handed to paho (monotonic seconds).
    sent_at: float


def encode_document(doc: Dict[str, Any]) -> bytes:
    """A document as it goes on the wire: compact JSON, UTF-8, no NaN or infinity.

    Raises:
        ValueError: the document holds NaN or infinity, or a value JSON cannot express.
    """
    try:
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"document cannot be sent as JSON: {err}") from err
    return text.encode("utf-8")


def home_assistant_discovery(config: ApplianceConfig) -> List[Tuple[str, Dict[str, Any]]]:
    """Home Assistant MQTT discovery messages: ``(topic, config document)`` pairs.

    One ``sensor`` component per topic ``{prefix}/sensor/{node}/{object}/config`` (the
    single-component form, understood by old and new Home Assistant releases): the last access
    decision and the last identity (from the events topic) and the frame rate (from the state
    document's ``fps``); with the door's own I/O (``door.enabled``), a ``button`` "Open door" that
    sends the ``door_open`` command (request id ``home-assistant``); where a door asks for PINs
    (``access.second_factor.require``, ``access.without_face.require``), a ``binary_sensor`` "Duress" that is on while the last access
    event was opened by a duress PIN (:mod:`appliance.access.second_factor`), for an automation to
    raise the silent alarm. All share the availability topic and a device block, so they appear as
    one device named after ``device.name`` (or ``device.id``).
    """
    root = config.topic_root
    events = f"{root}/events"
    node = re.sub(r"[^A-Za-z0-9_-]", "_", config.device.id)
    shared: Dict[str, Any] = {
        "availability_topic": f"{root}/availability",
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": {
            "identifiers": [config.device.id],
            "name": config.device.name or config.device.id,
            "model": _MODEL_NAME,
            "sw_version": __version__,
        },
        "origin": {"name": _ORIGIN_NAME, "sw_version": __version__},
    }
    sensors: List[Tuple[str, Dict[str, Any]]] = [
        (
            "last_decision",
            {
                "name": "Last access decision",
                "icon": "mdi:door",
                "state_topic": events,
                "value_template": "{{ value_json.decision }}",
                "json_attributes_topic": events,
                "json_attributes_template": (
                    "{{ {'event_id': value_json.event_id, 'ts': value_json.ts, "
                    "'camera_id': value_json.camera_id, 'score': value_json.score, "
                    "'identity_id': (value_json.identity.id if value_json.identity else none)} | tojson }}"
                ),
            },
        ),
        (
            "last_identity",
            {
                "name": "Last identity",
                "icon": "mdi:account",
                "state_topic": events,
                "value_template": (
                    "{{ (value_json.identity.name or value_json.identity.id) "
                    "if value_json.identity else 'none' }}"
                ),
            },
        ),
        (
            "fps",
            {
                "name": "Frame rate",
                "icon": "mdi:speedometer",
                "entity_category": "diagnostic",
                "state_topic": f"{root}/state",
                "value_template": "{{ value_json.fps }}",
                "unit_of_measurement": "fps",
                "state_class": "measurement",
            },
        ),
    ]
    components = [("sensor", object_id, fields) for object_id, fields in sensors]
    doors = config.configured_doors
    for door in doors:  # one button per door; with several, each names its door
        press: Dict[str, Any] = {"request_id": "home-assistant"}
        if len(doors) > 1:
            press["door"] = door.id
        door_open = {
            "name": "Open door" if len(doors) == 1 else f"Open {door.id}",
            "icon": "mdi:door-open",
            "command_topic": f"{root}/cmd/door_open",
            "payload_press": json.dumps(press),
        }
        object_id = "door_open" if len(doors) == 1 else "door_open_" + re.sub(r"[^A-Za-z0-9_-]", "_", door.id)
        components.append(("button", object_id, door_open))
    asks_pin = "pin" in ACCEPTS.get(config.access.second_factor.require, ())
    if asks_pin or config.access.without_face.require == "card_and_pin":
        duress = {
            "name": "Duress",
            "device_class": "safety",
            "state_topic": events,
            "value_template": "{{ 'ON' if value_json.duress is defined and value_json.duress else 'OFF' }}",
            "json_attributes_topic": events,
            "json_attributes_template": (
                "{{ {'event_id': value_json.event_id, 'ts': value_json.ts, 'camera_id': value_json.camera_id, "
                "'identity_id': (value_json.identity.id if value_json.identity else none)} | tojson }}"
            ),
        }
        components.append(("binary_sensor", "duress", duress))
    prefix = config.mqtt.homeassistant.prefix
    messages = []
    for component, object_id, fields in components:
        document = dict(shared)
        document["unique_id"] = f"{node}_{object_id}"
        document.update(fields)
        messages.append((f"{prefix}/{component}/{node}/{object_id}/config", document))
    return messages


class MqttLink:
    """Publishes availability, state, model and outbox events; receives commands.

    Args:
        config: the appliance configuration (``mqtt``, ``commands``, ``device``).
        outbox: where access events wait; the link deletes what the broker acknowledged. The
            daemon owns it (opens and closes it).
        on_command: ``(name, payload)`` for each message on ``{root}/cmd/{name}``; called on the
            publisher thread, so it must return quickly (hand work off to another thread), and must
            answer each command once with :meth:`publish_result`.
        window: events in flight at most.

    A link is started once and stopped once; see the module docstring for threads and topics.
    """

    def __init__(
        self,
        config: ApplianceConfig,
        outbox: Outbox,
        on_command: CommandHandler,
        *,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self._config = config
        self._outbox = outbox
        self._on_command = on_command
        self._window = window
        self._root = config.topic_root
        self._availability_topic = self.topic("availability")
        self._state_topic = self.topic("state")
        self._model_topic = self.topic("model")
        self._command_filter = self.topic("cmd/+")
        self._broker = f"{config.mqtt.host}:{config.mqtt.port}"

        self._lock = threading.Lock()  # status fields below; never held while calling into paho
        self._doc_lock = threading.Lock()  # held across remembering and publishing a document
        self._progress = threading.Condition()  # notified when acknowledged events were deleted
        self._wake = threading.Event()
        self._stop_event = threading.Event()
        self._connected_event = threading.Event()
        self._acks: Deque[int] = deque()  # message ids from on_publish, consumed by the publisher
        self._inflight: Dict[int, _InFlight] = {}  # publisher thread only (and stop() after it)
        # Answer slots. Held while calling into paho (publish), so that a PUBACK is matched after its mid
        # is known; never taken on paho's network thread, which must not block behind a publish.
        self._answer_lock = threading.Lock()
        self._answers_owed = 0
        self._answer_mids: Set[int] = set()
        self._deferred: Deque[_Deferred] = deque()  # commands not taken yet (under _lock)
        self._deferred_bytes = 0
        self._commands_dropped = 0
        self._holding = False  # commands wait for answer slots (logged once)

        self._client: Optional[mqtt.Client] = None
        self._publisher: Optional[threading.Thread] = None
        self._started = False
        self._stopped = False
        self._stopping = False
        self._connected = False
        self._generation = 0
        self._connects = 0
        self._last_error: Optional[str] = None
        self._reported_error: Optional[str] = None
        self._lost_at: Optional[float] = None
        self._connected_at = 0.0
        self._in_flight_count = 0
        self._published_total = 0
        self._state_doc: Optional[bytes] = None
        self._model_doc: Optional[bytes] = None
        self._echoed = False  # our `online` came back on this connection
        self._echo_reported = False  # the missing echo was reported on this connection
        self._refused = False  # the last attempt's CONNACK refused us (reported by _on_connect)
        self._socket_error: Optional[str] = None  # paho's last socket error (from its log)
        #: Subscriptions outside the topic root (the fleet's records): filter → (QoS, handler).
        self._extra: Dict[str, Tuple[int, MessageHandler]] = {}
        #: Retained documents outside the root (the fleet digest): topic → payload, republished on connect.
        self._extra_docs: Dict[str, bytes] = {}

    # -- topics ------------------------------------------------------------------------------------

    def topic(self, suffix: str) -> str:
        """``{topic_root}/{suffix}``."""
        return f"{self._root}/{suffix}"

    def result_topic(self, command: str) -> str:
        """Where the result of ``command`` is published."""
        return self.topic(f"cmd/{command}/result")

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Subscribe to ``topic_filter`` (outside the root too) at every connect; call before :meth:`start`.

        ``handler(topic, payload, retained)`` runs on paho's network thread: it must only hand the
        message on (a bounded queue), never block. Empty payloads (a cleared retained message) reach it too.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("MqttLink.subscribe() must be called before start()")
            self._extra[topic_filter] = (qos, handler)

    def fetch_retained(self, topics: List[str]) -> bool:
        """Ask the broker to send these topics' retained messages again (subscribe, then unsubscribe at
        once; they arrive through the :meth:`subscribe` handler whose filter they match). Any thread.

        A topic that is itself one of the :meth:`subscribe` filters is subscribed again at its QoS
        and never unsubscribed: a SUBSCRIBE identical to a subscription replaces it and the broker
        sends its retained message again (MQTT 3.1.1 §3.8.4), where an UNSUBSCRIBE would end it —
        a door that asked for the fleet's manifest so stopped getting the next ones.

        Returns:
            False when not connected (nothing asked).
        """
        client = self._client
        with self._lock:
            connected = self._connected and not self._stopping
            held = {topic: self._extra[topic][0] for topic in topics if topic in self._extra}
        if client is None or not connected or not topics:
            return False
        client.subscribe([(topic, held.get(topic, 0)) for topic in topics])
        passing = [topic for topic in topics if topic not in held]
        if passing:
            client.unsubscribe(passing)
        return True

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """Publish a retained document (QoS 1) now if connected, and again on every (re)connect."""
        with self._doc_lock:
            self._extra_docs[topic] = payload
            self._publish_document(topic, payload, qos=1)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Configure the client and start connecting in the background (never blocks on the broker).

        Raises:
            RuntimeError: the link was already started.
            MqttLinkError: TLS files cannot be loaded.
        """
        settings = self._config.mqtt
        context = tls_context(settings.tls) if settings.tls.enabled else None
        with self._lock:
            if self._started:
                raise RuntimeError("MqttLink.start() was already called; a link is started once")
            self._started = True
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._config.mqtt_client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            manual_ack=True,  # a command is acknowledged once taken (see _on_command_message)
        )
        client.suppress_exceptions = True  # second line of defence; every callback catches anyway
        configure_client(client, settings, context)
        if context is not None and settings.tls.insecure:
            logger.warning("mqtt.tls.insecure is set: the broker's host name is not checked")
        client.will_set(self._availability_topic, OFFLINE, qos=1, retain=True)
        client.max_inflight_messages_set(self._window + _ANSWERS_IN_FLIGHT)
        client.max_queued_messages_set(self._window + ANSWER_SLOTS + _OTHER_QUEUED)
        client.on_connect = self._guard("on_connect", self._on_connect)
        client.on_connect_fail = self._guard("on_connect_fail", self._on_connect_fail)
        client.on_disconnect = self._guard("on_disconnect", self._on_disconnect)
        client.on_publish = self._guard("on_publish", self._on_publish)
        client.on_subscribe = self._guard("on_subscribe", self._on_subscribe)
        client.on_message = self._guard("on_message", self._on_unexpected_message)
        if self._config.commands.enabled:
            client.message_callback_add(
                self._command_filter, self._guard("command", self._on_command_message)
            )
        client.message_callback_add(self._availability_topic, self._guard("echo", self._on_echo))
        for topic_filter, (_qos, handler) in self._extra.items():
            client.message_callback_add(topic_filter, self._guard(topic_filter, _deliver_to(handler)))
        # Always on: a socket error that ends an attempt before CONNACK (a TLS alert such as
        # "certificate required") is only ever told through paho's log.
        client.on_log = self._guard("on_log", self._on_log)
        self._client = client

        self._publisher = threading.Thread(target=self._run_publisher, name="mqtt-publisher", daemon=True)
        self._publisher.start()
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
        client.loop_start()
        logger.info(
            "MQTT: connecting to %s as %s (%s, topics under %s)",
            self._broker,
            self._config.mqtt_client_id,
            "TLS" if settings.tls.enabled else "no TLS",
            self._root,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline`` (retained), disconnect and stop the threads, within ``timeout``.

        Events still pending stay in the outbox (call :meth:`drain` first to send them). Idempotent;
        do not call it from ``on_command``.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._stopping = True
            started = self._started
        if not started:
            return
        deadline = time.monotonic() + max(0.0, timeout)
        self._stop_event.set()
        self._wake.set()
        publisher = self._publisher
        if publisher is not None:
            publisher.join(_remaining(deadline, cap=max(0.5, timeout / 2)))
            if publisher.is_alive():
                logger.warning("MQTT publisher thread did not stop in time (blocked on the outbox?)")
        client = self._client
        if client is None:
            return
        with self._lock:
            connected = self._connected
        if connected:
            self._publish_offline(client, deadline)
        if publisher is None or not publisher.is_alive():
            try:
                self._settle_acks()  # PUBACKs that came after the publisher stopped
            except OutboxError as err:
                logger.warning("Could not record the last acknowledged events: %s", err)
        client.disconnect()
        self._stop_network_thread(client, deadline)
        self._connected_event.clear()
        with self._progress:
            self._progress.notify_all()

    # -- daemon API --------------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake the publisher: an event was put into the outbox."""
        self._wake.set()

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (everything acknowledged) or ``timeout`` passes.

        Returns:
            True if the outbox is empty.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        self._wake.set()
        with self._progress:
            while True:
                try:
                    if self._outbox.depth() == 0:
                        return True
                except OutboxError:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop_event.is_set():
                    return False
                self._progress.wait(min(remaining, 0.25))

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the link is connected; True if it is."""
        return self._connected_event.wait(max(0.0, timeout))

    def publish_state(self, doc: Dict[str, Any]) -> None:
        """Publish ``{root}/state`` (retained) now if connected, and again on every (re)connect.

        Raises:
            ValueError: ``doc`` cannot be encoded as JSON (NaN, infinity, objects).
        """
        payload = encode_document(doc)
        with self._doc_lock:
            self._state_doc = payload
            self._publish_document(self._state_topic, payload)

    def publish_model(self, doc: Dict[str, Any]) -> None:
        """Publish ``{root}/model`` (retained) now if connected, and again on every (re)connect.

        Raises:
            ValueError: ``doc`` cannot be encoded as JSON.
        """
        payload = encode_document(doc)
        with self._doc_lock:
            self._model_doc = payload
            self._publish_document(self._model_topic, payload)

    def publish_result(self, command: str, doc: Dict[str, Any]) -> bool:
        """Publish a command's result on ``{root}/cmd/{command}/result`` (QoS 1, not retained).

        Call it once per command handed to ``on_command``: the answer slot that the command was
        taken with passes to this message until the broker acknowledges it.

        Returns:
            True if it was handed to the client (sent now, or after a reconnect of this process).

        Raises:
            ValueError: ``command`` is not a single topic level, or ``doc`` cannot be encoded.
        """
        with self._answer_lock:
            self._answers_owed = max(0, self._answers_owed - 1)  # this answer's slot: now its mid's
        if not command or any(char in command for char in "/+#\x00"):
            self._wake.set()  # the slot is free: a held-back command may be taken
            raise ValueError(f"command name {command!r} is not a single topic level")
        try:
            payload = encode_document(doc)
        except ValueError:
            self._wake.set()
            raise
        client = self._client
        if client is None or self._stopped:
            logger.warning("Result of command %r not sent: the MQTT link is not running", command)
            return False
        with self._answer_lock:
            info = client.publish(self.result_topic(command), payload, qos=1, retain=False)
            sent = info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
            if sent:
                self._answer_mids.add(info.mid)
        if not sent:
            logger.warning("Result of command %r not sent: %s", command, mqtt.error_string(info.rc))
            self._wake.set()
        return sent

    def status(self) -> Dict[str, Any]:
        """Figures for the ``…/state`` document.

        Returns:
            ``connected`` (bool), ``reconnects`` (successful connects after the first),
            ``last_error`` (the most recent connection problem, or None), ``in_flight`` (events
            awaiting their PUBACK), ``published_total`` (events acknowledged by the broker since
            start), ``commands_waiting`` (received, waiting for an answer slot) and
            ``commands_dropped`` (dropped unanswered since start: more than ``MAX_DEFERRED_BYTES``
            were waiting).
        """
        with self._lock:
            return {
                "connected": self._connected,
                "reconnects": max(0, self._connects - 1),
                "last_error": self._last_error,
                "in_flight": self._in_flight_count,
                "published_total": self._published_total,
                "commands_waiting": len(self._deferred),
                "commands_dropped": self._commands_dropped,
            }

    # -- paho callbacks (paho's network thread) ----------------------------------------------------

    def _guard(self, name: str, callback: Callable[..., None]) -> Callable[..., None]:
        """Wrap a callback so that no exception ever reaches (and ends) paho's network thread."""

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception:
                logger.exception("Unexpected error in the MQTT %s callback; the link keeps running", name)

        guarded.__name__ = f"guarded_{name}"
        return guarded

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            with self._lock:
                self._refused = True
            hint = ""
            if str(reason_code) in ("Bad user name or password", "Not authorized"):
                hint = " (check mqtt.username and the password)"
            self._note_error(f"the broker {self._broker} refused the connection: {reason_code}{hint}", True)
            return
        with self._lock:
            if self._stopping:
                return  # stop() is about to disconnect: do not announce `online` now
            self._connected = True
            self._generation += 1
            self._connects += 1
            first = self._connects == 1
            now = time.monotonic()
            offline_s = None if self._lost_at is None else now - self._lost_at
            self._lost_at = None
            self._connected_at = now
            self._reported_error = None
            self._echoed = False
            self._echo_reported = False
            self._refused = False
            self._socket_error = None
        self._connected_event.set()
        if first:
            logger.info("MQTT: connected to %s", self._broker)
        elif offline_s is not None:
            logger.info("MQTT: reconnected to %s after %.1f s offline", self._broker, offline_s)
        else:
            logger.info("MQTT: reconnected to %s", self._broker)
        # Subscribe before `online`: the broker handles one connection's packets in order, so a client that
        # sees `online` and sends a command at once finds the subscription in place.
        if self._config.commands.enabled:
            result, _mid = client.subscribe(self._command_filter, qos=1)
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
                logger.warning(
                    "MQTT: subscribing to %s failed: %s", self._command_filter, mqtt.error_string(result)
                )
        for topic_filter, (qos, _handler) in self._extra.items():
            client.subscribe(topic_filter, qos=qos)
        # Our own `online` must come back: the check that the broker's ACL lets us through.
        client.subscribe(self._availability_topic, qos=0)
        # Discovery before `online`: Home Assistant then knows the entities when they become available.
        if self._config.mqtt.homeassistant.discovery:
            for topic, document in home_assistant_discovery(self._config):
                client.publish(topic, encode_document(document), qos=1, retain=True)
        client.publish(self._availability_topic, ONLINE, qos=1, retain=True)
        with self._doc_lock:
            for topic, payload in (
                (self._state_topic, self._state_doc),
                (self._model_topic, self._model_doc),
            ):
                if payload is not None:
                    client.publish(topic, payload, qos=0, retain=True)
            for topic, payload in self._extra_docs.items():
                client.publish(topic, payload, qos=1, retain=True)
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError` block, so the error is the one in flight.
        error = sys.exc_info()[1]
        detail = str(error) if error is not None else "unknown reason"
        hint = ""
        if isinstance(error, ssl.SSLCertVerificationError):
            hint = " (the broker's certificate is not trusted or does not match mqtt.host: check mqtt.tls.ca_file)"
        elif isinstance(error, ssl.SSLError):
            hint = " (TLS handshake failed: is mqtt.tls.enabled right for this port?)"
        elif isinstance(error, ConnectionRefusedError):
            hint = " (is the broker running? check mqtt.host and mqtt.port)"
        self._note_error(f"cannot connect to {self._broker}: {detail}{hint}", False)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if getattr(flags, "is_disconnect_packet_from_server", False):
            detail = f"the broker closed it: {reason_code}"
        else:
            detail = "the connection closed or timed out"
        with self._lock:
            was_connected = self._connected
            self._connected = False
            stopping = self._stopping
            if was_connected and not stopping:
                self._lost_at = time.monotonic()
                self._last_error = f"connection lost: {detail}"
            refused, self._refused = self._refused, False
            socket_error, self._socket_error = self._socket_error, None
        if not was_connected:
            if not refused and not stopping:  # closed before any CONNACK: nothing reported it yet
                hint = ""
                if socket_error and "certificate" in socket_error:
                    hint = (
                        " (the broker wants a client certificate it trusts: check mqtt.tls.cert_file and "
                        "mqtt.tls.key_file)"
                    )
                reason = socket_error or detail
                self._note_error(
                    f"the broker {self._broker} closed the connection before accepting it: {reason}{hint}",
                    True,
                )
            return
        self._connected_event.clear()
        if stopping:
            logger.info("MQTT: disconnected from %s", self._broker)
            return
        logger.warning(
            "MQTT: connection to %s lost (%s); reconnecting with back-off up to %.0f s, events wait in the outbox",
            self._broker,
            detail,
            self._config.mqtt.reconnect_max_s,
        )
        self._wake.set()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        # Called with paho's message lock held: only record the id; the publisher does the rest.
        self._acks.append(mid)
        self._wake.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            logger.error(
                "MQTT: the broker refused the subscription to %s (%s): commands will not arrive; "
                "grant read access to it in the broker's ACL",
                self._command_filter,
                ", ".join(refused),
            )

    def _on_command_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """Queue a command for the publisher thread, which takes it when an answer slot is free.

        Nothing here waits for a lock that is held while calling into paho (``_answer_lock``): the
        network thread never blocks behind a publish, and keeps reading the PUBACKs that free slots.
        """
        size = len(message.payload)
        with self._lock:
            generation = self._generation
            dropped = self._deferred_bytes + size > MAX_DEFERRED_BYTES
            if dropped:
                self._commands_dropped += 1
                count = self._commands_dropped
            else:
                self._deferred.append(_Deferred(message, generation))
                self._deferred_bytes += size
        if not dropped:
            self._wake.set()
            return
        if count == 1 or count % 1000 == 0:
            logger.error(
                "MQTT: %d command(s) dropped unanswered, without running: %d answers are outstanding and "
                "%d bytes of commands wait; a sender floods the appliance",
                count,
                ANSWER_SLOTS,
                MAX_DEFERRED_BYTES,
            )
        if message.qos > 0:  # a broker that bounds what is unacknowledged goes on
            client.ack(message.mid, message.qos)

    def _take_deferred(self) -> None:
        """Take the waiting commands, oldest first, while answer slots are free (publisher thread)."""
        client = self._client
        if client is None:
            return
        while True:
            with self._answer_lock:
                free = self._free_answer_slots() > 0
                with self._lock:
                    entry = self._deferred.popleft() if free and self._deferred else None
                    if entry is not None:
                        self._deferred_bytes -= len(entry.message.payload)
                    waiting = len(self._deferred)
                if entry is None:
                    self._note_holding(waiting)
                    return
                self._answers_owed += 1
            self._take_command(client, entry.message, entry.generation)

    def _note_holding(self, waiting: int) -> None:
        """Log once when commands start waiting for answer slots (caller holds ``_answer_lock``)."""
        if waiting and not self._holding:
            logger.info(
                "MQTT: %d command answers outstanding; holding %d command(s) back, unacknowledged",
                ANSWER_SLOTS,
                waiting,
            )
        self._holding = bool(waiting)

    def _free_answer_slots(self) -> int:
        """Answer slots not owed nor in flight (caller holds ``_answer_lock``)."""
        return ANSWER_SLOTS - self._answers_owed - len(self._answer_mids)

    def _take_command(self, client: mqtt.Client, message: mqtt.MQTTMessage, generation: int) -> None:
        """Handle a command that holds an answer slot, then acknowledge it to the broker."""
        try:
            self._handle_command(
                message.topic.rsplit("/", 1)[-1], bytes(message.payload), bool(message.retain)
            )
        finally:
            with self._lock:
                current = generation == self._generation and self._connected
            if message.qos > 0 and current:  # on a later connection the mid means another message
                client.ack(message.mid, message.qos)

    def _handle_command(self, name: str, payload: bytes, retained: bool) -> None:
        """Refuse a retained or oversized command, or hand it to ``on_command``; one answer either way."""
        limit = self._config.commands.max_payload_kb * 1024
        oversized = len(payload) > limit
        if retained:
            logger.warning("MQTT: ignored a retained command %r (commands must not be retained)", name)
            self._reply_error(
                name,
                request_id_prefix(payload) if oversized else _request_id(payload),
                "retained",
                "retained commands are refused: they would run again at every reconnect; "
                "publish commands without the retain flag (and clear this one with an empty retained message)",
            )
            return
        if oversized:
            logger.warning(
                "MQTT: refused command %r: its payload of %d bytes is above commands.max_payload_kb (%d KiB)",
                name,
                len(payload),
                self._config.commands.max_payload_kb,
            )
            self._reply_error(
                name,
                request_id_prefix(payload),
                "payload_too_large",
                f"payload of {len(payload)} bytes is above the limit of {limit} bytes",
            )
            return
        try:
            self._on_command(name, payload)
        except Exception as err:
            logger.exception("MQTT: the handler of command %r failed", name)
            self._reply_error(name, _request_id(payload), "handler_failed", f"{type(err).__name__}: {err}")

    def _on_echo(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.qos > 0:  # subscribed with QoS 0; acknowledgements are manual (for commands)
            client.ack(message.mid, message.qos)
        if bytes(message.payload) != ONLINE.encode():
            return  # the retained `offline` of an earlier last will
        with self._lock:
            reported, self._echoed = self._echo_reported, True
            if reported:
                self._last_error = None
        if reported:
            logger.info("MQTT: the broker passes our messages now")

    def _check_echo(self) -> None:
        """Report once per connection when our own `online` has not come back (publisher thread)."""
        with self._lock:
            overdue = (
                self._connected
                and not self._stopping
                and not self._echoed
                and not self._echo_reported
                and time.monotonic() - self._connected_at > ECHO_TIMEOUT_S
            )
            if overdue:
                self._echo_reported = True
        if overdue:
            user = self._config.mqtt.username
            self._note_error(
                f"the broker {self._broker} accepted the connection but does not pass our messages: "
                f"{self._availability_topic} did not come back within {ECHO_TIMEOUT_S:.0f} s. Its ACL "
                f"probably denies this client ({'user ' + repr(user) if user else 'anonymous'}); grant it the "
                f"topics listed in the README (events and command answers are not getting through)",
                True,
            )

    def _on_unexpected_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        logger.debug("MQTT: ignored a message on %s", message.topic)
        if message.qos > 0:  # acknowledgements are manual (for commands)
            client.ack(message.mid, message.qos)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        # paho reports every lost connection at its ERR level; this module logs those itself.
        if level == mqtt.MQTT_LOG_ERR:
            with self._lock:
                self._socket_error = text
        if _paho_logger.isEnabledFor(logging.DEBUG):
            _paho_logger.debug("%s", text)

    # -- helpers -----------------------------------------------------------------------------------

    def _note_error(self, message: str, refused: bool) -> None:
        """Record a connection problem; log it once until it changes or a connection succeeds."""
        with self._lock:
            self._last_error = message
            repeated = message == self._reported_error
            self._reported_error = message
        if repeated:
            logger.debug("MQTT: %s (still)", message)
            return
        logger.log(
            logging.ERROR if refused else logging.WARNING,
            "MQTT: %s; retrying with back-off up to %.0f s",
            message,
            self._config.mqtt.reconnect_max_s,
        )

    def _reply_error(self, command: str, request_id: Any, code: str, message: str) -> None:
        doc = {"request_id": request_id, "ok": False, "error": {"code": code, "message": message}}
        try:
            self.publish_result(command, doc)
        except ValueError as err:  # a command name that cannot be a result topic
            logger.warning("MQTT: cannot answer command %r: %s", command, err)

    def _publish_document(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Publish a retained document now if connected (caller holds ``_doc_lock``)."""
        client = self._client
        with self._lock:
            connected = self._connected and not self._stopping
        if client is None or not connected:
            return  # published on the next connect
        client.publish(topic, payload, qos=qos, retain=True)

    def _publish_offline(self, client: mqtt.Client, deadline: float) -> None:
        try:
            info = client.publish(self._availability_topic, OFFLINE, qos=1, retain=True)
            info.wait_for_publish(_remaining(deadline, floor=0.2))
            if info.is_published():
                return
            logger.warning("MQTT: the broker did not acknowledge 'offline' in time")
        except (RuntimeError, ValueError) as err:
            logger.warning("MQTT: could not publish 'offline': %s", err)

    def _stop_network_thread(self, client: mqtt.Client, deadline: float) -> None:
        """``loop_stop`` joins paho's thread without a timeout (it may be in a blocking connect); bound it."""
        stopper = threading.Thread(target=client.loop_stop, name="mqtt-loop-stop", daemon=True)
        stopper.start()
        stopper.join(_remaining(deadline, floor=0.5))
        if stopper.is_alive():
            logger.warning(
                "MQTT network thread did not stop in time (blocked connecting to %s?); left to finish on its own",
                self._broker,
            )

    # -- the publisher thread ----------------------------------------------------------------------

    def _run_publisher(self) -> None:
        failures = 0
        while not self._stop_event.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._stop_event.is_set():
                break
            try:
                try:
                    self._settle_acks()
                finally:
                    self._take_deferred()  # commands do not wait for a failing outbox
                self._fill_window()
                self._check_echo()
            except OutboxError as err:
                failures += 1
                if failures == 1:
                    logger.error("MQTT publisher: the outbox failed (%s); retrying", err)
                self._stop_event.wait(min(30.0, 0.5 * 2**failures))
                continue
            except Exception:
                logger.exception("MQTT publisher: unexpected error; retrying in 1 s")
                self._stop_event.wait(1.0)
                continue
            if failures:
                logger.info("MQTT publisher: the outbox works again")
                failures = 0

    def _settle_acks(self) -> None:
        """Delete the outbox entries whose PUBACK arrived (publisher thread)."""
        seqs: List[int] = []
        others: List[int] = []
        while True:
            try:
                mid = self._acks.popleft()
            except IndexError:
                break
            entry = self._inflight.pop(mid, None)  # other ids: state, results, discovery
            if entry is not None:
                seqs.append(entry.seq)
            else:
                others.append(mid)
        if others:
            with self._answer_lock:  # taken after publish_result recorded the mid
                self._answer_mids.difference_update(others)
        if not seqs:
            return
        with self._lock:
            self._published_total += len(seqs)
            self._in_flight_count = len(self._inflight)
        # If this fails the entries stay in the outbox and are sent again later: a duplicate, not a loss.
        self._outbox.ack_many(seqs)
        with self._progress:
            self._progress.notify_all()

    def _fill_window(self) -> None:
        """Publish pending entries up to the window (publisher thread)."""
        client = self._client
        with self._lock:
            ready = self._connected and not self._stopping
            generation = self._generation
            connected_at = self._connected_at
        if client is None or not ready:
            return
        if self._inflight:
            now = time.monotonic()
            oldest = min(self._inflight.values(), key=lambda entry: entry.seq)
            if now - max(oldest.sent_at, connected_at) > _UNACKED_RESEND_S:
                logger.warning(
                    "MQTT: %d event(s) not acknowledged after %.0f s; sending them again",
                    len(self._inflight),
                    _UNACKED_RESEND_S,
                )
                self._inflight.clear()  # they are still in the outbox: re-sent from the oldest below
            elif any(entry.generation != generation for entry in self._inflight.values()):
                return  # paho re-sends those first after a reconnect; newer events wait for them
        room = self._window - len(self._inflight)
        if room <= 0:
            return
        after = max((entry.seq for entry in self._inflight.values()), default=0)
        for entry in self._outbox.pending(room, after_seq=after):
            if self._stop_event.is_set():
                break
            try:
                info = client.publish(self.topic(entry.topic_suffix), entry.payload, qos=1, retain=False)
            except ValueError as err:  # cannot be an MQTT message at all: would block the queue forever
                logger.error("MQTT: outbox entry %d cannot be published (%s); dropping it", entry.seq, err)
                self._outbox.ack(entry.seq)
                continue
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                break
            self._inflight[info.mid] = _InFlight(entry.seq, generation, time.monotonic())
        with self._lock:
            self._in_flight_count = len(self._inflight)


#: How much of an oversized payload is scanned for its ``request_id``.
REQUEST_ID_SCAN_BYTES = 4096
_REQUEST_ID_FIELD = re.compile(
    rb'(?<!\\)"request_id"\s*:\s*("(?:[^"\\\x00-\x1f]|\\.){1,256}"|-?\d{1,18}(?![\d.eE]))'
)


def request_id_prefix(payload: bytes) -> Any:
    """The ``request_id`` of a payload too large to parse: the first ``"request_id": …`` member in its
    first :data:`REQUEST_ID_SCAN_BYTES` bytes (a string of up to 128 characters, or an integer).

    A bounded scan, not a parse: the member is found wherever it is nested, and a payload that puts
    it later than the scanned prefix gets None.
    """
    match = _REQUEST_ID_FIELD.search(payload[:REQUEST_ID_SCAN_BYTES])
    if match is None:
        return None
    try:
        value = json.loads(match.group(1).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # an unpaired surrogate escape could not go into the answer
        except UnicodeEncodeError:
            return None
        return value[:128]
    return value


def _request_id(payload: bytes) -> Any:
    """The ``request_id`` of a JSON command payload, if it has a usable one."""
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(document, dict):
        value = document.get("request_id")
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return value
    return None


def _remaining(deadline: float, cap: Optional[float] = None, floor: float = 0.0) -> float:
    remaining = max(floor, deadline - time.monotonic())
    return remaining if cap is None else min(cap, remaining)
