"""Looking inside trained models: attention weights per layer and head (``attention``) and their
pictures (``render``: PNG heatmaps and a self-contained HTML page), for ``lmkit inspect``."""
