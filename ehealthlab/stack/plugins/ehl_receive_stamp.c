/*
 * ehl_receive_stamp: a Mosquitto 2.0 plugin that stamps every message the broker receives on
 * the pilot's topics (ehl/...) with the broker's receive time, as the MQTT 5 user property
 * "ehl-received-at" = milliseconds since the Unix epoch.
 *
 * Why: the device contract measures a device's clock offset as receive time - sent_at. When a
 * message waits in the broker (ingest down, slow or restarting), the time ingest reads it is
 * not the time the platform received it; the broker's own stamp is. Messages keep the stamp
 * in the broker's persistence file, so it survives a broker restart too.
 *
 * A device cannot forge it: the broker appends its stamp after the device's own properties and
 * ingest reads the last "ehl-received-at" of a message.
 *
 * Built by ehealthlab (ehealthlab/stack/plugin.py) with:
 *   gcc -shared -fPIC -O2 -o ehl_receive_stamp.so ehl_receive_stamp.c   (ehl_plugin_version.h beside it)
 * Needs the Debian packages mosquitto-dev and libmosquitto-dev (headers only).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "ehl_plugin_version.h"

#define STAMP_KEY "ehl-received-at"
#define STAMPED_PREFIX "ehl/"

static mosquitto_plugin_id_t *plugin_id = NULL;

static int stamp_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *message = event_data;
	struct timespec now;
	char stamp[24];
	(void)event;
	(void)userdata;

	if (message->topic == NULL || strncmp(message->topic, STAMPED_PREFIX, strlen(STAMPED_PREFIX)) != 0) {
		return MOSQ_ERR_SUCCESS;
	}
	clock_gettime(CLOCK_REALTIME, &now);
	snprintf(stamp, sizeof stamp, "%" PRId64,
		 (int64_t)now.tv_sec * 1000 + (int64_t)(now.tv_nsec / 1000000));
	return mosquitto_property_add_string_pair(&message->properties, MQTT_PROP_USER_PROPERTY,
						  STAMP_KEY, stamp);
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
			  struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	plugin_id = identifier;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, stamp_message, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, stamp_message, NULL);
}
