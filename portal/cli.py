"""The ``portal`` console script: Flask's CLI with Portal's app factory and commands."""

from __future__ import annotations

from flask import Flask
from flask.cli import FlaskGroup


def init_app(app: Flask) -> None:
    from portal import commands

    commands.register(app)


def main() -> None:
    from portal import create_app

    FlaskGroup(create_app=create_app, help="Portal: payment gateway and wallet portal.")()
