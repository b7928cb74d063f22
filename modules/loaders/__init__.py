"""Model backends; modules.loaders.registry holds what Hearth knows about each (the only place naming them)."""
from modules.loaders.registry import get_loader_class, loader_names

__all__ = ["get_loader_class", "loader_names"]
