"""Adapters to other frameworks, one module or subpackage per framework."""
