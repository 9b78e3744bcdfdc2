"""Relay one upstream answer to the client: normalised OpenAI chunks, usage captured as it passes.

The common chunk, content only, is known by its envelope once one was parsed (formats.openai.
ContentTemplate), and a run of such events goes out as the upstream framed it, unparsed; any
other chunk is parsed, and re-encoded only when its bytes show it may need an edit
(formats.openai.needs_normalising). Everything else goes out as the upstream sent it.
An upstream in another dialect (its provider has a stream_translator) has each event parsed and
turned into chunks by its translator, chosen once per stream; a whole answer is its provider's
to parse (Provider.parse_completion).
A stream that errors or ends before its finish reason raises UpstreamError, so every API edge
can end it with an error the SDK raises. However it ends, its owner (endings.py) is told once.
Which route to stream from is failover.py's call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson

from callmissed import failures
from callmissed.accounting.settlement import StreamMeter
from callmissed.errors import GatewayError, UpstreamError
from callmissed.formats.openai import (
    ChunkNormaliser,
    ContentTemplate,
    needs_normalising,
    plain_content,
)
from callmissed.nesting import MAX_DEPTH, SHORTEST_TOO_DEEP, too_deep
from callmissed.providers import Provider, StreamTranslator, UpstreamRequest
from callmissed.settings import ModelSettings, Route
from callmissed.sse import DEFAULT_MAX_EVENT, EventTooLarge, SSEDecoder, event_data
from callmissed.token_estimate import ascii_output_tokens, estimate_output_tokens
from callmissed.upstream import UpstreamResponse

__all__ = [
    "CHAT_COMPLETIONS",
    "ChatStream",
    "Chunk",
    "EventStream",
    "StreamOwner",
    "UpstreamAPI",
    "read_completion",
    "read_whole",
]

_DONE = b"[DONE]"


@dataclass(slots=True)
class Chunk:
    """One chat.completion.chunk as JSON bytes ready to forward, parsed if we had to; or a run.

    `tokens` is set on chunks that carry nothing but content (formats.openai.plain_content): their
    estimated tokens, so a meter need not walk them. A run is several of those as the upstream
    framed them: `data` is whole SSE events in the envelope `run` learned; json() merges them.
    """

    data: bytes
    parsed: dict[str, Any] | None = None
    tokens: int | None = None
    run: ContentTemplate | None = None

    def json(self) -> dict[str, Any]:
        if self.parsed is None:
            self.parsed = orjson.loads(self.data if self.run is None else self.run.merge(self.data))
        return self.parsed

    def event(self) -> bytes:
        """The chunk as an SSE event (a run: its events)."""
        return self.data if self.run is not None else b"data: " + self.data + b"\n\n"


class StreamOwner(Protocol):
    """Who owns a stream's end (endings.StreamOwner): its meter sees every batch delivered, and
    ended() is called exactly once, when the stream closes, however that came about."""

    @property
    def meter(self) -> StreamMeter: ...

    def ended(self, stream: ChatStream) -> None: ...


class ChatStream:
    """An upstream stream of chat.completion chunks. Iterate `aiter_batches()` once; close()."""

    # Whether an upstream in another dialect is read through its provider's translator; a
    # subclass that passes its own dialect through (relay_messages.py) reads it itself.
    translates: ClassVar[bool] = True

    def __init__(
        self,
        provider: Provider,
        response: UpstreamResponse,
        include_usage: bool,
        max_event: int = DEFAULT_MAX_EVENT,
    ) -> None:
        self._provider = provider
        self._response = response
        self._include_usage = include_usage
        self._normaliser = ChunkNormaliser()
        self._template = ContentTemplate()
        self._learning = 3  # tries at learning the envelope: some upstreams vary it per chunk
        self._decoder = SSEDecoder(max_event)
        self._done = False
        self.finished = False  # a finish_reason was seen
        self.usage: dict[str, Any] | None = None
        self.failure: UpstreamError | None = None  # what ended the stream, if it broke
        self.upstream_id: str | None = None  # the upstream's id for the answer (its first chunk's)
        self.reading = False  # waiting on the upstream right now
        self.read_started = 0.0  # loop time that wait began (the idle watchdog's, endings.py)
        self._aborted: GatewayError | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._closed = False
        self._owner: StreamOwner | None = None
        self._meter: StreamMeter | None = None
        self._batches = self._aiter_upstream()
        self._first: list[Chunk] = []
        # Chosen once: OpenAI chunks take the fast path; another dialect, its translator. (Not
        # as a bound method kept on self: that cycle would leave every stream to the collector.)
        self._translator = provider.stream_translator() if self.translates else None

    async def start(self) -> None:
        """Wait for the first token, so that an early failure can still be an HTTP error.

        Chunks without one (a bare role delta, which many servers send at once) are held back
        with it: until a token has gone out, failover.py may still switch routes unseen.
        """
        while (batch := await anext(self._batches, None)) is not None:
            if not self._first:
                first = batch[0]
                parsed = first.parsed  # usually: a role chunk, parsed to be normalised
                answer_id = _chunk_id(first) if parsed is None else parsed.get("id")
                if answer_id.__class__ is str and len(answer_id) <= 200:
                    self.upstream_id = answer_id
            self._first += batch
            if any(_has_token(chunk) for chunk in batch):
                return

    async def aiter_batches(self) -> AsyncIterator[list[Chunk]]:
        """The chunks of each upstream read, together, so the edge can write them at once."""
        self._reader = asyncio.current_task()
        if self._first:
            if self._meter is not None:
                self._meter.on_batch(self._first)
            yield self._first
        async for batch in self._batches:
            if self._meter is not None:
                self._meter.on_batch(batch)
            yield batch

    @property
    def complete(self) -> bool:
        """The upstream's `[DONE]` has come: no batch follows the last one delivered."""
        return self._done

    def own(self, owner: StreamOwner) -> None:
        """Hand the stream to `owner` from here on: its meter sees every batch delivered, and it
        is told when the stream ends — now, if it already has (inside start())."""
        self._meter = owner.meter
        if self._closed:
            owner.ended(self)
        else:
            self._owner = owner

    def abort(self, error: GatewayError) -> None:
        """End the stream with `error`: at once if it is waiting on the upstream, else next read."""
        if self._aborted is not None or self._closed:
            return
        self._aborted = error
        if self.reading and self._reader is not None:
            self._reader.cancel()

    async def _aiter_upstream(self) -> AsyncIterator[list[Chunk]]:
        # `reading` is false only while a batch is out with the consumer, so a cancel from
        # abort() lands in the upstream read (the one await in here) and nowhere else.
        loop = asyncio.get_running_loop()
        receive = self._response.receive
        self.read_started = loop.time()
        self.reading = True
        try:
            while raw := await receive():
                batch: list[Chunk] = []
                failure = self._read(raw, batch)
                if batch:
                    self.reading = False
                    yield batch
                    self.reading = True
                if failure is not None:
                    raise failure
                if self._done:
                    return
                if self._aborted is not None:
                    raise self._aborted
                self.read_started = loop.time()
            if not self.finished:
                label = f"{self._provider.label} ({self._provider.name})"
                raise failures.failure(
                    failures.BROKEN,
                    f"{label} ended the stream before it finished",
                    provider=self._provider.name,
                )
        except UpstreamError as exc:
            self.failure = exc
            raise
        except asyncio.CancelledError:
            aborted = self._abort_error()
            if aborted is None:
                raise
            if isinstance(aborted, UpstreamError):
                self.failure = aborted
            raise aborted from None
        finally:
            self.reading = False
            self.close()

    def _abort_error(self) -> GatewayError | None:
        """The abort's error if abort() sent the cancel being handled (and nothing else did)."""
        task = self._reader
        if self._aborted is not None and task is not None and task.uncancel() == 0:
            return self._aborted
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._done:
            self._response.release()
        else:
            self._response.close()
        # Dropped once called: the owner holds this stream, and that cycle would leave every
        # request's objects to the garbage collector.
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.ended(self)

    def _read(self, raw: bytes, chunks: list[Chunk]) -> UpstreamError | None:
        """Put the chunks an upstream read completes into `chunks`; the failure that one of its
        events reports, if any, once the chunks before it are in (they go out first: an error
        that shares a read with content must neither lose the content nor pass for a failure
        before the first token, which failover would retry)."""
        try:
            if self._translator is None:
                self._chunks(raw, chunks)
            else:
                self._translated(raw, chunks, self._translator)
        except UpstreamError as exc:
            if not chunks:
                raise
            return exc
        return None

    def _chunks(self, raw: bytes, chunks: list[Chunk]) -> None:
        """The chunks an upstream read completes, into `chunks`: each run of events in the
        learned envelope as one Chunk, forwarded as it came; any other event on its own."""
        events = self._take(raw)
        template = self._template
        start, size = 0, len(events)
        while start < size:
            end, length, pieces = template.scan(events, start)
            if end > start and (run := self._run(events[start:end], length, pieces)) is not None:
                chunks.append(run)
                start = end
                continue
            end = events.find(b"\n\n", start)
            if end == -1:
                break  # what is left is a stray line end
            data = event_data(events[start:end])
            start = end + 2
            if data is not None and (chunk := self._accept(data)) is not None:
                chunks.append(chunk)

    def _translated(self, raw: bytes, chunks: list[Chunk], translator: StreamTranslator) -> None:
        """The chunks `translator` makes of the events an upstream read completes."""
        for block in self._take(raw).split(b"\n\n"):
            data = event_data(block) if block else None
            if data is None:
                continue
            for parsed in translator.feed(self._load(data)):
                chunk = self._edit(orjson.dumps(parsed), parsed)
                if chunk is not None:
                    chunks.append(chunk)
            if translator.done:
                self._done = True
                return

    def _load(self, data: bytes) -> dict[str, Any]:
        """One event's data, parsed: an object of bounded depth, or UpstreamError."""
        try:
            # Parsing costs ~1 us and guarantees the client never gets broken JSON.
            parsed: dict[str, Any] = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise self._provider.malformed("sent malformed JSON in its stream") from None
        if parsed.__class__ is not dict:
            raise self._provider.malformed("sent an event that is not an object")
        if len(data) >= SHORTEST_TOO_DEEP and too_deep(parsed, len(data)):
            raise self._provider.malformed(f"sent JSON nested deeper than {MAX_DEPTH} levels")
        return parsed

    def _take(self, raw: bytes) -> bytes:
        """The whole events `raw` completes (sse.SSEDecoder.take), within the event limit."""
        try:
            return self._decoder.take(raw)
        except EventTooLarge as exc:
            label = f"{self._provider.label} ({self._provider.name})"
            raise failures.failure(
                failures.TOO_LARGE,
                f"{label} sent a stream event longer than {exc.limit} bytes",
                provider=self._provider.name,
            ) from None

    def _run(self, events: bytes, length: int, pieces: int) -> Chunk | None:
        """A run of content events, unless their text is not UTF-8 (then each is refused alone)."""
        if events.isascii():
            return Chunk(events, None, ascii_output_tokens(length, pieces), self._template)
        try:
            text = self._template.text(events).decode()
        except UnicodeDecodeError:
            return None
        return Chunk(events, None, estimate_output_tokens(text, pieces), self._template)

    def _accept(self, data: bytes) -> Chunk | None:
        text = self._template.match(data)
        if text is not None:  # the common chunk, known by its envelope: nothing to parse
            return Chunk(data, None, estimate_output_tokens(text))
        if data == _DONE:
            self._done = True
            return None
        chunk = self._load(data)
        # find(), not `in`: on 3.11 `bytes in bytes` first tries the operand as an int and
        # clears the error it sets (110 against 68 ns a test, timeit).
        if data.find(b"\n") != -1:  # several `data:` lines, which SSE joins: make it one
            data = orjson.dumps(chunk)
        content = plain_content(chunk)
        if content is not None:
            if not self._template.learned and self._learning > 0:
                self._learning -= 1
                self._template.learn(data, content)
            return Chunk(data, chunk, estimate_output_tokens(content))
        if not needs_normalising(data, chunk):
            return Chunk(data, chunk)
        error = self._provider.stream_error(chunk)
        if error is not None:
            raise error
        return self._edit(data, chunk)

    def _edit(self, data: bytes, chunk: dict[str, Any]) -> Chunk | None:
        """`chunk` (parsed from `data`) normalised; its own bytes if nothing had to change."""
        changed = self._normaliser.fix(chunk)
        choices = chunk.get("choices")
        if choices and any(choice.get("finish_reason") for choice in choices):
            self.finished = True
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
            if not self._include_usage:
                if not choices:
                    return None
                del chunk["usage"]
                changed = True
        if choices is None:
            chunk["choices"] = []
            changed = True
        return Chunk(orjson.dumps(chunk) if changed else data, chunk)


