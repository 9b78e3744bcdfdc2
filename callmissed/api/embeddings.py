"""The OpenAI-compatible edge for POST /v1/embeddings (docs/embeddings.md): auth, parse, answer."""

from __future__ import annotations

from callmissed.edge.web import Request, Response, json_response
from callmissed.formats.embeddings import parse_embedding_request
from callmissed.gateway import Gateway
from callmissed.tags import request_tags

__all__ = ["create_embedding"]


async def create_embedding(gateway: Gateway, request: Request) -> Response:
    principal = request.key
    body = request.json()
    embedding_request = parse_embedding_request(body)
    tags = request_tags(request.headers, body)
    answer, info = await gateway.embed(
        principal, embedding_request, request_id=request.request_id, tags=tags
    )
    return json_response(answer, headers=info.headers())
