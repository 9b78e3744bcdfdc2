// The Getting Started page's JavaScript sample, verbatim but for where the key and URL come from.
import OpenAI from "openai";

const client = new OpenAI({
  apiKey: process.env.CALLMISSED_KEY,
  baseURL: process.env.CALLMISSED_BASE_URL,
});

const stream = await client.chat.completions.create({
  model: "gpt-oss-120b",
  messages: [{ role: "user", content: "Explain quicksort in one paragraph." }],
  stream: true,
});
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");
}
