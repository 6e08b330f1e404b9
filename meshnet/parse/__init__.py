"""Parsers of live state back into the rule model."""
