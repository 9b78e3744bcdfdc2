"""The `callmissed` command: serve, keys create|list|show|update|revoke|topup, config check."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import orjson

from callmissed import __version__
from callmissed.accounting.keys import UNCHANGED, KeyAdmin
from callmissed.accounting.pricing import MICRO, parse_credits
from callmissed.errors import GatewayError
from callmissed.settings import Settings, SettingsError, load_settings
from callmissed.store import KeyPolicy, KeyRecord, open_store
from callmissed.store.budget import LIMIT_RESETS

__all__ = ["FIRST_KEY_FILE", "first_key_path", "main"]

FIRST_KEY_FILE = "callmissed-first-key"


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

    _add_key_commands(commands)

    doctor = commands.add_parser(
        "doctor",
        help="check the store, every upstream, and (--url, --key) a gateway against the "
        "Getting Started checklist",
    )
    doctor.add_argument("--url", help="also check a running gateway, e.g. http://127.0.0.1:8080")
    doctor.add_argument("--key", help="a cm_ key: run the checklist against the gateway")
    doctor.add_argument("--model", default="gpt-oss-120b", help="the model to check")
    doctor.add_argument("--kimi-model", default="kimi-k2.6", help='for reasoning_effort "none"')
    doctor.add_argument("--ca-file", help="PEM CA certificates to trust for an https gateway")
    doctor.set_defaults(run=_doctor)

    _add_bench_command(commands)

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
    from granian.http import HTTP1Settings, HTTP2Settings

    from callmissed.accounting.ratelimit import limits_warning
    from callmissed.shutdown import SERVER_PID_ENV

    in_use = _port_in_use(settings.host, settings.port)
    if in_use:
        print(f"callmissed: {in_use}", file=sys.stderr)
        return 1
    if _with_store(settings, _first_key, first_key_path(settings)):
        return 1
    tls = bool(settings.tls_cert and settings.tls_key)
    scheme = "https" if tls else "http"
    print(
        f"CallMissed {__version__} on {scheme}://{settings.host}:{settings.port}/v1 "
        f"(HTTP/1.1 and HTTP/2{'' if tls else ' prior knowledge'}), "
        f"{len(settings.models)} models, {settings.workers} worker(s)",
        flush=True,
    )
    warning = limits_warning(settings)
    if warning:
        print(f"callmissed: warning: {warning}", file=sys.stderr, flush=True)
    os.environ[SERVER_PID_ENV] = str(os.getpid())  # whose workers these are (shutdown.py)
    limits = settings.edge
    _raise_open_files(limits.max_connections)
    server = Granian(
        "callmissed.app:create_rsgi_app",  # granian's native interface: docs/performance.md
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        workers=settings.workers,
        http=HTTPModes.auto,
        loop=Loops.uvloop,
        backlog=2048,
        # Every limit granian takes, set from settings.edge (docs/security.md); rsgi.py and
        # connections.py keep the ones it lacks.
        backpressure=limits.max_connections,  # connections per worker (a semaphore per accept)
        http1_settings=HTTP1Settings(
            header_read_timeout=round(limits.header_timeout * 1000),  # and a kept-alive wait
            max_buffer_size=limits.max_header_bytes,  # a longer head gets 431
        ),
        http2_settings=HTTP2Settings(
            max_concurrent_streams=limits.h2_max_streams,
            max_headers_size=limits.max_header_bytes,  # a larger header list gets 431
        ),
        # A worker that dies is started again; its successor replays the dead one's journal at
        # start-up, like any restart (docs/credits.md, Crashes). granian stops the server
        # instead if workers keep dying within seconds of being respawned.
        respawn_failed_workers=True,
        log_access=False,
        ssl_cert=Path(settings.tls_cert) if settings.tls_cert and tls else None,
        ssl_key=Path(settings.tls_key) if settings.tls_key and tls else None,
    )
    server.serve()
    return 0


def _port_in_use(host: str, port: int) -> str | None:
    """Why `host:port` cannot be served, if something listens on it already. granian binds with
    SO_REUSEPORT, so without this check a second gateway would share the port with the first,
    each answering some of the requests."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"{host}:{port} is already in use (another `callmissed serve`?)"
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _raise_open_files(connections: int) -> None:
    """Let each worker hold `connections` sockets and its own (store, upstreams, journals):
    the soft limit is often 1,024. Raised up to the hard limit; past that, a warning."""
    import resource

    needed = connections + _OWN_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(
            f"callmissed: warning: {soft} open files allowed, {needed} needed for "
            f"CALLMISSED_MAX_CONNECTIONS={connections}; raise the hard limit (ulimit -Hn)",
            file=sys.stderr,
            flush=True,
        )


