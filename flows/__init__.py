"""Prefect flows (one per generator) and the `datagen` command line (cli.py)."""
