#!/bin/sh
# Prepare, then run Mosquitto in the foreground (so SIGTERM reaches it and it writes its
# persistence file on the way out).
# - The TLS certificate and key are mounted read-only for root; Mosquitto 2.0 reads them only
#   after dropping to its own user, so they are copied to a directory of that user at every
#   start (a renewed certificate is picked up by restarting the broker).
# - On the first start, the dynamic-security file is created with the platform's
#   administrative client (the API registers devices through it); later starts keep it.
set -eu
config=${EHL_MOSQUITTO_CONFIG:-/etc/ehealthlab/mosquitto.conf}
dynsec=${EHL_DYNSEC_FILE:-/mosquitto/data/dynamic-security.json}
mounted=${EHL_TLS_MOUNT:-/run/ehl-tls}
certs=${EHL_TLS_DIR:-/mosquitto/certs}
owner=${EHL_MOSQUITTO_USER:-mosquitto}

umask 077
for name in fullchain.pem privkey.pem; do
    cp "$mounted/$name" "$certs/$name.new"
    mv "$certs/$name.new" "$certs/$name"
done
if [ ! -s "$dynsec" ]; then
    : "${EHL_MQTT_ADMIN_USERNAME:?set EHL_MQTT_ADMIN_USERNAME}"
    : "${EHL_MQTT_ADMIN_PASSWORD:?set EHL_MQTT_ADMIN_PASSWORD}"
    mosquitto_ctrl dynsec init "$dynsec" "$EHL_MQTT_ADMIN_USERNAME" "$EHL_MQTT_ADMIN_PASSWORD"
    chmod 0600 "$dynsec"  # it holds password hashes; mosquitto_ctrl leaves it world-readable
fi
if [ "$(id -u)" = 0 ]; then
    chown -R "$owner" "$certs" "$dynsec"
fi
exec mosquitto -c "$config"
