"""The API and an ingest worker inside the calling process, for tests and benchmarks that
want them for the length of a `with` block (`ehealthlab demo` itself starts them as the
stack's background services instead, which outlive it)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from ehealthlab.api.app import create_app
from ehealthlab.demo.common import say
from ehealthlab.errors import StackError
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.mqtt import BrokerAddress
from ehealthlab.settings import Settings
from ehealthlab.stack.ports import LOOPBACK


class LocalServices:
    """The API (uvicorn on a free loopback port) and one ingest worker, in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api_url = ""
        self._stop = threading.Event()

    def __enter__(self) -> LocalServices:
        username = self.settings.mqtt_username
        if username is not None:
            with DynamicSecurity(BrokerAddress.from_settings(self.settings)) as dynsec:
                dynsec.ensure_platform_role(username)
        # bound before uvicorn has it, so no other process can take the port in between
        self._listener = socket.create_server((LOOPBACK, 0))
        port = self._listener.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.settings), host=LOOPBACK, port=port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._api = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._listener]}, daemon=True
        )
        self._api.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._api.is_alive():
                self._server.should_exit = True
                self._listener.close()
                raise StackError("the API did not start; see the messages above")
            time.sleep(0.05)
        self.api_url = f"http://{LOOPBACK}:{port}"
        self._worker = IngestWorker(self.settings, "ingest-demo")
        self._ingest = threading.Thread(target=self._worker.run, args=(self._stop,), daemon=True)
        self._ingest.start()
        if not self._worker.subscribed.wait(20):
            raise StackError("the ingest worker could not subscribe; see the messages above")
        say(f"api: {self.api_url} (OpenAPI at /docs); ingest: worker {self._worker.name}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._ingest.join(timeout=15)
        self._server.should_exit = True
        self._api.join(timeout=15)
        self._listener.close()
