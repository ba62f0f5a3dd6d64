// `mixtral serve` through the official OpenAI Node client, unmodified: if these pass, clients
// built on it (and on the same schemas) work. Run by tests/test_server.cpp against a live
// server: OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 OPENAI_API_KEY=... node --test openai.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.OPENAI_BASE_URL;
if (!baseURL) throw new Error('set OPENAI_BASE_URL to the server, e.g. http://127.0.0.1:8080/v1');
// The server may run without a key; the client insists on one, any string does then.
const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY || 'none', timeout: 60_000, maxRetries: 0 });

let modelId;
const greedy = { temperature: 0, max_tokens: 20 };
const messages = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Name three colours.' },
];

test('lists the model', async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  assert.equal(models.length, 1);
  assert.equal(models[0].object, 'model');
  assert.ok(models[0].id.length > 0);
  modelId = models[0].id;
});

test('chat completion', async () => {
  const r = await client.chat.completions.create({ model: modelId ?? 'x', messages, ...greedy });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.prompt_tokens > 0);
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 20);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('streamed chat concatenates to the non-streamed greedy text', async () => {
  const whole = await client.chat.completions.create({ model: modelId ?? 'x', messages, ...greedy });
  const stream = await client.chat.completions.create({
    model: modelId ?? 'x', messages, ...greedy, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(chunks > 2);
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, whole.choices[0].finish_reason);
  assert.ok(usage, 'a usage chunk when stream_options.include_usage');
  assert.deepEqual(usage.completion_tokens, whole.usage.completion_tokens);
});

test('completion, streamed and not', async () => {
  const prompt = 'The capital of France is';
  const r = await client.completions.create({ model: modelId ?? 'x', prompt, ...greedy, max_tokens: 12 });
  assert.equal(r.object, 'text_completion');
  assert.equal(typeof r.choices[0].text, 'string');
  assert.ok(r.usage.completion_tokens <= 12);
  const stream = await client.completions.create({ model: modelId ?? 'x', prompt, ...greedy, max_tokens: 12, stream: true });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
  assert.equal(text, r.choices[0].text);
});

test('logprobs', async () => {
  const r = await client.chat.completions.create({
    model: modelId ?? 'x', messages, temperature: 0, max_tokens: 4, logprobs: true, top_logprobs: 3,
  });
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.length, r.usage.completion_tokens);
  for (const t of lp) {
    assert.ok(t.logprob <= 0);
    assert.equal(t.top_logprobs.length, 3);
    // Greedy: the chosen token is the most likely one.
    assert.ok(Math.abs(t.logprob - t.top_logprobs[0].logprob) < 1e-4);
  }
});

test('n = 2 is a 400 BadRequestError', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: modelId ?? 'x', messages, n: 2, max_tokens: 2 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'n',
  );
});

test('empty messages is a 400', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: modelId ?? 'x', messages: [], max_tokens: 2 }),
    (e) => e instanceof OpenAI.BadRequestError && typeof e.message === 'string',
  );
});
