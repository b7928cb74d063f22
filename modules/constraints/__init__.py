"""Constrained decoding: grammars (JSON schema, regex, Lark/GBNF, tool calls) compiled with llguidance."""
