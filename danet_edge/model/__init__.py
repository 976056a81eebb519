"""The model stage: DANet (``danet.py``), dilated ResNet backbones and their registry (``backbone.py``),
weight loading (``weights.py``), the checkpoint format (``checkpoint.py``) and :class:`~.config.ModelConfig`."""
