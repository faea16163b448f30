"""Ingest's start-up check that the broker stamps receive times, as settings declare.

Clock offsets and latencies are measured against the broker's receive time, which the
`ehl_receive_stamp` plugin appends to each message (docs/ingest.md). A broker declared to
stamp (`EHEALTHLAB_BROKER_RECEIVE_STAMP`, the default) but without the plugin would leave
ingest to fall back on its own read time silently, and believe whatever stamp a publisher
put on its message: so ingest sends itself a message on a platform topic first and refuses
to start, in one line, if it comes back unstamped.
"""

from __future__ import annotations

import queue
import time
import uuid

from ehealthlab.contract.topics import PLATFORM_PROBE_PREFIX
from ehealthlab.errors import ConfigurationError, EhealthlabError
from ehealthlab.mqtt import (
    BrokerAddress,
    ConnectionLostError,
    MqttConnection,
    ReceivedMessage,
    again_when_dropped,
)
from ehealthlab.settings import Settings

#: how long the probe may take to come back through the broker
PROBE_TIMEOUT_S = 10.0


def require_receive_stamp(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Return when the broker stamps receive times or settings say it does not; raise
    ConfigurationError when it was declared to and does not."""
    if not settings.broker_receive_stamp:
        return
    broker = BrokerAddress.from_settings(settings)
    client_id = f"ehl-stamp-probe-{uuid.uuid4().hex[:8]}"
    topic = f"{PLATFORM_PROBE_PREFIX}/{client_id}"

    def probe_once() -> ReceivedMessage:
        arrived: queue.Queue[ReceivedMessage] = queue.Queue()
        with MqttConnection(broker, client_id, on_message=arrived.put) as probe:
            probe.subscribe(topic, qos=1)
            probe.publish(topic, b"does the broker stamp receive times?", qos=1)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    return arrived.get(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    if not probe.is_connected:  # dropped before the probe came back
                        raise ConnectionLostError(
                            f"the probe on {topic}: the connection was lost"
                        ) from None
                    if time.monotonic() >= deadline:
                        raise

    try:
        message = again_when_dropped(probe_once)
    except queue.Empty:
        raise ConfigurationError(
            f"the broker's receive-stamp check got no answer on {topic} within "
            f"{timeout_s:.0f} s (does the platform's MQTT account have the platform role?)"
        ) from None
    except EhealthlabError as exc:
        raise ConfigurationError(f"the broker's receive-stamp check failed: {exc}") from exc
    if not message.broker_stamped:
        raise ConfigurationError(
            "the broker does not stamp receive times (plugin ehl_receive_stamp not loaded): "
            "load it (docs/ingest.md) or declare EHEALTHLAB_BROKER_RECEIVE_STAMP=false"
        )
