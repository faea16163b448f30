/*
 * The version handshake every ehealthlab broker plugin answers the same way: it speaks
 * Mosquitto 2.0's plugin interface, version 5, and no other. Included once by each plugin's
 * source, which is built into its own shared object (ehealthlab/stack/plugin.py).
 */
#ifndef EHL_PLUGIN_VERSION_H
#define EHL_PLUGIN_VERSION_H

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++) {
		if (supported_versions[i] == 5) {
			return 5;
		}
	}
	return -1;
}

#endif
