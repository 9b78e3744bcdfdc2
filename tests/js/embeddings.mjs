// embeddings.create with the official `openai` package, as an app would call it: the default
// encoding (the SDK asks for base64 and decodes it) and "float", a list and a string, dimensions.
// Prints what it got as JSON for tests/api/test_embeddings_clients.py to check.
import OpenAI from "openai";

const client = new OpenAI({
  apiKey: process.env.CALLMISSED_KEY,
  baseURL: process.env.CALLMISSED_BASE_URL,
  maxRetries: 0,
});
const [model, dimensions] = process.argv.slice(2);
const texts = ["The quick brown fox", "jumps over the lazy dog"];

const vectors = (response) => response.data.map((item) => Array.from(item.embedding));
const byDefault = await client.embeddings.create({ model, input: texts });
const float = await client.embeddings.create({ model, input: texts[0], encoding_format: "float" });
const result = {
  default: vectors(byDefault),
  indexes: byDefault.data.map((item) => item.index),
  usage: byDefault.usage,
  float: vectors(float),
};
if (dimensions) {
  const short = await client.embeddings.create({ model, input: texts, dimensions: Number(dimensions) });
  result.dimensions = vectors(short);
}
process.stdout.write(JSON.stringify(result));
