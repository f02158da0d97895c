"""Recipes for real base models and the demo task."""
