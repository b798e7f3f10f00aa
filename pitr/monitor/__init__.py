"""Monitoring: health evaluation (pure), Prometheus metrics, webhook alerts, HTTP server.

``health.evaluate`` decides; ``collect`` gathers its inputs from the repository
and the agent's status file; ``server`` and ``pitr status`` present the result.
"""
