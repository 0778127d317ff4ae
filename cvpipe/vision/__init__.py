"""The vision core: the one home of image decoding, letterbox, YOLOX grid decoding and NMS, box formats and
IoU, class mapping and COCO results. Every step, the trainer, the exporter and the service call these; none
of them decodes an image or converts a box on its own. numpy / OpenCV / Pillow only (no torch), so the
packed service stays torch-free.
"""

from .boxes import box_area, box_iou, clip_xyxy, cxcywh_to_xyxy, xywh_to_xyxy, xyxy_to_cxcywh, xyxy_to_xywh
from .classmap import ClassMap
from .coco_results import detections_to_coco
from .images import (
                     DEFAULT_MAX_PIXELS,
                     ImageDecodeError,
                     ImageHeader,
                     ImageTooLarge,
                     decode_image,
                     read_header,
                     read_image,
)
from .letterbox import PAD_VALUE, letterbox, letterbox_image, resize_scale
from .yolox_decode import STRIDES, Detections, decode_raw, make_grid, nms, postprocess

__all__ = [
    "ClassMap", "DEFAULT_MAX_PIXELS", "Detections", "ImageDecodeError", "ImageHeader", "ImageTooLarge", "PAD_VALUE",
    "STRIDES", "box_area", "box_iou", "clip_xyxy", "cxcywh_to_xyxy", "decode_image", "decode_raw",
    "detections_to_coco", "letterbox", "letterbox_image", "make_grid", "nms", "postprocess", "read_header",
    "read_image", "resize_scale", "xywh_to_xyxy", "xyxy_to_cxcywh", "xyxy_to_xywh",
]
