"""Wire formats of the front doors people already know (OpenAI, the seed servers)."""
