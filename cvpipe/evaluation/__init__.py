"""Evaluation: COCO metrics (faster-coco-eval), plots and reports; shared by training and model_eval."""
