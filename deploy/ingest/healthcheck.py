"""Healthcheck of an ingest worker (deploy/compose.yaml): exit 0 when the worker's metrics
endpoint on 127.0.0.1:PORT answers and says the database takes its writes."""

import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def healthy(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    samples = [
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "ehl_ingest_database_up"
        for sample in family.samples
    ]
    return bool(samples) and all(value == 1 for value in samples)


if __name__ == "__main__":
    try:
        sys.exit(0 if healthy(int(sys.argv[1])) else 1)
    except OSError as exc:
        sys.exit(f"no metrics: {exc}")
