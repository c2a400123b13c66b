"""Image kernels: the Gaussian blur ladder on CPU and GPU (see priorscope.kernels.blur)."""

from priorscope.kernels.blur import blur_ladder
from priorscope.kernels.images import blur_ladder_images

__all__ = ["blur_ladder", "blur_ladder_images"]
