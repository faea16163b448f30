"""Settings completed from the local stack, so every command works right after `stack up`.

What the environment leaves unset (the database URL, the broker and its admin, the patient
key) is taken from the stack's state file. Only the commands that manage the stack import
local.py; the others need just this.
"""

from __future__ import annotations

from pydantic import SecretStr

from ehealthlab.settings import Settings
from ehealthlab.stack.ports import LOOPBACK
from ehealthlab.stack.state_file import STATE_FILE, postgres_server, read_state, state_dir_of


def settings_with_stack(settings: Settings) -> Settings:
    """`settings` completed from the local stack's state file, for what the environment left
    unset, so `ehealthlab db migrate` works right after `ehealthlab stack up`.

    The broker's fields are taken only when EHEALTHLAB_MQTT_HOST is unset (an external broker
    does not get our admin password); without a state file the settings come back unchanged.
    """
    state = read_state(state_dir_of(settings) / STATE_FILE)
    if state is None:
        return settings
    update: dict[str, object] = {}
    if settings.database_url is None and state.postgresql is not None:
        update["database_url"] = SecretStr(postgres_server(state.postgresql).url())
    if settings.mqtt_host is None and state.mosquitto is not None:
        update["mqtt_host"] = LOOPBACK
        if settings.mqtt_port is None:
            update["mqtt_port"] = state.mosquitto.port
        if settings.mqtt_username is None:
            update["mqtt_username"] = state.mosquitto.admin_username
        if settings.mqtt_password is None:
            update["mqtt_password"] = SecretStr(state.mosquitto.admin_password)
    if settings.patient_key is None:
        update["patient_key"] = SecretStr(state.patient_key)
    return settings.model_copy(update=update)
