/*
 * ehl_journal: a Mosquitto 2.0 plugin that writes every QoS 1/2 message the broker receives on a
 * device's readings topic (ehl/v1/devices/<id>/readings) to an append-only journal before the
 * broker acknowledges it, and publishes the journal again when the broker starts.
 *
 * Why: Mosquitto 2.0 acknowledges a message (PUBACK) before anything reaches the disk; it saves
 * its whole state only every `autosave_interval` and on a clean stop. A broker killed in
 * between (SIGKILL, a crash, the OOM killer) forgets the readings it acknowledged and had not yet
 * delivered to ingest, and the device, having its PUBACK, never sends them again
 * (docs/reliability-faults.md). Mosquitto calls this plugin's message callback before it stores
 * and acknowledges a message (src/handle_publish.c), so a message acknowledged is in the journal.
 *
 * How:
 * - Each message becomes one record, written by one write(2) to the current segment file,
 *   which the kernel keeps across a killed process. With `plugin_opt_journal_sync true` each
 *   write is also flushed to the disk (fdatasync), which a power loss needs, at its cost.
 * - When the record cannot be written the plugin refuses the message: the broker closes the
 *   device's connection without a PUBACK, and the device keeps the reading and sends it again.
 *   What was written of it is cut off again (or, failing that, the journal goes on in a new
 *   segment), so a torn record cannot hide the records after it.
 * - Segments start every `plugin_opt_journal_segment_seconds` (30). A segment is deleted once
 *   it has been closed for `plugin_opt_journal_keep_seconds` (180): by then the broker's own
 *   snapshot, taken every autosave_interval, holds what was not yet delivered. Keep it longer
 *   than the autosave interval plus a segment. Ages are measured on the monotonic clock, as
 *   Mosquitto measures its autosave interval, so a step of the wall clock deletes nothing
 *   early; wall-clock time only names segments, so that they sort across restarts.
 * - At start the plugin reads every segment, writes the records it could read to a new segment
 *   (the old ones stay, to be read again next time, if that copy fails) and queues them to be
 *   published again, with their user properties (the receive stamp of
 *   ehl_receive_stamp, loaded before this plugin): the broker delivers them once it has
 *   restored its sessions. Ingest already collapses messages delivered twice (same device and
 *   msg_id and content), so those also held by the snapshot or already stored are counted as
 *   duplicates, not stored twice. A record cut short, or whose checksum does not match, ends the
 *   reading of its segment (ehl_journal_record.h). The broker is then asked to save, so the
 *   replayed messages are in its snapshot before their segments can expire.
 * - A client subscribing to the readings topics (an ingest worker) makes the broker save its
 *   state (SIGUSR1, Mosquitto's own signal for it): the journal is published again to the
 *   sessions the broker restores, so a worker's session must not be younger than the last
 *   save, or a crash would forget it and what the journal holds would reach nobody. At once,
 *   unless a save was asked for less than SAVE_SPACING_MS ago; then when that time is up. The
 *   plugin is asked before dynamic security decides, so a device repeating a subscription it
 *   will be refused must not make the broker write its whole state more often than that.
 * - On a clean stop the broker saves its state before it unloads plugins; the plugin then
 *   deletes its segments if `plugin_opt_persistence_file` was written after its last record.
 *
 * Built by ehealthlab (ehealthlab/stack/plugin.py) with:
 *   gcc -shared -fPIC -O2 -o ehl_journal.so ehl_journal.c   (with its headers beside it)
 * Needs the Debian packages mosquitto-dev and libmosquitto-dev (headers only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "ehl_journal_files.h"
#include "ehl_journal_record.h"
#include "ehl_plugin_version.h"

#define TOPIC_PREFIX "ehl/v1/devices/"
#define TOPIC_SUFFIX "/readings"
#define SAVE_SPACING_MS 10000

/* A segment no longer written to, and since when (monotonic). */
struct closed_segment {
	char name[SEGMENT_NAME_BYTES];
	int64_t closed_ms;
};

static mosquitto_plugin_id_t *plugin_id = NULL;
static char *journal_dir = NULL;
static char *persistence_file = NULL;
static long segment_seconds = 30;
static long keep_seconds = 180;
static bool sync_each = false;
static int segment_fd = -1;
static char segment_name[SEGMENT_NAME_BYTES];
static int64_t segment_name_ms = 0; /* wall clock: orders segments across restarts */
static int64_t segment_opened_ms = 0; /* monotonic */
static off_t segment_bytes = 0;
static struct closed_segment *closed = NULL;
static size_t closed_count = 0, closed_room = 0;
static int64_t last_record_ms = 0; /* wall clock: compared with the persistence file's time */
static bool save_wanted = false;
static int64_t last_save_ms = 0; /* monotonic; 0: never */

