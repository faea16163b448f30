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
 * - Segments start every `plugin_opt_journal_segment_seconds` (30). A segment is deleted once
 *   its last record is older than `plugin_opt_journal_keep_seconds` (180): by then the broker's
 *   own snapshot, taken every autosave_interval, holds what was not yet delivered. Keep it
 *   longer than the autosave interval plus a segment.
 * - At start the plugin reads every segment, writes the records it could read to a new segment
 *   and queues them to be published again, with their user properties (the receive stamp of
 *   ehl_receive_stamp, loaded before this plugin): the broker delivers them once it has
 *   restored its sessions. Ingest already collapses messages delivered twice (same device and
 *   msg_id and content), so those also held by the snapshot or already stored are counted as
 *   duplicates, not stored twice. A record cut short, or whose checksum does not match, ends the
 *   reading of its segment.
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
 *   gcc -shared -fPIC -O2 -o ehl_journal.so ehl_journal.c
 * Needs the Debian packages mosquitto-dev and libmosquitto-dev (headers only).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <inttypes.h>
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

#define TOPIC_PREFIX "ehl/v1/devices/"
#define TOPIC_SUFFIX "/readings"
#define SEGMENT_PREFIX "ehl-journal-"
#define SEGMENT_SUFFIX ".log"
#define RECORD_MAGIC 0x314a4845u /* "EHJ1", little-endian */
#define HEADER_BYTES 12u
#define MAX_RECORD_BYTES (16u * 1024u * 1024u)
#define SAVE_SPACING_MS 10000

static mosquitto_plugin_id_t *plugin_id = NULL;
static char *journal_dir = NULL;
static char *persistence_file = NULL;
static long segment_seconds = 30;
static long keep_seconds = 180;
static bool sync_each = false;
static int segment_fd = -1;
static int64_t segment_start_ms = 0;
static int64_t last_record_ms = 0;
static bool save_wanted = false;
static int64_t last_save_ms = -SAVE_SPACING_MS;

static int64_t now_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static uint32_t fnv1a(const unsigned char *data, size_t length)
{
	uint32_t hash = 2166136261u;
	for (size_t i = 0; i < length; i++) {
		hash = (hash ^ data[i]) * 16777619u;
	}
	return hash;
}

static void put_u16(unsigned char **at, uint16_t value)
{
	(*at)[0] = (unsigned char)(value & 0xff);
	(*at)[1] = (unsigned char)(value >> 8);
	*at += 2;
}

static void put_u32(unsigned char **at, uint32_t value)
{
	for (int i = 0; i < 4; i++) {
		(*at)[i] = (unsigned char)((value >> (8 * i)) & 0xff);
	}
	*at += 4;
}

static void put_bytes(unsigned char **at, const void *data, size_t length)
{
	memcpy(*at, data, length);
	*at += length;
}

static uint16_t get_u16(const unsigned char *at)
{
	return (uint16_t)(at[0] | (at[1] << 8));
}

static uint32_t get_u32(const unsigned char *at)
{
	return (uint32_t)at[0] | ((uint32_t)at[1] << 8) | ((uint32_t)at[2] << 16) | ((uint32_t)at[3] << 24);
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

static char *segment_path(const char *name)
{
	char *path = NULL;
	if (asprintf(&path, "%s/%s", journal_dir, name) < 0) {
		return NULL;
	}
	return path;
}

static bool is_segment_name(const char *name)
{
	size_t length = strlen(name), prefix = strlen(SEGMENT_PREFIX), suffix = strlen(SEGMENT_SUFFIX);
	return length > prefix + suffix && strncmp(name, SEGMENT_PREFIX, prefix) == 0
	       && strcmp(name + length - suffix, SEGMENT_SUFFIX) == 0;
}

static int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The journal's segment file names, oldest first (names sort by start time). */
static char **list_segments(size_t *count)
{
	DIR *dir = opendir(journal_dir);
	struct dirent *entry;
	char **names = NULL;
	size_t used = 0, room = 0;
	*count = 0;
	if (dir == NULL) {
		return NULL;
	}
	while ((entry = readdir(dir)) != NULL) {
		if (!is_segment_name(entry->d_name)) {
			continue;
		}
		if (used == room) {
			room = room ? room * 2 : 16;
			char **grown = realloc(names, room * sizeof *names);
			if (grown == NULL) {
				break;
			}
			names = grown;
		}
		names[used] = strdup(entry->d_name);
		if (names[used] != NULL) {
			used++;
		}
	}
	closedir(dir);
	if (used > 1) {
		qsort(names, used, sizeof *names, compare_names);
	}
	*count = used;
	return names;
}

static void free_names(char **names, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		free(names[i]);
	}
	free(names);
}

