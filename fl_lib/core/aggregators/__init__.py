"""Aggregators: how the server turns a round's received uploads into the next global model.

One aggregator per file; `registry.py` maps an `aggregator` name to its class.
"""