_OWN_FILES = 256  # a worker's files besides client connections: upstream pools, store, peers


def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from callmissed.doctor import GatewayOptions, run_doctor

    gateway = None
    if args.url:
        gateway = GatewayOptions(args.url, args.key, args.model, args.kimi_model, args.ca_file)
    checks = asyncio.run(run_doctor(settings, gateway))
    for check in checks:
        print(f"{check.status:<4}  {check.name}: {check.detail}", flush=True)
    return 0 if all(check.ok for check in checks) else 1


def _add_bench_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench", help="the Getting Started page's latency tables, measured through a gateway"
    )
    bench.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    bench.add_argument("--key", required=True, help="a cm_ key")
    bench.add_argument(
        "--model", action="append", help="a model to measure; repeat it (default: sim/instant)"
    )
    bench.add_argument("-n", "--requests", type=_positive, default=5, help="per model and way")
    bench.add_argument(
        "--vary",
        default="stream,connection,http",
        help="what to change, one at a time, from streamed + reused + HTTP/2: any of "
        "stream,connection,http, or none",
    )
    bench.add_argument("--prompt", default="Explain quicksort in one paragraph.")
    bench.add_argument("--max-tokens", type=_positive)
    bench.add_argument("--ca-file", help="PEM CA certificates to trust for an https gateway")
    bench.add_argument("--json", dest="json_file", help="write every number to this file")
    bench.add_argument("--chart", help="draw the table to this PNG (needs the bench extra)")
    bench.add_argument("--direct-url", help="an OpenAI-compatible upstream's /v1 URL to compare")
    bench.add_argument("--direct-key", default="", help="its API key")
    bench.add_argument("--direct-model", help="its model id (default: each --model)")
    bench.set_defaults(run=_bench)


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from callmissed.bench import VARIES, Plan, format_table, run_bench, to_json, variants

    vary = {word.strip() for word in args.vary.split(",") if word.strip() not in ("", "none")}
    if vary - set(VARIES):
        print(f"callmissed: --vary takes {', '.join(VARIES)} or none", file=sys.stderr)
        return 2
    if args.chart:
        from callmissed.bench_chart import require_matplotlib

        if (missing := require_matplotlib()) is not None:
            print(f"callmissed: {missing}", file=sys.stderr)
            return 2
    models = args.model or ["sim/instant"]
    plan = Plan(f"{args.url.rstrip('/')}/v1", args.key, models, args.requests, args.prompt,
                args.max_tokens, variants(vary), args.ca_file)  # fmt: skip
    plans = [plan]
    if args.direct_url:
        direct = [args.direct_model] if args.direct_model else models
        ways = plan.ways
        if not args.direct_url.startswith("https://"):  # few upstreams speak h2c: HTTP/1.1
            ways = list(dict.fromkeys(replace(way, http2=False) for way in ways))
        plans.append(replace(plan, base_url=args.direct_url, key=args.direct_key,
                             models=direct, ways=ways, system="direct"))  # fmt: skip
    rows = [row for each in plans for row in asyncio.run(run_bench(each, _progress))]
    print(format_table(rows), flush=True)
    if args.json_file:
        Path(args.json_file).write_bytes(
            orjson.dumps(to_json(rows, plan), option=orjson.OPT_INDENT_2)
        )
    if args.chart:
        from callmissed.bench_chart import draw_chart

        draw_chart(rows, Path(args.chart), f"callmissed bench: {args.url}")
    _leave_now(0 if all(not row.errors for row in rows) else 1)


