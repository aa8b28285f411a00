"""Architecture adapters: how a model family splits into cacheable units (registry.py lists them).

Adding a family is one registry entry (a StackSpec for `patches_replace` blocks of a known
shape, or a step-level entry), or one adapter file for a new block shape.
"""
from .registry import FAMILIES, family_of, find_adapter

__all__ = ["FAMILIES", "family_of", "find_adapter"]
