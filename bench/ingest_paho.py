"""A paho subscriber that only receives and acknowledges: the ceiling of any ingest built on
the platform's MQTT client (`MqttConsumer`), measured beside bare `mosquitto_sub`.

Run by bench/ingest.py's "paho" scenario, one process per partition like ingest's workers:
`python bench/ingest_paho.py HOST PORT USER PASSWORD CLIENT_ID`. It acknowledges what it got
in batches (as ingest does after a commit), keeps each delivery's time, and prints them
one per line when terminated.
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

from ehealthlab.contract.topics import READINGS_WILDCARD
from ehealthlab.mqtt import BrokerAddress, MqttConsumer

#: as ingest's workers
RECEIVE_MAXIMUM = 2000
BATCH = 1000


def main(argv: list[str]) -> int:
    host, port, user, password, client_id = argv
    stop = False

    def terminate(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, terminate)
    consumer = MqttConsumer(
        BrokerAddress(host, int(port), user, password), client_id, clean_start=True,
        receive_maximum=RECEIVE_MAXIMUM, max_held=2 * RECEIVE_MAXIMUM,
    )  # fmt: skip
    consumer.connect()
    consumer.subscribe(READINGS_WILDCARD, qos=1)
    times: list[float] = []
    while not stop:
        batch = []
        message = consumer.receive(0.2)
        while message is not None:
            batch.append(message)
            if len(batch) >= BATCH:
                break
            message = consumer.receive(0.0)
        now = time.time()
        for message in batch:
            consumer.ack(message)
            times.append(now)
        consumer.flush()
    consumer.close()
    sys.stdout.write("".join(f"{t:.6f}\n" for t in times))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
