"""Engines: what answers a chat or completion request for one pool entry (modules.engine.base is the interface)."""
