"""Mosquitto's dynamic security plugin, driven over its MQTT control topic.

The gateway owns one administrative client; through it, each registered device gets an MQTT
client named after its `device_id` (client id bound to the same name) and a role allowing
exactly its own topics. Commands are JSON on `$CONTROL/dynamic-security/v1`; answers come on
`.../response` and are matched by correlation data.
"""

from __future__ import annotations

import contextlib
import json
import operator
import threading
import time
import uuid
from functools import partial
from typing import Any

from ehealthlab.contract.topics import (
    DEVICES_PREFIX,
    INGEST_SHARED_SUBSCRIPTION,
    PLATFORM_PROBE_PREFIX,
    READINGS_WILDCARD,
    STATUS_WILDCARD,
    feedback_topic,
    readings_topic,
    status_topic,
)
from ehealthlab.errors import EhealthlabError
from ehealthlab.mqtt import (
    BrokerAddress,
    MqttConnection,
    MqttError,
    ReceivedMessage,
    again_when_dropped,
)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
PLATFORM_ROLE = "ehl-platform"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"


class DynsecError(EhealthlabError):
    """The dynamic security plugin refused a command."""


def device_role_name(device_id: str) -> str:
    return f"device-{device_id}"


def device_acls(device_id: str) -> list[dict[str, Any]]:
    """Exactly what a device may do: publish readings and status, subscribe to feedback."""
    return [
        {"acltype": "publishClientSend", "topic": readings_topic(device_id), "allow": True},
        {"acltype": "publishClientSend", "topic": status_topic(device_id), "allow": True},
        {"acltype": "subscribeLiteral", "topic": feedback_topic(device_id), "allow": True},
        {"acltype": "publishClientReceive", "topic": feedback_topic(device_id), "allow": True},
        {"acltype": "unsubscribeLiteral", "topic": feedback_topic(device_id), "allow": True},
    ]


def platform_acls() -> list[dict[str, Any]]:
    """What the platform's own services do: read every device's readings and status (ingest,
    gateway) and answer each device on its feedback topic."""
    return [
        {"acltype": "publishClientSend", "topic": f"{DEVICES_PREFIX}/+/feedback", "allow": True},
        {"acltype": "subscribePattern", "topic": READINGS_WILDCARD, "allow": True},
        {"acltype": "subscribePattern", "topic": INGEST_SHARED_SUBSCRIPTION, "allow": True},
        {"acltype": "subscribePattern", "topic": STATUS_WILDCARD, "allow": True},
        # ingest's start-up check that the broker stamps receive times (ingest/stamp_check.py)
        {"acltype": "publishClientSend", "topic": f"{PLATFORM_PROBE_PREFIX}/+", "allow": True},
        {"acltype": "subscribePattern", "topic": f"{PLATFORM_PROBE_PREFIX}/+", "allow": True},
    ]


#: attempts at giving the platform role while other processes may be giving it too, and the
#: pause before the next (times the attempt): a change of roles is over in milliseconds
_ROLE_ATTEMPTS = 5
_ROLE_RETRY_S = 0.1


