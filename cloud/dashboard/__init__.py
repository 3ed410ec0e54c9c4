"""The cloud dashboard: fleet, detection, training runs and the registry, in a browser.

Server-rendered pages (Starlette + Jinja2, htmx for live tables, uPlot charts served from the
package), a JSON API beside each page under ``/api``, sign-in with hashed passwords for
every action. It reads the registry (SQLite) and the replicated topics of the cloud Kafka.
"""