static int64_t clock_ms(clockid_t clock)
{
	struct timespec now;
	clock_gettime(clock, &now);
	return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static int64_t monotonic_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

static bool is_readings_topic(const char *topic)
{
	size_t prefix = strlen(TOPIC_PREFIX), suffix = strlen(TOPIC_SUFFIX), total;
	if (topic == NULL) {
		return false;
	}
	total = strlen(topic);
	return total > prefix + suffix && strncmp(topic, TOPIC_PREFIX, prefix) == 0
	       && strcmp(topic + total - suffix, TOPIC_SUFFIX) == 0;
}

/* Remember `name` as closed now, to delete it keep_seconds later. */
static void remember_closed(const char *name, int64_t now)
{
	if (closed_count == closed_room) {
		size_t room = closed_room ? closed_room * 2 : 16;
		struct closed_segment *grown = realloc(closed, room * sizeof *closed);
		if (grown == NULL) {
			return; /* never deleted: kept too long rather than too short */
		}
		closed = grown;
		closed_room = room;
	}
	snprintf(closed[closed_count].name, SEGMENT_NAME_BYTES, "%s", name);
	closed[closed_count].closed_ms = now;
	closed_count++;
}

/* Start a new segment, named after every segment before it; the old one is remembered as
 * closed. */
static int open_segment(void)
{
	char name[SEGMENT_NAME_BYTES];
	char *path;
	int64_t start = clock_ms(CLOCK_REALTIME);
	int fd;
	if (start <= segment_name_ms) {
		start = segment_name_ms + 1;
	}
	snprintf(name, sizeof name, SEGMENT_PREFIX "%016" PRId64 SEGMENT_SUFFIX, start);
	path = segment_path(journal_dir, name);
	if (path == NULL) {
		return MOSQ_ERR_NOMEM;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
	free(path);
	if (fd < 0) {
		mosquitto_log_printf(MOSQ_LOG_ERR, "ehl_journal: cannot open a segment in %s: %s",
				     journal_dir, strerror(errno));
		return MOSQ_ERR_ERRNO;
	}
	if (segment_fd >= 0) {
		close(segment_fd);
		remember_closed(segment_name, monotonic_ms());
	}
	segment_fd = fd;
	snprintf(segment_name, sizeof segment_name, "%s", name);
	segment_name_ms = start;
	segment_opened_ms = monotonic_ms();
	segment_bytes = 0;
	return MOSQ_ERR_SUCCESS;
}

/* Delete the segments closed for keep_seconds. */
static void delete_expired(int64_t now)
{
	size_t kept = 0;
	for (size_t i = 0; i < closed_count; i++) {
		if (closed[i].closed_ms + keep_seconds * 1000 <= now) {
			remove_segment(journal_dir, closed[i].name);
		} else {
			closed[kept++] = closed[i];
		}
	}
	closed_count = kept;
}

/* Append one record; on failure cut off what was written of it, or go on in a new segment. */
static int append_record(const unsigned char *record, size_t size)
{
	int failure;
	if (segment_fd < 0) {
		return MOSQ_ERR_ERRNO;
	}
	if (write_all(segment_fd, record, size) == 0 && (!sync_each || fdatasync(segment_fd) == 0)) {
		segment_bytes += (off_t)size;
		last_record_ms = clock_ms(CLOCK_REALTIME);
		return MOSQ_ERR_SUCCESS;
	}
	failure = errno;
	mosquitto_log_printf(MOSQ_LOG_ERR, "ehl_journal: cannot write to the journal in %s: %s",
			     journal_dir, strerror(failure));
	if (ftruncate(segment_fd, segment_bytes) != 0) {
		open_segment();
	}
	return MOSQ_ERR_ERRNO;
}

static size_t count_user_properties(const mosquitto_property *properties)
{
	size_t count = 0;
	for (const mosquitto_property *p = properties; p != NULL; p = mosquitto_property_next(p)) {
		if (mosquitto_property_identifier(p) == MQTT_PROP_USER_PROPERTY) {
			count++;
		}
	}
	return count;
}

/* The message's user properties, copied (libmosquitto allocates them with calloc: free()). */
static struct journal_pair *user_properties(const mosquitto_property *properties, size_t *count)
{
	size_t expected = count_user_properties(properties), got = 0;
	struct journal_pair *pairs;
	const mosquitto_property *p;
	char *name = NULL, *value = NULL;

	*count = 0;
	pairs = calloc(expected + 1, sizeof *pairs);
	if (pairs == NULL) {
		return NULL;
	}
	for (p = mosquitto_property_read_string_pair(properties, MQTT_PROP_USER_PROPERTY, &name, &value, false);
	     p != NULL && got < expected;
	     p = mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, &name, &value, true)) {
		pairs[got].name = name;
		pairs[got].name_length = strlen(name);
		pairs[got].value = value;
		pairs[got].value_length = strlen(value);
		got++;
		name = value = NULL;
	}
	free(name);
	free(value);
	*count = got;
	if (got != expected) { /* memory ran short in libmosquitto: not all of them */
		for (size_t i = 0; i < got; i++) {
			free((char *)pairs[i].name);
			free((char *)pairs[i].value);
		}
		free(pairs);
		return NULL;
	}
	return pairs;
}

static int journal_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *message = event_data;
	struct journal_pair *pairs;
	unsigned char *record = NULL;
	size_t size = 0, count = 0;
	int rc;
	(void)event;
	(void)userdata;

	if (message->qos == 0 || !is_readings_topic(message->topic)) {
		return MOSQ_ERR_SUCCESS;
	}
	pairs = user_properties(message->properties, &count);
	if (pairs != NULL) {
		record = encode_record(message->qos, message->topic, pairs, count, message->payload,
				       message->payloadlen, &size);
		for (size_t i = 0; i < count; i++) {
			free((char *)pairs[i].name);
			free((char *)pairs[i].value);
		}
		free(pairs);
	}
	if (record == NULL) {
		mosquitto_log_printf(MOSQ_LOG_ERR, "ehl_journal: a message on %s cannot be kept; refused",
				     message->topic);
		return MOSQ_ERR_NOMEM;
	}
	rc = append_record(record, size);
	free(record);
	return rc;
}

