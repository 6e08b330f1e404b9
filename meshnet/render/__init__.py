"""Renderers: pure functions from a plan/model to text."""
