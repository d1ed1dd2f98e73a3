"""The admin HTTP API: read what the daemon is doing and why; pause, override, reload and unblock.

`control.DaemonControl` is the only thing the API knows about the daemon; `app.create_app` builds the FastAPI
application around one.
"""
