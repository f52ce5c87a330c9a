"""Hardening tests (issue 7): bad input at every layer, floods, slow consumers, faults, soak, identifiers.

The catalogue of bad input, with each case's documented answer and the test that checks it, is
``protocol/bad-input.md``; ``test_catalogue.py`` keeps that table and the tests in step.
"""
