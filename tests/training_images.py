"""Small training pictures the graph tests load through LoadImage."""
import numpy as np
from PIL import Image


def ring_picture(path, shift: int) -> None:
    """64 x 64 RGB: colour ramps (moved along x by `shift`) with a disc in the blue channel."""
    y, x = np.mgrid[0:64, 0:64]
    img = np.stack([(x * 4 + shift) % 256, (y * 4) % 256, ((x - 32) ** 2 + (y - 32) ** 2 < 300) * 255], -1)
    Image.fromarray(img.astype(np.uint8)).save(path)
