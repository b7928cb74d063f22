"""Hearth's built-in demo model: data generator, trainer and evaluator."""
