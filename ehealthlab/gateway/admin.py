"""`ehealthlab admin ...`: the operator's first token, and tokens by hand.

`bootstrap` is how a new platform gets its first credential: it creates the operator
organisation (CMTo) when missing and prints a new operator token each run, so a lost token
is replaced by running it again (and revoking the old one with `admin token revoke`).
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from ehealthlab.errors import NotFoundError
from ehealthlab.gateway import organisation_registry, token_registry
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.store.db import connect


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    admin = subparsers.add_parser(
        "admin",
        help="operator organisation and API tokens",
        description="Administration that needs the database, not the API: the operator's "
        "first token, and creating or revoking API tokens.",
    )
    commands = admin.add_subparsers(
        title="admin commands", dest="admin_command", required=True, metavar="COMMAND"
    )

    bootstrap = commands.add_parser(
        "bootstrap",
        help="create the operator organisation if missing and print a new operator token",
        description='Creates the operator organisation "CMTo" when it does not exist and '
        'prints {"organisation_id": ..., "token": ...} with a new operator token (admin '
        "role). Each run adds a token; revoke old ones with `ehealthlab admin token revoke`.",
    )
    bootstrap.set_defaults(handler=run_bootstrap)

    token = commands.add_parser("token", help="create or revoke API tokens")
    token_commands = token.add_subparsers(
        title="token commands", dest="token_command", metavar="COMMAND", required=True
    )
    create = token_commands.add_parser(
        "create",
        help="print a new API token for an organisation",
        description='Prints {"organisation_id", "token_id", "token"}; the token is shown once.',
    )
    create.add_argument("--organisation", type=uuid.UUID, required=True, metavar="ID",
                        help="the organisation's id")  # fmt: skip
    create.add_argument("--role", choices=("admin", "member"), default="admin")
    create.add_argument("--label", default="", help="a note to tell tokens apart")
    create.set_defaults(handler=run_token_create)

    revoke = token_commands.add_parser(
        "revoke",
        help="revoke an API token (harmless when already revoked)",
        description="The token stops working at once.",
    )
    revoke.add_argument("token_id", type=uuid.UUID, metavar="TOKEN_ID")
    revoke.set_defaults(handler=run_token_revoke)


def run_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    _print(bootstrap_operator(settings_with_stack(settings)))
    return 0


def bootstrap_operator(settings: Settings) -> dict[str, str]:
    """The operator organisation (CMTo), created if missing, and a new admin token for it."""
    with connect(settings) as conn, conn.transaction():
        # serialise concurrent bootstraps, so two runs never race to create CMTo
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('ehl_admin_bootstrap'))")
        operator = organisation_registry.find_organisation(
            conn, "operator", organisation_registry.OPERATOR_NAME
        )
        if operator is None:
            operator = organisation_registry.create_organisation(
                conn, "operator", organisation_registry.OPERATOR_NAME
            )
        row, token = token_registry.create_token(conn, operator.id, "admin", "admin bootstrap")
    return {"organisation_id": str(operator.id), "token_id": str(row.id), "token": token}


def run_token_create(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings_with_stack(settings)
    with connect(settings) as conn, conn.transaction():
        if organisation_registry.get_organisation(conn, args.organisation) is None:
            raise NotFoundError(f"no organisation {args.organisation}")
        row, token = token_registry.create_token(conn, args.organisation, args.role, args.label)
    _print({"organisation_id": str(row.organisation_id), "token_id": str(row.id),
            "token": token})  # fmt: skip
    return 0


def run_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings_with_stack(settings)
    with connect(settings) as conn, conn.transaction():
        if not token_registry.revoke_token(conn, args.token_id):
            raise NotFoundError(f"no API token {args.token_id}")
    _print({"token_id": str(args.token_id), "revoked": True})
    return 0


def _print(document: dict[str, str] | dict[str, object]) -> None:
    print(json.dumps(document))