class EventStream(ChatStream):
    """An upstream's own stream of typed events, passed through in its dialect (relay_responses.py,
    relay_messages.py), read as ChatStream reads chat chunks (the same meter, watchdog and
    close): each Chunk is one event's data, parsed by `_event`, with `tokens` set, so no meter
    walks it."""

    translates = False

    async def start(self) -> None:
        """Wait for the first event that carries output (or ends the answer): until then,
        failover.py may still switch routes unseen."""
        while (batch := await anext(self._batches, None)) is not None:
            self._first += batch
            if self.finished or any(chunk.tokens for chunk in batch):
                return

    def _chunks(self, raw: bytes, chunks: list[Chunk]) -> None:
        for block in self._take(raw).split(b"\n\n"):
            data = event_data(block) if block else None
            if data is not None and data != _DONE:
                chunks.append(self._event(data))

    def _event(self, data: bytes) -> Chunk:
        """One event's Chunk; what it says about the answer (its end, usage, id) recorded."""
        raise NotImplementedError


def _has_token(chunk: Chunk) -> bool:
    """Whether a chunk carries anything a client would see: not just a role or empty strings."""
    if chunk.tokens is not None:
        return chunk.tokens > 0 or not chunk.json().get("choices")
    choices = chunk.json().get("choices")
    if not choices:
        return True  # usage, or something we do not know: nothing to hold it back for
    for choice in choices:
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta") or {}
        if any(value for key, value in delta.items() if key != "role"):
            return True
    return False


