"""tinythinker-jax: distil three-stage reasoning from a teacher LLM into small T5 students."""

__version__ = "0.1.0"
