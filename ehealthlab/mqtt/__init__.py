"""The platform's MQTT clients; the only package that imports paho-mqtt."""

from ehealthlab.mqtt.common import (
    DEFAULT_TIMEOUT_S,
    RECEIVE_STAMP_PROPERTY,
    SIMULATED_RECEIVE_PROPERTY,
    BrokerAddress,
    ConnectionLostError,
    MessageHandler,
    MqttError,
    PacketTooLargeError,
    ReceivedMessage,
    Will,
    again_when_dropped,
    broker_receive_time,
    simulated_receive_time,
)
from ehealthlab.mqtt.connection import MqttConnection
from ehealthlab.mqtt.consumer import MqttConsumer

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RECEIVE_STAMP_PROPERTY",
    "SIMULATED_RECEIVE_PROPERTY",
    "BrokerAddress",
    "ConnectionLostError",
    "MessageHandler",
    "MqttConnection",
    "MqttConsumer",
    "MqttError",
    "PacketTooLargeError",
    "ReceivedMessage",
    "Will",
    "again_when_dropped",
    "broker_receive_time",
    "simulated_receive_time",
]
