"""CallMissed: one OpenAI- and Anthropic-compatible endpoint in front of many LLM upstreams."""

__version__ = "0.1.0"
__all__ = ["__version__"]
