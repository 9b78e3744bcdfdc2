"""The OpenAI Agents SDK's quick-start, with a tool, on its default model settings (the Responses
API), against translated and passed-through models."""

from __future__ import annotations

import asyncio

import pytest

agents = pytest.importorskip("agents", reason="the `agents` test extra (openai-agents) is missing")


def _run(gateway, model: str, streamed: bool) -> tuple[str, list[str]]:
    import openai

    calls: list[str] = []

    @agents.function_tool  # type: ignore[untyped-decorator]  # importorskip gives an Any module
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return "21C"

    async def main() -> str:
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0)
        agents.set_tracing_disabled(True)  # traces would go to OpenAI's servers
        agents.set_default_openai_client(client, use_for_tracing=False)
        # The SDK reads "vendor/model" as a provider prefix: such ids are given as its
        # Responses model object, which is what a plain name resolves to anyway.
        chosen = agents.OpenAIResponsesModel(model, client) if "/" in model else model
        agent = agents.Agent(
            name="Assistant",
            instructions="Answer weather questions with the tool.",
            tools=[get_weather],
            model=chosen,
        )
        try:
            if not streamed:
                result = await agents.Runner.run(agent, "What is the weather in Paris?")
                return str(result.final_output)
            run = agents.Runner.run_streamed(agent, "What is the weather in Paris?")
            async for _ in run.stream_events():
                pass
            return str(run.final_output)
        finally:
            await client.close()

    return asyncio.run(main()), calls


@pytest.mark.parametrize("model", ["local-weather", "cf-weather", "fake/weather"])
@pytest.mark.parametrize("streamed", [False, True])
def test_the_quickstart_runs_a_tool_on_the_responses_api(responses_gateway, model, streamed):
    answer, calls = _run(responses_gateway, model, streamed)
    assert calls == ["Paris"]
    assert answer == "It is 21C in Paris."
    paths = {received.path for received in responses_gateway.upstream.requests[-2:]}
    expected = "/openrouter/api/v1/responses" if model.startswith("fake/") else "chat/completions"
    assert all(path.endswith(expected) for path in paths)