def _leave_now(code: int) -> NoReturn:
    """Exit without the interpreter's finalisation, everything written and flushed: pyreqwest's
    tokio threads may still drop a Python object while it runs, which aborts the process
    (SIGABRT, seen once in the test suite after a run that had gone well)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _progress(text: str) -> None:
    """A line per model and way; on a terminal, each request too (overwritten in place)."""
    terminal = sys.stderr.isatty()
    if not text.startswith(" "):
        print(f"{chr(13) if terminal else ''}bench: {text:<70}", file=sys.stderr, flush=True)
    elif terminal:
        print(f"\r{text}", end="", file=sys.stderr, flush=True)


def _config_check(settings: Settings, args: argparse.Namespace) -> int:
    for provider in settings.providers.values():
        state = provider.missing or "configured"
        print(f"provider {provider.name} ({provider.type}): {state}")
    from callmissed.observe import traces_status

    access_log = settings.observability.access_log
    print(f"access log: {'off' if access_log == 'off' else access_log}")
    print(traces_status(settings.observability))
    print(f"{len(settings.models)} models; configuration is valid.")
    return 0


# Keys: the same store the gateway uses, so changes apply to its next request (docs/credits.md).


def _add_key_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(title="actions")
    create = keys.add_parser("create", help="create a key; the key is printed once, last")
    create.add_argument("--name", default="key", help="a label for the key")
    create.add_argument("--credits", help="starting balance in USD (default: unlimited)")
    create.add_argument(
        "--limit-reset",
        choices=LIMIT_RESETS,
        help="the credits are a limit that starts afresh every UTC day, week (Monday) or month",
    )
    create.add_argument("--rpm", type=_positive, help="requests per minute")
    create.add_argument("--tpm", type=_positive, help="tokens per minute")
    create.add_argument("--max-concurrent", type=_positive, help="requests in flight at once")
    create.add_argument("--models", help="comma-separated models the key may use (default: all)")
    create.set_defaults(run=_on_store(_keys_create))
    update = keys.add_parser("update", help="change a key's limit reset, limits or models")
    update.add_argument("key_id", type=_key_id)
    update.add_argument(
        "--limit-reset",
        choices=[*LIMIT_RESETS, "none"],
        help="reset the credit limit every UTC day, week or month; none: never again",
    )
    for option, what in (("--rpm", "requests per minute"), ("--tpm", "tokens per minute")):
        update.add_argument(option, type=_positive_or_none, help=f"{what}; none: no limit")
    update.add_argument(
        "--max-concurrent", type=_positive_or_none, help="requests in flight at once; none"
    )
    update.add_argument("--models", help="comma-separated models the key may use; none: all")
    update.set_defaults(run=_on_store(_keys_update))
    keys.add_parser("list", help="list keys (never the keys themselves)").set_defaults(
        run=_on_store(_keys_list)
    )
    show = keys.add_parser("show", help="a key's balance, limits and latest requests")
    show.add_argument("key_id", type=_key_id)
    show.set_defaults(run=_on_store(_keys_show))
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=_key_id)
    revoke.set_defaults(run=_on_store(_keys_revoke))
    topup = keys.add_parser("topup", help="add credits (USD) to a key")
    topup.add_argument("key_id", type=_key_id)
    topup.add_argument("credits")
    topup.set_defaults(run=_on_store(_keys_topup))


def first_key_path(settings: Settings) -> Path:
    """Where `serve` writes the first key when its output is no terminal: beside the SQLite
    database, or in the working directory (PostgreSQL)."""
    url = settings.database_url
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://").removeprefix("/")
        if path not in ("", ":memory:"):
            return (Path(path).parent / FIRST_KEY_FILE).absolute()
    return Path(FIRST_KEY_FILE).absolute()


async def _first_key(keys: KeyAdmin, path: Path) -> int:
    """An unlimited key for a new database. On a terminal it is shown; anywhere else (a
    container's or a service manager's log keeps what it is given) it goes to a file only
    this user can read, and the log gets the file's path."""
    if await keys.list_keys():
        return 0
    key, record = await keys.create("first key")
    if sys.stdout.isatty():
        print("Created your first API key (unlimited; shown once, store it now):", flush=True)
        print(f"  {key}", flush=True)
        return 0
    try:
        _write_private(path, f"{key}\n")
    except OSError as exc:
        await keys.revoke(record.id)
        print(
            f"callmissed: could not write the first key to {path} ({exc.strerror}); "
            "create one with `callmissed keys create`",
            file=sys.stderr,
        )
        return 1
    print(
        f"Created your first API key (unlimited). It is in {path}, "
        "readable only by this user: store it, then delete the file.",
        flush=True,
    )
    return 0


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by this user alone (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)  # a file that was there already keeps its old mode otherwise
        file.write(text)


