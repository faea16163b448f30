#!/bin/sh
# Healthy when the broker answers its administrative client on the internal listener: a
# connection, authentication through dynamic security and one $SYS message.
set -eu
exec mosquitto_sub -h 127.0.0.1 -p "${EHL_MQTT_INTERNAL_PORT:-1883}" \
    -u "$EHL_MQTT_ADMIN_USERNAME" -P "$EHL_MQTT_ADMIN_PASSWORD" \
    -t '$SYS/broker/uptime' -C 1 -W 10 >/dev/null
