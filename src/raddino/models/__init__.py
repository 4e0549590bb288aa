"""Models: the DINOv2 ViT backbone, weight formats and the RadDino encoder."""