def _with_store(
    settings: Settings, run: Callable[[KeyAdmin, Any], Awaitable[int]], args: Any = None
) -> int:
    async def main() -> int:
        store = open_store(settings.database_url)
        await store.start()
        try:
            return await run(KeyAdmin(store), args)
        except GatewayError as exc:  # a refusal (accounting/keys.py), as the admin API's
            print(f"callmissed: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await store.close()

    return asyncio.run(main())


def _on_store(run: Callable[[KeyAdmin, Any], Awaitable[int]]) -> Callable[[Settings, Any], int]:
    """A key command: `run(keys, args)` with the store open, in an event loop; the same key
    administration as the admin API's (accounting/keys.py)."""
    return lambda settings, args: _with_store(settings, run, args)


async def _keys_create(keys: KeyAdmin, args: argparse.Namespace) -> int:
    credits = _credits(args.credits) if args.credits is not None else None
    if args.limit_reset is not None and credits is None:
        raise SystemExit("callmissed: --limit-reset needs --credits: the limit that resets")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
    policy = KeyPolicy(args.rpm, args.tpm, args.max_concurrent, models)
    key, record = await keys.create(args.name, credits, policy, args.limit_reset)
    print(f"Created key {record.id} ({record.name}): {_summary(record)}. It is shown only once:")
    print(key)
    return 0


async def _keys_list(keys: KeyAdmin, args: argparse.Namespace) -> int:
    for record in await keys.list_keys():
        state = "active" if record.active else "revoked"
        print(f"{record.id}\t{record.key_prefix}…\t{record.name}\t{_usd(record.credits)}\t{state}")
    return 0


async def _keys_show(keys: KeyAdmin, args: argparse.Namespace) -> int:
    record = await keys.get(args.key_id)
    state = "active" if record.active else "revoked"
    print(f"key {record.id} ({record.name}, {record.key_prefix}…): {state}")
    print(f"  {_summary(record)}")
    print(f"  granted {_usd(record.granted)}, spent {_usd(record.spent)}")
    if record.limit_reset is not None and record.window_start is not None:
        start = datetime.fromtimestamp(record.window_start, UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(f"  this window (since {start}): spent {_usd(record.window_spent)}")
    for row in await keys.usage(record.id, 10):
        upstream_id = row.get("upstream_id")  # the upstream's own id: check the bill with it
        print(
            f"  {row['request_id']}  {row['model']}  {row['status']}  "
            f"{row['prompt_tokens']}+{row['completion_tokens']} tokens  {_usd(row['cost'])}"
            + (f"  {upstream_id}" if upstream_id else "")
        )
    return 0


async def _keys_update(keys: KeyAdmin, args: argparse.Namespace) -> int:
    record = await keys.get(args.key_id)
    limit_reset: Any = UNCHANGED
    if args.limit_reset is not None:
        limit_reset = None if args.limit_reset == "none" else args.limit_reset
    changes = {
        name: value
        for name, value in (
            ("rpm", args.rpm), ("tpm", args.tpm), ("max_concurrent", args.max_concurrent),
        )
        if value is not None
    }  # fmt: skip
    if args.models is not None:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
        changes["models"] = None if args.models == "none" else models
    policy = None
    if changes:
        policy = dataclasses.replace(
            record.policy, **{name: value or None for name, value in changes.items()}
        )
    record = await keys.update(record.id, policy, limit_reset)
    print(f"Key {record.id} ({record.name}): {_summary(record)}.")
    return 0


async def _keys_revoke(keys: KeyAdmin, args: argparse.Namespace) -> int:
    if not await keys.revoke(args.key_id):
        print(f"callmissed: no active key with id {args.key_id}", file=sys.stderr)
        return 1
    print(f"Revoked key {args.key_id}.")
    return 0


async def _keys_topup(keys: KeyAdmin, args: argparse.Namespace) -> int:
    amount = _credits(args.credits)
    record = await keys.top_up(args.key_id, amount)
    print(f"Key {record.id}: added {_usd(amount)}, balance {_usd(record.credits)}.")
    return 0


def _summary(record: KeyRecord) -> str:
    policy = record.policy
    limits = [
        f"{value} {unit}"
        for value, unit in (
            (policy.rpm, "rpm"),
            (policy.tpm, "tpm"),
            (policy.max_concurrent, "concurrent"),
        )
        if value is not None
    ]
    models = ", ".join(policy.models) if policy.models is not None else "all models"
    credits = f"credits {_usd(record.credits)}"
    if record.limit_reset is not None:
        credits += f" of {_usd(record.granted)} {record.limit_reset}"
    return f"{credits}, limits {', '.join(limits) or 'none'}, {models}"


def _usd(micro: float | None) -> str:
    if micro is None:
        return "unlimited"
    micro = int(micro)  # a REAL: what SQLite made of an overflowing sum before MAX_BALANCE
    return f"${micro // MICRO}.{micro % MICRO:06d}"


def _credits(text: str) -> int:
    try:
        return parse_credits(text)
    except ValueError as exc:
        raise SystemExit(f"callmissed: {exc}") from None


def _key_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 2**63 - 1:
        raise argparse.ArgumentTypeError("must be a key id (a whole number)")
    return int(text)


def _positive_or_none(text: str) -> int:
    """A limit, or 0 for `none`: no limit."""
    return 0 if text == "none" else _positive(text)


def _positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 2147483647")
    return value
