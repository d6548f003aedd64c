"""CLI command groups, one module per group (typer sub-apps), joined in the top-level cli.py.

Commands parse arguments, call one engine function and print; no SQL or HTTP here.
"""
