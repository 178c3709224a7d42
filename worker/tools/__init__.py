"""What the ``produce`` and ``tail`` commands do; ``worker.cli`` only parses their flags."""
