"""Tool calling: the tools a request offers, the model's call format, its grammar, and parsing what it wrote."""
