"""Teacher data: three-stage rationales (Recall -> Analyze each option) from an OpenAI-compatible LLM.

prompts   builds the chat requests (instruction, exemplars, the question with its verdicts pre-filled)
paper     the official TinyThinker request (`--prompt_mode paper`), as the authors' notebook builds it
parsing   turns one sampled reply into a Rationale, or rejects it with a reason
selection chooses a question's label and kept rationales (optionally: teacher vote, diversity pick)
cache     the append-only response cache that makes runs resumable
client    sends requests with concurrency, rate limits, retries and backoff
generation  the rounds: plan, send what is missing, parse, retry short questions, choose, report
batch     the OpenAI Batch API path (export requests, import results into the cache)
tokens, pricing, estimate   the dry-run size and cost estimate
fake_server   a scripted local OpenAI-compatible server, for tests and offline runs
"""
