"""The API and an ingest worker inside the calling process, for tests and benchmarks that
want them for the length of a `with` block (`ehealthlab demo` itself starts them as the
stack's background services instead, which outlive it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import uvicorn

from ehealthlab.api.app import create_app
from ehealthlab.demo.common import say
from ehealthlab.errors import StackError
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.mqtt import BrokerAddress
from ehealthlab.settings import Settings
from ehealthlab.stack.ports import LOOPBACK, listening_socket

#: how long the in-process API may take to start
API_START_TIMEOUT_S = 20.0


@contextmanager
def api_in_thread(
    settings: Settings, start_timeout_s: float = API_START_TIMEOUT_S
) -> Iterator[str]:
    """The HTTP API over `settings`, served by uvicorn in a thread on loopback: its base URL,
    until exit. The port is bound here and handed to uvicorn, so no other process can take it
    between the choice and the bind."""
    listener = listening_socket()
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=LOOPBACK, port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise StackError("the API did not start; see the messages above")
            time.sleep(0.05)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()


class LocalServices:
    """The API (`api_in_thread`) and one ingest worker, in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api_url = ""
        self._stop = threading.Event()
        self._api = ExitStack()

    def __enter__(self) -> LocalServices:
        username = self.settings.mqtt_username
        if username is not None:
            with DynamicSecurity(BrokerAddress.from_settings(self.settings)) as dynsec:
                dynsec.ensure_platform_role(username)
        self.api_url = self._api.enter_context(api_in_thread(self.settings))
        self._worker = IngestWorker(self.settings, "ingest-demo")
        self._ingest = threading.Thread(target=self._worker.run, args=(self._stop,), daemon=True)
        self._ingest.start()
        if not self._worker.subscribed.wait(20):
            self.__exit__()
            raise StackError("the ingest worker could not subscribe; see the messages above")
        say(f"api: {self.api_url} (OpenAPI at /docs); ingest: worker {self._worker.name}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._ingest.join(timeout=15)
        self._api.close()