static int64_t segment_start_of(const char *name)
{
	return strtoll(name + strlen(SEGMENT_PREFIX), NULL, 10);
}

/* Start a new segment; the old one stays on disk until it expires. */
static int open_segment(int64_t start_ms)
{
	char name[64];
	char *path;
	int fd;
	snprintf(name, sizeof name, SEGMENT_PREFIX "%016" PRId64 SEGMENT_SUFFIX, start_ms);
	path = segment_path(name);
	if (path == NULL) {
		return MOSQ_ERR_NOMEM;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	free(path);
	if (fd < 0) {
		mosquitto_log_printf(MOSQ_LOG_ERR, "ehl_journal: cannot open a segment in %s: %s",
				     journal_dir, strerror(errno));
		return MOSQ_ERR_ERRNO;
	}
	if (segment_fd >= 0) {
		close(segment_fd);
	}
	segment_fd = fd;
	segment_start_ms = start_ms;
	return MOSQ_ERR_SUCCESS;
}

/* Delete the segments whose records are all older than keep_seconds. A segment's last record
 * is older than the start of the segment after it. */
static void delete_expired(int64_t now)
{
	size_t count = 0;
	char **names = list_segments(&count);
	for (size_t i = 0; i + 1 < count; i++) {
		if (segment_start_of(names[i + 1]) + keep_seconds * 1000 <= now) {
			char *path = segment_path(names[i]);
			if (path != NULL) {
				unlink(path);
				free(path);
			}
		}
	}
	free_names(names, count);
}

static int write_all(int fd, const unsigned char *data, size_t length)
{
	while (length > 0) {
		ssize_t written = write(fd, data, length);
		if (written < 0) {
			if (errno == EINTR) {
				continue;
			}
			return -1;
		}
		data += written;
		length -= (size_t)written;
	}
	return 0;
}

/* One record: magic, body length, checksum of the body, then the body: qos, topic, the user
 * properties, payload. All integers little-endian. */
static unsigned char *encode_record(uint8_t qos, const char *topic, const mosquitto_property *properties,
				    const void *payload, uint32_t payloadlen, size_t *size)
{
	size_t topic_length = strlen(topic), body = 1 + 2 + topic_length + 2 + 4 + payloadlen;
	uint16_t pairs = 0;
	const mosquitto_property *p;
	char *name = NULL, *value = NULL;
	unsigned char *record, *at;

	if (topic_length > UINT16_MAX) {
		return NULL;
	}
	for (p = mosquitto_property_read_string_pair(properties, MQTT_PROP_USER_PROPERTY, &name, &value, false);
	     p != NULL;
	     p = mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, &name, &value, true)) {
		size_t n = strlen(name), v = strlen(value);
		mosquitto_free(name);
		mosquitto_free(value);
		name = value = NULL;
		if (n > UINT16_MAX || v > UINT16_MAX || pairs == UINT16_MAX) {
			return NULL;
		}
		body += 4 + n + v;
		pairs++;
	}
	if (body > MAX_RECORD_BYTES) {
		return NULL;
	}
	record = malloc(HEADER_BYTES + body);
	if (record == NULL) {
		return NULL;
	}
	at = record + HEADER_BYTES;
	*at++ = qos;
	put_u16(&at, (uint16_t)topic_length);
	put_bytes(&at, topic, topic_length);
	put_u16(&at, pairs);
	for (p = mosquitto_property_read_string_pair(properties, MQTT_PROP_USER_PROPERTY, &name, &value, false);
	     p != NULL;
	     p = mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, &name, &value, true)) {
		put_u16(&at, (uint16_t)strlen(name));
		put_bytes(&at, name, strlen(name));
		put_u16(&at, (uint16_t)strlen(value));
		put_bytes(&at, value, strlen(value));
		mosquitto_free(name);
		mosquitto_free(value);
		name = value = NULL;
	}
	put_u32(&at, payloadlen);
	put_bytes(&at, payload, payloadlen);
	at = record;
	put_u32(&at, RECORD_MAGIC);
	put_u32(&at, (uint32_t)body);
	put_u32(&at, fnv1a(record + HEADER_BYTES, body));
	*size = HEADER_BYTES + body;
	return record;
}

