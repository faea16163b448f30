/*
 * ehl_ingest_partitions: a Mosquitto 2.0 plugin that delivers each device's readings to the
 * one partitioned ingest worker that keeps them, instead of to every worker.
 *
 * Why: Mosquitto 2.0 does not persist shared subscriptions, so ingest's default
 * (`--subscription partitioned`) gives every worker a durable ordinary subscription to
 * ehl/v1/devices/+/readings and each worker keeps the devices of its partition. Without this
 * plugin the broker sends every message to every worker, which throws most away: N times the
 * broker's outgoing traffic and each worker reading them all.
 *
 * How: Mosquitto asks the ACL callbacks for read access once per subscriber as it queues a
 * message for it (src/subs.c), first plugin first. A worker's client id ends in
 * ".p<k>of<n>" (partition k of n, from 1); for a readings topic of a valid device id whose
 * partition is not k, this plugin denies the read, and the message is not queued for that
 * worker. It only ever denies, to those client ids, on those topics, so it grants nothing; it
 * defers every other check to the next plugin (dynamic security), so it must be loaded before.
 *
 * The partition is the one ehealthlab.ingest.pipeline.partition_of computes: the first 8
 * bytes of SHA-256(device_id), big-endian, modulo n. A topic that is not a valid device's
 * readings topic is left to every worker (partition 0 keeps it as a dead letter), so the two
 * sides never disagree about who keeps a message.
 *
 * Built by ehealthlab (ehealthlab/stack/plugin.py) with:
 *   gcc -shared -fPIC -O2 -o ehl_ingest_partitions.so ehl_ingest_partitions.c -lcrypto
 *   (with ehl_plugin_version.h beside it)
 * Needs the Debian packages mosquitto-dev, libmosquitto-dev and libssl-dev (headers).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "ehl_plugin_version.h"

#define TOPIC_PREFIX "ehl/v1/devices/"
#define TOPIC_SUFFIX "/readings"
#define PARTITION_MARK ".p"

static mosquitto_plugin_id_t *plugin_id = NULL;

/* Partition k of n (1 <= k <= n) from a client id ending in ".p<k>of<n>". */
static bool client_partition(const char *client_id, unsigned long *k, unsigned long *n)
{
	const char *mark = NULL;
	for (const char *p = strstr(client_id, PARTITION_MARK); p != NULL; p = strstr(p + 1, PARTITION_MARK)) {
		mark = p;
	}
	if (mark == NULL) {
		return false;
	}
	const char *digits = mark + strlen(PARTITION_MARK);
	char *end = NULL;
	if (*digits < '1' || *digits > '9') {
		return false;
	}
	*k = strtoul(digits, &end, 10);
	if (strncmp(end, "of", 2) != 0 || end[2] < '1' || end[2] > '9') {
		return false;
	}
	*n = strtoul(end + 2, &end, 10);
	return *end == '\0' && *k <= *n && *n <= 1024;
}

/* The contract's device id: 3 to 64 of [a-z0-9-], the first a letter or digit. */
static bool valid_device_id(const char *id, size_t length)
{
	if (length < 3 || length > 64 || id[0] == '-') {
		return false;
	}
	for (size_t i = 0; i < length; i++) {
		char c = id[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
			return false;
		}
	}
	return true;
}

/* The device id of a readings topic ehl/v1/devices/<id>/readings, or false. */
static bool readings_device(const char *topic, const char **id, size_t *length)
{
	size_t prefix = strlen(TOPIC_PREFIX), suffix = strlen(TOPIC_SUFFIX);
	size_t total = strlen(topic);
	if (total <= prefix + suffix || strncmp(topic, TOPIC_PREFIX, prefix) != 0
	    || strcmp(topic + total - suffix, TOPIC_SUFFIX) != 0) {
		return false;
	}
	*id = topic + prefix;
	*length = total - prefix - suffix;
	return valid_device_id(*id, *length);
}

static unsigned long device_partition(const char *id, size_t length, unsigned long n)
{
	unsigned char digest[SHA256_DIGEST_LENGTH];
	uint64_t head = 0;
	SHA256((const unsigned char *)id, length, digest);
	for (int i = 0; i < 8; i++) {
		head = (head << 8) | digest[i];
	}
	return (unsigned long)(head % n);
}

static int check_read(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *check = event_data;
	const char *client_id, *device;
	size_t length;
	unsigned long k, n;
	(void)event;
	(void)userdata;

	if (check->access != MOSQ_ACL_READ || check->topic == NULL) {
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	client_id = mosquitto_client_id(check->client);
	if (client_id == NULL || !client_partition(client_id, &k, &n)) {
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	if (!readings_device(check->topic, &device, &length)) {
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	return device_partition(device, length, n) == k - 1 ? MOSQ_ERR_PLUGIN_DEFER : MOSQ_ERR_ACL_DENIED;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
			  struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	plugin_id = identifier;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, check_read, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, check_read, NULL);
}
