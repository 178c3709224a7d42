"""What the ``produce``, ``tail`` and ``dlt replay`` commands do; ``worker.cli`` only parses their flags."""
