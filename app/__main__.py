"""``python -m app``: serve, migrate, manage users, export and import logs, read the leaderboard.

Every subcommand reads the same settings (``CHAT_*`` env vars, see README), so the
admin CLI and the running server always look at the same database.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import io
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from app.accounts import user_admin
from app.accounts.passwords import WeakPassword
from app.config import Settings
from app.migrate import upgrade
from app.services.arena import ArenaService
from app.services.arena_report import (
    leaderboard_json,
    leaderboard_table,
    parse_since,
    write_battle_pairs,
    write_battles,
)
from app.services.export_formats import FORMATS, import_json, write_export
from storage.database import Database
from storage.errors import StorageError
from storage.repository import Repository


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--database-url", help="overrides CHAT_DATABASE_URL")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the chat server")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 7860)")
    serve.add_argument("--model", help="'smollm2' (default), a model folder, or a cached hub id")
    serve.add_argument("--engine-url", help="generate on this inference server (overrides CHAT_ENGINE_URL)")
    serve.add_argument("--engine-protocol", choices=["llamacpp", "openai"],
                       help="its wire format (overrides CHAT_ENGINE_PROTOCOL)")

    commands.add_parser("migrate", help="upgrade the database schema to the newest version")
    commands.add_parser("models", help="list the models the server offers (CHAT_MODELS) and whether each answers")

    users = commands.add_parser("users", help="manage tester accounts")
    user_commands = users.add_subparsers(dest="users_command", required=True)
    add = user_commands.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may export everyone's chats")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    user_commands.add_parser("list", help="list users")
    set_password = user_commands.add_parser("set-password", help="change a user's password")
    set_password.add_argument("name")
    set_password.add_argument("--password-stdin", action="store_true")
    remove = user_commands.add_parser("remove", help="delete a user and all their chats")
    remove.add_argument("name")

    export = commands.add_parser("export", help="write conversation logs to a file")
    who = export.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="export this user's chats")
    who.add_argument("--all-users", action="store_true", help="export every user's chats")
    export.add_argument("--conversation", help="only this conversation id (with --user)")
    export.add_argument("--format", choices=(*FORMATS, "battles"), default="json",
                        help="battles: one JSON line per blind-battle vote (FastChat's clean-battle fields)")
    export.add_argument("--out", required=True, help="output file ('-' for stdout)")
    export.add_argument("--token-ids", action="store_true", help="include token ids (JSON)")

    importer = commands.add_parser("import", help="restore conversations from a JSON export")
    importer.add_argument("path")
    importer.add_argument("--user", help="import everything as this user")

    board = commands.add_parser("leaderboard", help="rank the models by the team's blind-battle votes")
    board.add_argument("--format", choices=["table", "json"], default="table")
    board.add_argument("--since", help="only votes from this date on (YYYY-MM-DD, UTC)")
    return parser


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise SystemExit("passwords differ; nothing changed")
    return first


async def run_users(args: argparse.Namespace, repository: Repository) -> None:
    if args.users_command == "list":
        for user in await repository.list_users():
            role = "admin" if user.is_admin else "tester"
            print(f"{user.username}\t{role}\tsince {user.created_at:%Y-%m-%d}")
    elif args.users_command == "add":
        password = read_password(args.password_stdin)
        await user_admin.add_user(repository, user_admin.CLI_ACTOR, args.name, password, admin=args.admin)
        print(f"added {'admin' if args.admin else 'user'} {args.name}")
    elif args.users_command == "set-password":
        password = read_password(args.password_stdin)
        await user_admin.reset_password(repository, user_admin.CLI_ACTOR, args.name, password)
        print(f"password changed for {args.name}")
    elif args.users_command == "remove":
        await user_admin.remove_user(repository, user_admin.CLI_ACTOR, args.name)
        print(f"removed {args.name} and their conversations")


async def run_export(args: argparse.Namespace, repository: Repository) -> None:
    if args.conversation and not args.user:
        raise SystemExit("--conversation needs --user (whose conversation it is)")
    user_id = None if args.all_users else (await repository.get_user(args.user)).id
    if args.format == "battles":
        await run_battles_export(args, repository, user_id)
        return
    conversations = repository.iter_conversations(user_id, args.conversation)
    # decisive blind-battle votes are preference pairs too (not when one chat is asked for)
    battles = [] if args.format != "preferences" or args.conversation else (
        await repository.all_battles() if user_id is None else await repository.list_battles(user_id)
    )
    pairs = 0
    if args.out == "-":
        count = await write_export(conversations, sys.stdout, args.format, include_token_ids=args.token_ids)
        pairs = write_battle_pairs(battles, sys.stdout)
    else:
        out_path = Path(args.out)
        partial = out_path.with_name(out_path.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8") as out:
                count = await write_export(conversations, out, args.format, include_token_ids=args.token_ids)
                pairs = write_battle_pairs(battles, out)
            partial.replace(out_path)
        except BaseException:
            partial.unlink(missing_ok=True)  # no half-written file left behind on an error
            raise
    battle_note = f" and {pairs} battle vote pair(s)" if battles else ""
    print(f"exported {count} conversation(s){battle_note} as {args.format} to {args.out}", file=sys.stderr)


async def run_battles_export(args: argparse.Namespace, repository: Repository, user_id: int | None) -> None:
    battles = await repository.all_battles() if user_id is None else await repository.list_battles(user_id)
    lines = io.StringIO()
    count = write_battles(battles, lines)
    if args.out == "-":
        sys.stdout.write(lines.getvalue())
    else:
        await asyncio.to_thread(Path(args.out).write_text, lines.getvalue(), encoding="utf-8")
    print(f"exported {count} battle vote(s) to {args.out}", file=sys.stderr)


async def run_leaderboard(args: argparse.Namespace, repository: Repository) -> None:
    try:
        since = parse_since(args.since)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    view = await ArenaService(repository, []).leaderboard(since)
    if args.format == "json":
        print(json.dumps(leaderboard_json(view), indent=2))
    else:
        print(leaderboard_table(view))


async def run_import(args: argparse.Namespace, repository: Repository) -> None:
    text = await asyncio.to_thread(Path(args.path).read_text, encoding="utf-8")
    count = await import_json(repository, text, as_user=args.user)
    print(f"imported {count} conversation(s)")


async def run_storage_command(args: argparse.Namespace, settings: Settings) -> None:
    database = Database(settings.database_url)
    try:
        repository = Repository(database)
        if args.command == "users":
            await run_users(args, repository)
        elif args.command == "export":
            await run_export(args, repository)
        elif args.command == "import":
            await run_import(args, repository)
        elif args.command == "leaderboard":
            await run_leaderboard(args, repository)
    finally:
        await database.dispose()


def run_models(settings: Settings) -> int:
    """``python -m app models``: the registry, one line per entry; a bad file is one sentence and exit 2."""
    from app.models_cli import registry_table
    from app.models_registry import RegistryError, registry_from_settings

    try:
        registry = registry_from_settings(settings)
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(registry_table(registry, settings)))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    if args.database_url:
        settings = replace(settings, database_url=args.database_url)
    if args.command == "serve":
        settings = replace(
            settings,
            host=args.host or settings.host,
            port=args.port or settings.port,
            model=args.model or settings.model,
            engine_url=args.engine_url or settings.engine_url,
            engine_protocol=args.engine_protocol or settings.engine_protocol,
        )
        from app.web.server import serve

        return serve(settings)
    if args.command == "models":
        return run_models(settings)
    upgrade(settings.database_url)
    if args.command == "migrate":
        print("database is at the newest schema")
        return 0
    try:
        asyncio.run(run_storage_command(args, settings))
    except (StorageError, WeakPassword) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