class DynamicSecurity:
    """A connection of the administrative client, sending commands one batch at a time."""

    def __init__(self, broker: BrokerAddress, *, timeout_s: float = 10.0) -> None:
        self._broker = broker
        self._timeout_s = timeout_s
        self._answers: dict[str, dict[str, Any]] = {}
        self._arrived = threading.Condition()
        self._connection = self._connect()

    def _connect(self) -> MqttConnection:
        """A new connection subscribed to the answers (made again while the broker drops it:
        see `again_when_dropped`)."""

        def attempt() -> MqttConnection:
            connection = MqttConnection(
                self._broker, f"ehl-gateway-{uuid.uuid4().hex[:8]}", on_message=self._receive
            )
            try:
                connection.connect()
                connection.subscribe(RESPONSE_TOPIC)
            except MqttError:
                with contextlib.suppress(MqttError):
                    connection.close()
                raise
            return connection

        return again_when_dropped(attempt)

    def __enter__(self) -> DynamicSecurity:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._connection.close()

    def execute(self, *commands: dict[str, Any]) -> list[dict[str, Any]]:
        """Send commands in one message; return their answers, raising on the first error."""
        tagged = [{**c, "correlationData": uuid.uuid4().hex} for c in commands]
        payload = json.dumps({"commands": tagged}).encode()
        self._connection.publish(CONTROL_TOPIC, payload)
        answers = []
        with self._arrived:
            for command in tagged:
                key: str = command["correlationData"]
                if not self._arrived.wait_for(partial(operator.contains, self._answers, key),
                                              self._timeout_s):  # fmt: skip
                    raise DynsecError(f"no answer to {command['command']} from the broker")
                answers.append(self._answers.pop(key))
        for command, answer in zip(tagged, answers, strict=True):
            if "error" in answer:
                raise DynsecError(f"{command['command']}: {answer['error']}")
        return answers

    def _receive(self, message: ReceivedMessage) -> None:
        try:
            responses = json.loads(message.payload).get("responses", [])
        except (ValueError, AttributeError):
            return
        with self._arrived:
            for response in responses:
                if isinstance(response, dict) and "correlationData" in response:
                    self._answers[str(response["correlationData"])] = response
            self._arrived.notify_all()

    # -- the platform's own client ------------------------------------------------------

    def ensure_platform_role(self, username: str) -> None:
        """Give the platform's client (the administrative one) the platform role; idempotent.

        Other processes of the platform may be doing the same at the same moment (an API's
        workers starting together, ingest beside them): the broker then disconnects this
        connection too when one of them changes the client's roles, or refuses a role one of
        them has just created. Each such attempt is made again on a new connection, which
        finds what the others did."""
        for attempt in range(1, _ROLE_ATTEMPTS + 1):
            try:
                self._ensure_platform_role_once(username)
                return
            except (MqttError, DynsecError):
                if attempt == _ROLE_ATTEMPTS:
                    raise
            time.sleep(_ROLE_RETRY_S * attempt)
            with contextlib.suppress(MqttError):
                self._connection.close()
            self._connection = self._connect()

    def _ensure_platform_role_once(self, username: str) -> None:
        role = self.get_role(PLATFORM_ROLE)
        if role is None:
            self.execute(
                {"command": "createRole", "rolename": PLATFORM_ROLE, "acls": platform_acls()}
            )
        else:  # a role made by an earlier version: add the rights it lacks
            held = {(a.get("acltype"), a.get("topic")) for a in role.get("acls", [])}
            missing = [a for a in platform_acls() if (a["acltype"], a["topic"]) not in held]
            if missing:
                # the broker disconnects the role's clients, this one among them (see below)
                with contextlib.suppress(MqttError, DynsecError):
                    add = {"command": "addRoleACL", "rolename": PLATFORM_ROLE}
                    self.execute(*({**add, **a} for a in missing))
                self._connection.close()
                self._connection = self._connect()
                held = {
                    (a.get("acltype"), a.get("topic"))
                    for a in (self.get_role(PLATFORM_ROLE) or {}).get("acls", [])
                }
                if any((a["acltype"], a["topic"]) not in held for a in missing):
                    raise DynsecError(f"could not give the {PLATFORM_ROLE} role its new rights")
        client = self.get_client(username)
        roles = {r.get("rolename") for r in (client or {}).get("roles", [])}
        if PLATFORM_ROLE not in roles:
            # The broker disconnects a client whose roles change, so that the new rights
            # apply; when that client is this very connection, its answer may never come.
            with contextlib.suppress(MqttError, DynsecError):
                self.execute(
                    {"command": "addClientRole", "username": username, "rolename": PLATFORM_ROLE}
                )
            self._connection.close()
            self._connection = self._connect()
            client = self.get_client(username)
            if PLATFORM_ROLE not in {r.get("rolename") for r in (client or {}).get("roles", [])}:
                raise DynsecError(f"could not give {username!r} the {PLATFORM_ROLE} role")

    def get_role(self, rolename: str) -> dict[str, Any] | None:
        try:
            [answer] = self.execute({"command": "getRole", "rolename": rolename})
        except DynsecError as exc:
            if "not found" in str(exc).lower():
                return None
            raise
        role = answer.get("data", {}).get("role")
        return role if isinstance(role, dict) else None

    # -- device clients ------------------------------------------------------------------

    def create_device_client(self, device_id: str, password: str) -> None:
        """A client that must connect with client id = username = device_id."""
        role = device_role_name(device_id)
        self.execute(
            {"command": "createRole", "rolename": role, "acls": device_acls(device_id)},
            {
                "command": "createClient",
                "username": device_id,
                "password": password,
                "clientid": device_id,
                "roles": [{"rolename": role}],
            },
        )

    def set_password(self, device_id: str, password: str) -> None:
        """A new password; a connection made with the old one is dropped."""
        self.execute(
            {"command": "setClientPassword", "username": device_id, "password": password},
            *self._kick(device_id),
        )

    @staticmethod
    def _kick(username: str) -> list[dict[str, Any]]:
        """Disabling a client drops its live connection; enabling it lets it connect anew."""
        return [
            {"command": "disableClient", "username": username},
            {"command": "enableClient", "username": username},
        ]

    def delete_device_client(self, device_id: str) -> None:
        """Remove the client (the broker drops a live connection) and its role."""
        self.execute(
            {"command": "disableClient", "username": device_id},  # kicks a live connection
            {"command": "deleteClient", "username": device_id},
            {"command": "deleteRole", "rolename": device_role_name(device_id)},
        )

    def get_client(self, username: str) -> dict[str, Any] | None:
        try:
            [answer] = self.execute({"command": "getClient", "username": username})
        except DynsecError as exc:
            if "not found" in str(exc).lower():
                return None
            raise
        client = answer.get("data", {}).get("client")
        return client if isinstance(client, dict) else None
