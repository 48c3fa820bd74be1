"""Policies, one module each; :mod:`bandit.registry` maps names to classes."""
