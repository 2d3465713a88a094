"""Config options shared by the data sections of the tasks that stream patches (super-resolution, style)."""

from kx_vision.config import option
from kx_vision.data.sources import CACHE_LIMIT_MIB, CACHE_MODES


def cache_option():
    """`data.cache`: keep the decoded training images in memory, or stream them from the files."""
    return option("auto", "keep the decoded training images in memory (always), decode them from the files as "
                  "training goes (never: memory does not grow with the number of images), or auto: in memory "
                  "when they take at most data.cache_limit_mib decoded (read from the file headers)",
                  choices=CACHE_MODES)


def cache_limit_option():
    """`data.cache_limit_mib`: where `data.cache=auto` stops caching."""
    return option(float(CACHE_LIMIT_MIB), "data.cache=auto caches the training images when their decoded size "
                  "(width x height x 3 bytes each) is at most this many MiB (the 291 images of T91 + BSD200: "
                  "104)", min=0)
