"""LLM gateway, tools and the embedded LLM server."""