def _chunk_id(chunk: Chunk) -> str | None:
    """A chunk's `id` (OpenRouter's gen-…), found in the bytes of one not parsed."""
    data = chunk.data
    start = data.find(b'"id":"')
    end = data.find(b'"', start + 6, start + 206) if start != -1 else -1
    return None if end == -1 else data[start + 6 : end].decode("utf-8", "replace")


async def read_completion(
    provider: Provider, response: UpstreamResponse, limit: int
) -> dict[str, Any]:
    """Read a whole answer of at most `limit` bytes, as a normalised chat.completion (its
    provider parses it), raising if it is longer or an error in disguise."""
    return provider.parse_completion(await read_whole(provider, response, limit))


async def read_whole(provider: Provider, response: UpstreamResponse, limit: int) -> bytes:
    """A whole answer's bytes, at most `limit` of them: UpstreamError if there are more."""
    try:
        body, more = await response.read(limit)
    finally:
        response.close()
    if more:
        raise failures.failure(
            failures.TOO_LARGE,
            f"{provider.described} answered with more than {limit} bytes",
            provider=provider.name,
        )
    return body


def _build_chat(
    provider: Provider, body: dict[str, Any], route: Route, model: ModelSettings
) -> UpstreamRequest:
    return provider.build_request(body, route, model)


@dataclass(frozen=True, slots=True)
class UpstreamAPI:
    """An API a request is relayed over: how a provider builds the request, how a whole answer
    is read, and the stream a streamed one becomes. Chat completions unless an edge passes
    another (relay_responses.RESPONSES, for upstreams that serve the Responses API)."""

    build: Callable[[Provider, dict[str, Any], Route, ModelSettings], UpstreamRequest]
    read: Callable[[Provider, UpstreamResponse, int], Awaitable[dict[str, Any]]]  # byte limit
    stream: Callable[[Provider, UpstreamResponse, bool, int], ChatStream]  # event byte limit


CHAT_COMPLETIONS = UpstreamAPI(_build_chat, read_completion, ChatStream)
