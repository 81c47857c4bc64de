"""schoolgate.console: the web console for ICT technicians, the headteacher and the DSL.

`create_app` builds the Flask application; `schoolgate console` serves it with gunicorn.
"""

from schoolgate.console.app import create_app

__all__ = ["create_app"]
