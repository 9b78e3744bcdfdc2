// The Responses API through the `openai` npm package, unchanged: run by tests/api/test_responses_js.py.
// CALLMISSED_MODELS names one model pattern per provider type; `{}` is the fake's behaviour.
import OpenAI from "openai";

const client = new OpenAI({
  apiKey: process.env.CALLMISSED_KEY,
  baseURL: process.env.CALLMISSED_BASE_URL,
  maxRetries: 0,
});
const weatherTool = {
  type: "function",
  name: "get_weather",
  description: "Current weather in a city",
  parameters: {
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
    additionalProperties: false,
  },
  strict: true,
};
const weatherFormat = {
  type: "json_schema",
  name: "Weather",
  strict: true,
  schema: {
    type: "object",
    properties: { city: { type: "string" }, temperature_c: { type: "integer" } },
    required: ["city", "temperature_c"],
    additionalProperties: false,
  },
};

async function scenarios(pattern) {
  const model = (behaviour) => pattern.replace("{}", behaviour);
  const created = await client.responses.create({ model: model("hello"), input: "Hi" });

  const stream = client.responses.stream({ model: model("hello"), input: "Hi" });
  const types = [];
  let deltas = "";
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") deltas += event.delta;
  }
  const streamed = await stream.finalResponse();

  const first = await client.responses.create({
    model: model("weather"),
    input: "Weather in Paris?",
    tools: [weatherTool],
  });
  const call = first.output.find((item) => item.type === "function_call");
  const answered = await client.responses.create({
    model: model("weather"),
    input: [
      { role: "user", content: "Weather in Paris?" },
      ...first.output,
      { type: "function_call_output", call_id: call.call_id, output: "21C" },
    ],
    tools: [weatherTool],
  });

  const parsed = await client.responses.parse({
    model: model("structured"),
    input: "Weather?",
    text: { format: weatherFormat },
  });

  const next = await client.responses.create({
    model: model("hello"),
    input: "And again?",
    previous_response_id: created.id,
  });
  return {
    text: created.output_text,
    streamed: streamed.output_text,
    deltas,
    firstEvent: types[0],
    lastEvent: types[types.length - 1],
    call: call && { name: call.name, arguments: JSON.parse(call.arguments) },
    answer: answered.output_text,
    parsed: parsed.output_parsed,
    continued: next.previous_response_id === created.id,
  };
}

const results = {};
for (const pattern of process.env.CALLMISSED_MODELS.split(",")) {
  results[pattern] = await scenarios(pattern);
}
process.stdout.write(JSON.stringify(results));
