"""USD per million tokens (input, output) for the teacher models, from OpenAI's public price list
(mid-2025). Edit the table when prices change, or pass `--price INPUT OUTPUT`; models not listed
(a local vLLM, Ollama or llama.cpp server) have no price and their cost is reported as null."""

from typing import Optional

PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "gpt-4o-2024-05-13": (5.00, 15.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-2024-11-20": (2.50, 10.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini-2024-07-18": (0.15, 0.60),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo-0125": (0.50, 1.50),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half the synchronous price


def cost_usd(prices: Optional[tuple[float, float]], input_tokens: int, output_tokens: int) -> Optional[float]:
    if prices is None:
        return None
    return round((input_tokens * prices[0] + output_tokens * prices[1]) / 1e6, 6)
