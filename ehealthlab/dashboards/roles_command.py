"""`ehealthlab dashboards roles ...`: the database roles Grafana's data sources log in as
(docs/dashboard-roles.md).

    ehealthlab dashboards roles create --organisation UUID | --lab
    ehealthlab dashboards roles rotate ROLE
    ehealthlab dashboards roles revoke ROLE | --organisation UUID
    ehealthlab dashboards roles list
    ehealthlab dashboards roles refresh

`create` and `rotate` print the role's password once; PostgreSQL keeps only its SCRAM hash.
The commands connect as EHEALTHLAB_DATABASE_URL's role, which must own the database, have
run the migrations and have CREATEROLE.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from ehealthlab.dashboards.roles import (
    STATEMENT_TIMEOUT,
    RoleCredentials,
    create_role,
    list_roles,
    refresh_grants,
    revoke_for_organisation,
    revoke_role,
    rotate_password,
)
from ehealthlab.settings import Settings
from ehealthlab.stack.stack_settings import settings_with_stack
from ehealthlab.store.db import connect


def register_roles(dashboards_subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `roles` to the subcommands of `ehealthlab dashboards`."""
    roles = dashboards_subparsers.add_parser(
        "roles",
        help="database roles for Grafana's data sources",
        description="Each provider's and start-up's Grafana organisation logs in as a "
        "database role of its own, which reads only its organisation's rows; operations and "
        "CMTo share the read-only lab role. No role can write. Run these as the role that "
        "owns the database, with CREATEROLE.",
    )
    commands = roles.add_subparsers(
        title="roles commands", dest="roles_command", required=True, metavar="COMMAND"
    )

    create = commands.add_parser(
        "create",
        help="create an organisation's role, or the lab role, and print its password once",
        description="Creates the role and prints its name and password, shown only this "
        "once, for the Grafana organisation's PostgreSQL data source.",
    )
    whose = create.add_mutually_exclusive_group(required=True)
    whose.add_argument("--organisation", type=uuid.UUID, metavar="UUID",
                       help="a health provider or start-up")  # fmt: skip
    whose.add_argument("--lab", action="store_true",
                       help="the read-only role of operations and CMTo")  # fmt: skip
    create.set_defaults(handler=run_create)

    rotate = commands.add_parser(
        "rotate",
        help="give a role a new password (printed once); the old one stops working",
    )
    rotate.add_argument("role", metavar="ROLE", help="the role's name (see `roles list`)")
    rotate.set_defaults(handler=run_rotate)

    revoke = commands.add_parser(
        "revoke",
        help="drop a role, or every role of an organisation (harmless when already gone)",
        description="Refuses new logins, takes every privilege, ends the role's sessions and "
        "drops it. With --organisation, also a role whose organisation was deleted already.",
    )
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("role", nargs="?", metavar="ROLE", help="the role's name")
    which.add_argument("--organisation", type=uuid.UUID, metavar="UUID",
                       help="every role of this organisation")  # fmt: skip
    revoke.set_defaults(handler=run_revoke)

    listing = commands.add_parser("list", help="the dashboard roles of this database")
    listing.set_defaults(handler=run_list)

    refresh = commands.add_parser(
        "refresh",
        help="grant every role the views its schema holds now (after a migration adds one)",
    )
    refresh.set_defaults(handler=run_refresh)


def run_create(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings_with_stack(settings), autocommit=True) as conn:
        credentials = create_role(conn, None if args.lab else args.organisation)
    print(credentials_text(credentials, created=True))
    return 0


def run_rotate(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings_with_stack(settings), autocommit=True) as conn:
        credentials = rotate_password(conn, args.role)
    print(credentials_text(credentials, created=False))
    return 0


def run_revoke(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings_with_stack(settings), autocommit=True) as conn:
        if args.organisation is not None:
            revoked = revoke_for_organisation(conn, args.organisation)
        else:
            revoked = [args.role] if revoke_role(conn, args.role) else []
    if revoked:
        for name in revoked:
            print(f"revoked {name}")
    else:
        print("nothing to revoke")
    return 0


def run_refresh(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings_with_stack(settings), autocommit=True) as conn:
        granted = refresh_grants(conn)
    print(f"granted the views of their schemas to {len(granted)} dashboard roles")
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    with connect(settings_with_stack(settings), autocommit=True) as conn:
        roles = list_roles(conn)
    if not roles:
        print("no dashboard roles")
        return 0
    rows = [("ROLE", "KIND", "ORGANISATION", "CREATED", "STATE")]
    for role in roles:
        if role.organisation_id is None:
            organisation = "-" if role.registered else "(deleted)"
        else:
            organisation = f"{role.organisation_name} ({role.organisation_id})"
        if not role.registered:
            state = "unregistered: revoke it"
        elif not role.exists:
            state = "missing: revoke, then create"
        else:
            state = "active" if role.can_login else "no login"
        created = role.created_at.strftime("%Y-%m-%d %H:%M") if role.created_at else "-"
        rows.append((role.role_name, role.kind, organisation, created, state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + row[-1])
    return 0


def credentials_text(credentials: RoleCredentials, *, created: bool) -> str:
    """What `create` and `rotate` print: the data source's fields, then how to use them."""
    c = credentials
    if c.organisation_id is None:
        whose = "the LAB (operations and CMTo)"
    else:
        whose = f"{c.kind} {c.organisation_name} ({c.organisation_id})"
    lines = [
        f"{'created' if created else 'new password for'} the dashboard role of {whose}",
        f"  database  {c.database}",
        f"  user      {c.role_name}",
        f"  password  {c.password}",
        "",
        "Put them in the PostgreSQL data source of its Grafana organisation (host and TLS as "
        "for the platform's own connection). The password is shown only this once; PostgreSQL "
        "keeps only its SCRAM hash: if it is lost, `ehealthlab dashboards roles rotate "
        f"{c.role_name}` gives a new one.",
        f"Set the data source's maximum open connections to {c.connection_limit} at most (the "
        f"role's connection limit). Its queries read the views of {c.schema} (on its "
        f"search_path), read-only, {STATEMENT_TIMEOUT} at most each.",
    ]
    lines += [f"warning: {w}" for w in c.warnings]
    return "\n".join(lines)
