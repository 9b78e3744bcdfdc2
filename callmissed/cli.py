"""The `callmissed` command: serve, keys create|list|revoke, config check."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

from callmissed import __version__
from callmissed.auth import create_key
from callmissed.settings import Settings, SettingsError, load_settings
from callmissed.store import open_store

__all__ = ["main"]

MICRO = 1_000_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    _export_options(args)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"callmissed: {exc}", file=sys.stderr)
        return 2
    result: int = args.run(settings, args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callmissed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"callmissed {__version__}")
    parser.add_argument("--config", help="TOML file with providers and models (CALLMISSED_CONFIG)")
    parser.add_argument("--database-url", help="sqlite:///path (CALLMISSED_DATABASE_URL)")
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to bind (CALLMISSED_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (CALLMISSED_PORT, default 8080)")
    serve.add_argument("--workers", type=int, help="worker processes (CALLMISSED_WORKERS)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS with HTTP/2 via ALPN")
    serve.add_argument("--tls-key", help="PEM private key (PKCS#8) for --tls-cert")
    serve.add_argument("--config", dest="config_sub", help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(title="actions")
    create = keys.add_parser("create", help="create a key; the key is printed once, last")
    create.add_argument("--name", required=True)
    create.add_argument("--credits", help="starting balance in USD (default: unlimited)")
    create.set_defaults(run=_keys_create)
    keys.add_parser("list", help="list keys (never the keys themselves)").set_defaults(
        run=_keys_list
    )
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=int)
    revoke.set_defaults(run=_keys_revoke)

    doctor = commands.add_parser(
        "doctor", help="check the store, every upstream's reachability and each hop's latency"
    )
    doctor.add_argument("--url", help="also check a running gateway, e.g. http://127.0.0.1:8080")
    doctor.add_argument("--key", help="a cm_ key for the gateway check's streamed request")
    doctor.set_defaults(run=_doctor)

    bench = commands.add_parser("bench", help="time streamed requests through a running gateway")
    bench.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    bench.add_argument("--key", required=True, help="a cm_ key")
    bench.add_argument("--model", default="sim/instant")
    bench.add_argument("-n", "--requests", type=int, default=100)
    bench.add_argument("-c", "--concurrency", type=int, default=1)
    bench.add_argument("--prompt", default="Explain quicksort in one paragraph.")
    bench.add_argument("--max-tokens", type=int)
    bench.add_argument("--direct-url", help="an OpenAI-compatible upstream's /v1 URL to compare")
    bench.add_argument("--direct-key", default="", help="its API key")
    bench.add_argument("--direct-model", help="its model id (default: --model)")
    bench.set_defaults(run=_bench)

    config = commands.add_parser("config", help="configuration").add_subparsers(title="actions")
    config.add_parser("check", help="validate settings and the config file").set_defaults(
        run=_config_check
    )
    return parser


def _export_options(args: argparse.Namespace) -> None:
    """CLI options become the CALLMISSED_* variables every worker process reads."""
    options = {
        "CALLMISSED_CONFIG": getattr(args, "config_sub", None) or args.config,
        "CALLMISSED_DATABASE_URL": args.database_url,
        "CALLMISSED_HOST": getattr(args, "host", None),
        "CALLMISSED_PORT": getattr(args, "port", None),
        "CALLMISSED_WORKERS": getattr(args, "workers", None),
        "CALLMISSED_TLS_CERT": getattr(args, "tls_cert", None),
        "CALLMISSED_TLS_KEY": getattr(args, "tls_key", None),
    }
    for name, value in options.items():
        if value is not None:
            os.environ[name] = str(value)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    store = open_store(settings.database_url)
    if not store.list_keys():
        key, _ = create_key(store, "first key")
        print("Created your first API key (shown once, store it now):", flush=True)
        print(f"  {key}", flush=True)
    store.close()
    tls = bool(settings.tls_cert and settings.tls_key)
    scheme = "https" if tls else "http"
    print(
        f"CallMissed {__version__} on {scheme}://{settings.host}:{settings.port}/v1 "
        f"(HTTP/1.1 and HTTP/2{'' if tls else ' prior knowledge'}), "
        f"{len(settings.models)} models",
        flush=True,
    )
    server = Granian(
        "callmissed.app:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        http=HTTPModes.auto,
        loop=Loops.uvloop,
        backlog=2048,
        log_access=False,
        ssl_cert=Path(settings.tls_cert) if settings.tls_cert and tls else None,
        ssl_key=Path(settings.tls_key) if settings.tls_key and tls else None,
    )
    server.serve()
    return 0


def _keys_create(settings: Settings, args: argparse.Namespace) -> int:
    credits = _micro_credits(args.credits) if args.credits is not None else None
    store = open_store(settings.database_url)
    key, record = create_key(store, args.name, credits)
    store.close()
    balance = "unlimited" if credits is None else f"${Decimal(credits) / MICRO}"
    print(f"Created key {record.id} ({record.name}), credits {balance}. It is shown only once:")
    print(key)
    return 0


def _keys_list(settings: Settings, args: argparse.Namespace) -> int:
    store = open_store(settings.database_url)
    for record in store.list_keys():
        state = "active" if record.active else "revoked"
        credits = "unlimited" if record.credits is None else f"${Decimal(record.credits) / MICRO}"
        print(f"{record.id}\t{record.key_prefix}…\t{record.name}\t{credits}\t{state}")
    store.close()
    return 0


def _keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    store = open_store(settings.database_url)
    revoked = store.revoke_key(args.key_id)
    store.close()
    if not revoked:
        print(f"callmissed: no active key with id {args.key_id}", file=sys.stderr)
        return 1
    print(f"Revoked key {args.key_id}.")
    return 0


def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from callmissed.doctor import run_doctor

    checks = asyncio.run(run_doctor(settings, args.url, args.key))
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    return 0 if all(check.ok for check in checks) else 1


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from callmissed.bench import Target, format_report, run_bench

    targets = [Target("callmissed", f"{args.url.rstrip('/')}/v1", args.key, args.model)]
    if args.direct_url:
        model = args.direct_model or args.model
        targets.append(Target("direct", args.direct_url, args.direct_key, model))
    results = asyncio.run(
        run_bench(targets, args.requests, args.concurrency, args.prompt, args.max_tokens)
    )
    print(format_report(results))
    return 0 if all(not result.errors for result in results) else 1


def _config_check(settings: Settings, args: argparse.Namespace) -> int:
    for provider in settings.providers.values():
        state = provider.missing or "configured"
        print(f"provider {provider.name} ({provider.type}): {state}")
    print(f"{len(settings.models)} models; configuration is valid.")
    return 0


def _micro_credits(text: str) -> int:
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise SystemExit(f"callmissed: --credits must be a number of USD, got {text!r}") from None
    if amount < 0:
        raise SystemExit("callmissed: --credits must not be negative")
    return int(amount * MICRO)
