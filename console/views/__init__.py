"""One blueprint per console area; `register_blueprints` mounts them all."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from schoolgate.console.views.activity import bp as activity
    from schoolgate.console.views.admin import bp as admin
    from schoolgate.console.views.alerts import bp as alerts
    from schoolgate.console.views.audit import bp as audit
    from schoolgate.console.views.auth import bp as auth
    from schoolgate.console.views.checks import bp as checks
    from schoolgate.console.views.coverage import bp as coverage
    from schoolgate.console.views.dashboard import bp as dashboard
    from schoolgate.console.views.filtered import bp as filtered
    from schoolgate.console.views.lessons import bp as lessons
    from schoolgate.console.views.metrics import bp as metrics
    from schoolgate.console.views.network import bp as network
    from schoolgate.console.views.policy import bp as policy
    from schoolgate.console.views.public import bp as public
    from schoolgate.console.views.registers import bp as registers
    from schoolgate.console.views.reports import bp as reports
    from schoolgate.console.views.requests import bp as requests
    from schoolgate.console.views.review import bp as review
    from schoolgate.console.views.social import bp as social
    from schoolgate.console.views.trust import bp as trust

    for blueprint in (auth, public, dashboard, requests, reports, alerts, activity, registers, policy, audit, admin,
                      trust, checks, lessons, social, network, coverage, filtered, metrics, review):
        app.register_blueprint(blueprint)
