"""Streaming sentiment classification on Kafka: decode, batch, infer, publish, acknowledge."""

__version__ = "0.1.0"
