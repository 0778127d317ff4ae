"""Evaluation: COCO metrics (hotcoco), the promotion gate, plots and reports; shared by training and model_eval."""
