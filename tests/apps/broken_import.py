"""An app module whose own import fails: the message must reach the user."""
import yimmo_no_such_dependency  # noqa: F401

application = None
