"""Subcommands of the `wattmoe` CLI, one module per package.

A module here imports `command`, `console` and `err_console` from `wattmoe.cli` and registers
its subcommands with `@command(name, help, add_args)`. Keep modules light at import time:
import heavy libraries (torch, ray, simpy) inside the handler.
"""
