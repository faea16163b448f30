/*
 * The segment files of ehl_journal (ehl_journal.c): naming, listing, whole writes and whole
 * reads. A segment is named ehl-journal-<start, ms since the epoch, 16 digits>.log, so that
 * names sort in the order the segments were started. The includer defines _GNU_SOURCE
 * (asprintf, strndup) before any header.
 */
#ifndef EHL_JOURNAL_FILES_H
#define EHL_JOURNAL_FILES_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEGMENT_PREFIX "ehl-journal-"
#define SEGMENT_SUFFIX ".log"
#define SEGMENT_NAME_BYTES 64

static inline char *segment_path(const char *dir, const char *name)
{
	char *path = NULL;
	if (asprintf(&path, "%s/%s", dir, name) < 0) {
		return NULL;
	}
	return path;
}

static inline void remove_segment(const char *dir, const char *name)
{
	char *path = segment_path(dir, name);
	if (path != NULL) {
		unlink(path);
		free(path);
	}
}

static inline bool is_segment_name(const char *name)
{
	size_t length = strlen(name), prefix = strlen(SEGMENT_PREFIX), suffix = strlen(SEGMENT_SUFFIX);
	return length > prefix + suffix && length < SEGMENT_NAME_BYTES
	       && strncmp(name, SEGMENT_PREFIX, prefix) == 0 && strcmp(name + length - suffix, SEGMENT_SUFFIX) == 0;
}

static inline int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The journal's segment file names, oldest first (names sort by start time). */
static inline char **list_segments(const char *directory, size_t *count)
{
	DIR *dir = opendir(directory);
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

static inline void free_names(char **names, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		free(names[i]);
	}
	free(names);
}

static inline int64_t segment_start_of(const char *name)
{
	return strtoll(name + strlen(SEGMENT_PREFIX), NULL, 10);
}

static inline int write_all(int fd, const unsigned char *data, size_t length)
{
	while (length > 0) {
		ssize_t written = write(fd, data, length);
		if (written <= 0) {
			if (written < 0 && errno == EINTR) {
				continue;
			}
			if (written == 0) {
				errno = EIO;
			}
			return -1;
		}
		data += written;
		length -= (size_t)written;
	}
	return 0;
}

/* The whole file, or NULL (a file that cannot be read whole is not read at all). */
static inline unsigned char *read_file(const char *path, size_t *size)
{
	struct stat info;
	unsigned char *data;
	size_t done = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	*size = 0;
	if (fd < 0) {
		return NULL;
	}
	if (fstat(fd, &info) != 0) {
		close(fd);
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
	if (data != NULL && done != (size_t)info.st_size) {
		free(data);
		return NULL;
	}
	*size = done;
	return data;
}

#endif