static int append_record(const unsigned char *record, size_t size)
{
	if (segment_fd < 0) {
		return MOSQ_ERR_ERRNO;
	}
	if (write_all(segment_fd, record, size) != 0 || (sync_each && fdatasync(segment_fd) != 0)) {
		mosquitto_log_printf(MOSQ_LOG_ERR, "ehl_journal: cannot write to the journal in %s: %s",
				     journal_dir, strerror(errno));
		return MOSQ_ERR_ERRNO;
	}
	last_record_ms = now_ms();
	return MOSQ_ERR_SUCCESS;
}

static int journal_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *message = event_data;
	unsigned char *record;
	size_t size = 0;
	int rc;
	(void)event;
	(void)userdata;

	if (message->qos == 0 || !is_readings_topic(message->topic)) {
		return MOSQ_ERR_SUCCESS;
	}
	record = encode_record(message->qos, message->topic, message->properties, message->payload,
			       message->payloadlen, &size);
	if (record == NULL) {
		mosquitto_log_printf(MOSQ_LOG_ERR, "ehl_journal: a message on %s is too big to keep; refused",
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
	if (save_wanted && now - last_save_ms >= SAVE_SPACING_MS) {
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
		save_if_due(now_ms());
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int rotate(int event, void *event_data, void *userdata)
{
	int64_t now = now_ms();
	(void)event;
	(void)event_data;
	(void)userdata;
	save_if_due(now);
	if (now - segment_start_ms >= segment_seconds * 1000) {
		if (open_segment(now) == MOSQ_ERR_SUCCESS) {
			delete_expired(now);
		}
	}
	return MOSQ_ERR_SUCCESS;
}

/* Queue one record read back from the journal for publishing again; false if it is not one. */
static bool replay_record(const unsigned char *body, uint32_t length)
{
	const unsigned char *at = body, *end = body + length;
	mosquitto_property *properties = NULL;
	uint8_t qos;
	uint16_t topic_length, pairs;
	uint32_t payloadlen;
	char *topic;
	int rc;

	if (end - at < 3) {
		return false;
	}
	qos = *at++;
	topic_length = get_u16(at);
	at += 2;
	if (end - at < topic_length + 2) {
		return false;
	}
	topic = strndup((const char *)at, topic_length);
	at += topic_length;
	pairs = get_u16(at);
	at += 2;
	for (uint16_t i = 0; i < pairs; i++) {
		uint16_t n, v;
		char *name, *value;
		if (end - at < 2 || end - at < 2 + (n = get_u16(at)) + 2) {
			goto bad;
		}
		name = strndup((const char *)at + 2, n);
		at += 2 + n;
		v = get_u16(at);
		if (end - at < 2 + v) {
			free(name);
			goto bad;
		}
		value = strndup((const char *)at + 2, v);
		at += 2 + v;
		mosquitto_property_add_string_pair(&properties, MQTT_PROP_USER_PROPERTY, name, value);
		free(name);
		free(value);
	}
	if (end - at < 4) {
		goto bad;
	}
	payloadlen = get_u32(at);
	at += 4;
	if ((uint32_t)(end - at) != payloadlen || topic == NULL) {
		goto bad;
	}
	/* the broker frees the properties, and publishes them once it has restored its sessions */
	rc = mosquitto_broker_publish_copy(NULL, topic, (int)payloadlen, (void *)at, qos, false, properties);
	free(topic);
	return rc == MOSQ_ERR_SUCCESS;
bad:
	free(topic);
	mosquitto_property_free_all(&properties);
	return false;
}

static unsigned char *read_file(const char *path, size_t *size)
{
	struct stat info;
	unsigned char *data;
	size_t done = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	*size = 0;
	if (fd < 0 || fstat(fd, &info) != 0) {
		if (fd >= 0) {
			close(fd);
		}
		return NULL;
	}
	data = malloc(info.st_size > 0 ? (size_t)info.st_size : 1);
	while (data != NULL && done < (size_t)info.st_size) {
		ssize_t got = read(fd, data + done, (size_t)info.st_size - done);
		if (got <= 0) {
			if (got < 0 && errno == EINTR) {
				continue;
			}
			break;
		}
		done += (size_t)got;
	}
	close(fd);
	*size = done;
	return data;
}

/* Publish again, and copy into the new segment, every record of the old segments; false if a
 * copy failed, and then the old segments must stay (they are published again next time). */
static bool replay(char **names, size_t count)
{
	unsigned long records = 0, cut = 0;
	bool copied = true;
	for (size_t i = 0; i < count; i++) {
		char *path = segment_path(names[i]);
		size_t size = 0, offset = 0;
		unsigned char *data = path ? read_file(path, &size) : NULL;
		free(path);
		if (data == NULL) {
			copied = false;
			continue;
		}
		while (offset + HEADER_BYTES <= size) {
			const unsigned char *header = data + offset;
			uint32_t length = get_u32(header + 4);
			if (get_u32(header) != RECORD_MAGIC || length > MAX_RECORD_BYTES
			    || size - offset - HEADER_BYTES < length
			    || fnv1a(header + HEADER_BYTES, length) != get_u32(header + 8)
			    || !replay_record(header + HEADER_BYTES, length)) {
				break;
			}
			if (copied && append_record(header, HEADER_BYTES + length) != MOSQ_ERR_SUCCESS) {
				copied = false;
			}
			records++;
			offset += HEADER_BYTES + length;
		}
		if (offset < size) {
			cut++;
		}
		free(data);
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			     "ehl_journal: %lu messages from %zu segments published again (%lu segments ended early)%s",
			     records, count, cut, copied ? "" : "; the old segments are kept: copying them failed");
	return copied;
}

static void remove_segments(char **names, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		char *path = segment_path(names[i]);
		if (path != NULL) {
			unlink(path);
			free(path);
		}
	}
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++) {
		if (supported_versions[i] == 5) {
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
			  struct mosquitto_opt *options, int option_count)
{
	char **old = NULL;
	size_t old_count = 0;
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
	old = list_segments(&old_count);
	/* a start time after every old segment's, so the new one sorts last */
	int64_t start = now_ms();
	if (old_count > 0 && segment_start_of(old[old_count - 1]) >= start) {
		start = segment_start_of(old[old_count - 1]) + 1;
	}
	rc = open_segment(start);
	if (rc != MOSQ_ERR_SUCCESS) {
		free_names(old, old_count);
		return rc;
	}
	if (old_count > 0 && replay(old, old_count) && fdatasync(segment_fd) == 0) {
		remove_segments(old, old_count);
	}
	free_names(old, old_count);
	rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, journal_message, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, save_new_subscriber, NULL, NULL);
	}
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, rotate, NULL, NULL);
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
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, rotate, NULL);
	if (segment_fd >= 0) {
		fdatasync(segment_fd);
		close(segment_fd);
		segment_fd = -1;
	}
	if (persistence_file != NULL && stat(persistence_file, &info) == 0
	    && (int64_t)info.st_mtim.tv_sec * 1000 + info.st_mtim.tv_nsec / 1000000 > last_record_ms) {
		size_t count = 0;
		char **names = list_segments(&count);
		remove_segments(names, count);
		free_names(names, count);
		mosquitto_log_printf(MOSQ_LOG_INFO, "ehl_journal: the broker saved its state; journal cleared");
	}
	free(journal_dir);
	free(persistence_file);
	journal_dir = persistence_file = NULL;
	return MOSQ_ERR_SUCCESS;
}
