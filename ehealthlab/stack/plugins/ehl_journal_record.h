/*
 * The record format of ehl_journal (ehl_journal.c): pure functions, no I/O, no broker calls.
 *
 * record := magic "EHJ1" | body length u32 | FNV-1a of the body u32 | body
 * body   := qos u8 | topic length u16 | topic | pair count u16
 *           | (name length u16 | name | value length u16 | value) * pair count
 *           | payload length u32 | payload
 * All integers little-endian. A record is written by one write(2); one that is cut short or
 * whose checksum does not match ends the reading of its segment.
 */
#ifndef EHL_JOURNAL_RECORD_H
#define EHL_JOURNAL_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RECORD_MAGIC 0x314a4845u /* "EHJ1", little-endian */
#define HEADER_BYTES 12u
#define MAX_RECORD_BYTES (16u * 1024u * 1024u)

/* One MQTT user property. */
struct journal_pair {
	const char *name;
	size_t name_length;
	const char *value;
	size_t value_length;
};

/* A record's body, read back: pointers into the body it was read from. */
struct journal_body {
	uint8_t qos;
	const char *topic;
	uint16_t topic_length;
	uint16_t pair_count;
	const unsigned char *pairs; /* pair_count encoded pairs, read with record_next_pair */
	const unsigned char *pairs_end;
	const unsigned char *payload;
	uint32_t payload_length;
};

static inline uint32_t record_checksum(const unsigned char *data, size_t length)
{
	uint32_t hash = 2166136261u;
	for (size_t i = 0; i < length; i++) {
		hash = (hash ^ data[i]) * 16777619u;
	}
	return hash;
}

static inline void put_u16(unsigned char **at, uint16_t value)
{
	(*at)[0] = (unsigned char)(value & 0xff);
	(*at)[1] = (unsigned char)(value >> 8);
	*at += 2;
}

static inline void put_u32(unsigned char **at, uint32_t value)
{
	for (int i = 0; i < 4; i++) {
		(*at)[i] = (unsigned char)((value >> (8 * i)) & 0xff);
	}
	*at += 4;
}

static inline void put_bytes(unsigned char **at, const void *data, size_t length)
{
	memcpy(*at, data, length);
	*at += length;
}

static inline uint16_t get_u16(const unsigned char *at)
{
	return (uint16_t)(at[0] | (at[1] << 8));
}

static inline uint32_t get_u32(const unsigned char *at)
{
	return (uint32_t)at[0] | ((uint32_t)at[1] << 8) | ((uint32_t)at[2] << 16) | ((uint32_t)at[3] << 24);
}

/* A whole record (header and body) in a new malloc'd buffer of *size bytes; NULL when it
 * would not fit the format (a field too long, the record past MAX_RECORD_BYTES) or memory is
 * short. */
static inline unsigned char *encode_record(uint8_t qos, const char *topic, const struct journal_pair *pairs,
					   size_t pair_count, const void *payload, uint32_t payload_length,
					   size_t *size)
{
	size_t topic_length = strlen(topic), body = 1 + 2 + topic_length + 2 + 4;
	unsigned char *record, *at;

	if (topic_length > UINT16_MAX || pair_count > UINT16_MAX || payload_length > MAX_RECORD_BYTES) {
		return NULL;
	}
	body += payload_length;
	for (size_t i = 0; i < pair_count; i++) {
		if (pairs[i].name_length > UINT16_MAX || pairs[i].value_length > UINT16_MAX) {
			return NULL;
		}
		body += 4 + pairs[i].name_length + pairs[i].value_length;
		if (body > MAX_RECORD_BYTES) {
			return NULL;
		}
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
	put_u16(&at, (uint16_t)pair_count);
	for (size_t i = 0; i < pair_count; i++) {
		put_u16(&at, (uint16_t)pairs[i].name_length);
		put_bytes(&at, pairs[i].name, pairs[i].name_length);
		put_u16(&at, (uint16_t)pairs[i].value_length);
		put_bytes(&at, pairs[i].value, pairs[i].value_length);
	}
	put_u32(&at, payload_length);
	put_bytes(&at, payload, payload_length);
	at = record;
	put_u32(&at, RECORD_MAGIC);
	put_u32(&at, (uint32_t)body);
	put_u32(&at, record_checksum(record + HEADER_BYTES, body));
	*size = HEADER_BYTES + body;
	return record;
}

/* The length of the body of the whole, intact record at data[0..available), or 0 when there
 * is none there (cut short, not a record, checksum wrong). */
static inline uint32_t intact_record(const unsigned char *data, size_t available)
{
	uint32_t length;
	if (available < HEADER_BYTES || get_u32(data) != RECORD_MAGIC) {
		return 0;
	}
	length = get_u32(data + 4);
	if (length == 0 || length > MAX_RECORD_BYTES || available - HEADER_BYTES < length
	    || record_checksum(data + HEADER_BYTES, length) != get_u32(data + 8)) {
		return 0;
	}
	return length;
}

/* Read a body's fields; false if they do not add up to exactly `length` bytes. */
static inline bool decode_body(const unsigned char *body, uint32_t length, struct journal_body *out)
{
	const unsigned char *at = body, *end = body + length;
	if (end - at < 3) {
		return false;
	}
	out->qos = *at++;
	out->topic_length = get_u16(at);
	at += 2;
	if (end - at < (ptrdiff_t)out->topic_length + 2) {
		return false;
	}
	out->topic = (const char *)at;
	at += out->topic_length;
	out->pair_count = get_u16(at);
	at += 2;
	out->pairs = at;
	for (uint16_t i = 0; i < out->pair_count; i++) {
		for (int part = 0; part < 2; part++) {
			if (end - at < 2 || end - at < 2 + (ptrdiff_t)get_u16(at)) {
				return false;
			}
			at += 2 + get_u16(at);
		}
	}
	out->pairs_end = at;
	if (end - at < 4) {
		return false;
	}
	out->payload_length = get_u32(at);
	at += 4;
	if ((uint64_t)(end - at) != out->payload_length) {
		return false;
	}
	out->payload = at;
	return true;
}

/* The pair at *at (within a decoded body), and *at moved past it. */
static inline struct journal_pair record_next_pair(const unsigned char **at)
{
	struct journal_pair pair;
	pair.name_length = get_u16(*at);
	pair.name = (const char *)*at + 2;
	*at += 2 + pair.name_length;
	pair.value_length = get_u16(*at);
	pair.value = (const char *)*at + 2;
	*at += 2 + pair.value_length;
	return pair;
}

#endif