/* Ask the broker to save its state, if the last request is SAVE_SPACING_MS old. */
static void save_if_due(int64_t now)
{
	if (save_wanted && (last_save_ms == 0 || now - last_save_ms >= SAVE_SPACING_MS)) {
		save_wanted = false;
		last_save_ms = now;
		kill(getpid(), SIGUSR1);
	}
}

/* A new subscription to the readings: have the broker save it (see the top). */
static int save_new_subscriber(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *check = event_data;
	bool matches = false;
	(void)event;
	(void)userdata;
	if (check->access == MOSQ_ACL_SUBSCRIBE && check->topic != NULL
	    && mosquitto_topic_matches_sub(check->topic, TOPIC_PREFIX "any-device" TOPIC_SUFFIX, &matches)
		       == MOSQ_ERR_SUCCESS
	    && matches) {
		save_wanted = true;
		save_if_due(monotonic_ms());
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int tick(int event, void *event_data, void *userdata)
{
	int64_t now = monotonic_ms();
	(void)event;
	(void)event_data;
	(void)userdata;
	save_if_due(now);
	if (now - segment_opened_ms >= segment_seconds * 1000 && open_segment() == MOSQ_ERR_SUCCESS) {
		delete_expired(now);
	}
	return MOSQ_ERR_SUCCESS;
}

enum replayed { REPLAYED, NOT_A_RECORD, NOT_QUEUED };

/* Queue one record's message to be published again. */
static enum replayed replay_record(const unsigned char *body, uint32_t length)
{
	struct journal_body decoded;
	mosquitto_property *properties = NULL;
	const unsigned char *at;
	char *topic;
	int rc = MOSQ_ERR_SUCCESS;

	if (!decode_body(body, length, &decoded)) {
		return NOT_A_RECORD;
	}
	topic = strndup(decoded.topic, decoded.topic_length);
	at = decoded.pairs;
	for (uint16_t i = 0; i < decoded.pair_count && rc == MOSQ_ERR_SUCCESS && topic != NULL; i++) {
		struct journal_pair pair = record_next_pair(&at);
		char *name = strndup(pair.name, pair.name_length);
		char *value = strndup(pair.value, pair.value_length);
		rc = name && value ? mosquitto_property_add_string_pair(&properties, MQTT_PROP_USER_PROPERTY, name, value)
				   : MOSQ_ERR_NOMEM;
		free(name);
		free(value);
	}
	if (topic != NULL && rc == MOSQ_ERR_SUCCESS) {
		/* on success the broker owns the properties, and publishes once it has restored its
		 * sessions (src/loop.c, queue_plugin_msgs); on failure they are still ours */
		rc = mosquitto_broker_publish_copy(NULL, topic, (int)decoded.payload_length, decoded.payload,
						   decoded.qos, false, properties);
	} else {
		rc = MOSQ_ERR_NOMEM;
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		mosquitto_property_free_all(&properties);
	}
	free(topic);
	return rc == MOSQ_ERR_SUCCESS ? REPLAYED : NOT_QUEUED;
}

/* Publish again, and copy into the new segment, every record of the old segments. False if a
 * segment could not be read, a message not queued or a record not copied: then the old
 * segments must stay, to be published again next time. */
static bool replay(char **names, size_t count, unsigned long *records)
{
	unsigned long cut = 0;
	bool whole = true;
	*records = 0;
	for (size_t i = 0; i < count; i++) {
		char *path = segment_path(journal_dir, names[i]);
		size_t size = 0, offset = 0;
		unsigned char *data = path ? read_file(path, &size) : NULL;
		free(path);
		if (data == NULL) {
			whole = false;
			continue;
		}
		while (offset < size) {
			uint32_t length = intact_record(data + offset, size - offset);
			enum replayed replayed = length ? replay_record(data + offset + HEADER_BYTES, length) : NOT_A_RECORD;
			if (replayed == NOT_QUEUED) {
				whole = false;
			}
			if (replayed != REPLAYED) {
				break;
			}
			if (whole && append_record(data + offset, HEADER_BYTES + length) != MOSQ_ERR_SUCCESS) {
				whole = false;
			}
			(*records)++;
			offset += HEADER_BYTES + length;
		}
		if (offset < size) {
			cut++;
		}
		free(data);
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			     "ehl_journal: %lu messages from %zu segments published again (%lu segments ended early)%s",
			     *records, count, cut, whole ? "" : "; the old segments are kept: they could not all be copied");
	return whole;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
			  struct mosquitto_opt *options, int option_count)
{
	char **old = NULL;
	size_t old_count = 0;
	unsigned long records = 0;
	int rc;
	(void)userdata;
	plugin_id = identifier;

	for (int i = 0; i < option_count; i++) {
		if (strcmp(options[i].key, "journal_dir") == 0) {
			journal_dir = strdup(options[i].value);
		} else if (strcmp(options[i].key, "persistence_file") == 0) {
			persistence_file = strdup(options[i].value);
		} else if (strcmp(options[i].key, "journal_segment_seconds") == 0) {
			segment_seconds = strtol(options[i].value, NULL, 10);
		} else if (strcmp(options[i].key, "journal_keep_seconds") == 0) {
			keep_seconds = strtol(options[i].value, NULL, 10);
		} else if (strcmp(options[i].key, "journal_sync") == 0) {
			sync_each = strcmp(options[i].value, "true") == 0;
		}
	}
	if (journal_dir == NULL || segment_seconds < 1 || keep_seconds <= segment_seconds) {
		mosquitto_log_printf(MOSQ_LOG_ERR,
				     "ehl_journal: plugin_opt_journal_dir is required, and journal_keep_seconds "
				     "must exceed journal_segment_seconds (at least 1)");
		return MOSQ_ERR_INVAL;
	}
	if (mkdir(journal_dir, 0700) != 0 && errno != EEXIST) {
		mosquitto_log_printf(MOSQ_LOG_ERR, "ehl_journal: cannot create %s: %s", journal_dir,
				     strerror(errno));
		return MOSQ_ERR_ERRNO;
	}
	old = list_segments(journal_dir, &old_count);
	if (old_count > 0) { /* the new segment's name sorts after every old one */
		segment_name_ms = segment_start_of(old[old_count - 1]);
	}
	rc = open_segment();
	if (rc != MOSQ_ERR_SUCCESS) {
		free_names(old, old_count);
		return rc;
	}
	if (old_count > 0) {
		if (replay(old, old_count, &records) && fdatasync(segment_fd) == 0) {
			for (size_t i = 0; i < old_count; i++) {
				remove_segment(journal_dir, old[i]);
			}
		} else {
			for (size_t i = 0; i < old_count; i++) {
				remember_closed(old[i], monotonic_ms());
			}
		}
		/* the replayed messages into the broker's snapshot before their segments expire */
		save_wanted = records > 0;
	}
	free_names(old, old_count);
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, journal_message, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, save_new_subscriber, NULL, NULL);
	}
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, tick, NULL, NULL);
	}
	return rc;
}

/* Called after the broker's final save on a clean stop: the journal is no longer needed if that
 * save is newer than its last record. */
int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct stat info;
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, journal_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, save_new_subscriber, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, tick, NULL);
	if (segment_fd >= 0) {
		fdatasync(segment_fd);
		close(segment_fd);
		segment_fd = -1;
	}
	if (persistence_file != NULL && stat(persistence_file, &info) == 0
	    && (int64_t)info.st_mtim.tv_sec * 1000 + info.st_mtim.tv_nsec / 1000000 > last_record_ms) {
		size_t count = 0;
		char **names = list_segments(journal_dir, &count);
		for (size_t i = 0; i < count; i++) {
			remove_segment(journal_dir, names[i]);
		}
		free_names(names, count);
		mosquitto_log_printf(MOSQ_LOG_INFO, "ehl_journal: the broker saved its state; journal cleared");
	}
	free(journal_dir);
	free(persistence_file);
	free(closed);
	journal_dir = persistence_file = NULL;
	closed = NULL;
	closed_count = closed_room = 0;
	return MOSQ_ERR_SUCCESS;
}
