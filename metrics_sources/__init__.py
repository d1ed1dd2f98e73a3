"""Metric sources that need a client library (a broker's, or a cloud SDK for SQS): one module per source type,
each exposing `build(cfg) -> MetricSource`, imported by `autoscaler.sources.build_sources` only when a pool uses
that type, so a daemon that reads only Prometheus never needs redis, pika or boto3."""
