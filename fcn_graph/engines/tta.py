"""Test-time augmentation: the softmax scores of flipped and rescaled copies
of each image, averaged.

    tta = parse_tta("flip,scales=0.75,1,1.25")        # --tta, train.val_tta
    segmenter = TtaSegmenter(segmenter, tta)          # any engine, tiled or not
    labels, probabilities = segmenter.run(batch_uint8, scores=True)

The variants: every scale of `scales` (default 1), each unflipped and, with
`flip`, also flipped left to right. For each variant of an [N, H, W, 3] batch:

1. the images are resized to round(H * s) x round(W * s) (half away from zero,
   at least 1 pixel), bilinearly in float32 and rounded to uint8, then flipped;
2. the wrapped segmenter gives the logits [N, h, w, K], whose softmax is
   flipped back and resized to H x W, bilinearly;
3. the mean of the K probabilities over all variants is the result, and the
   labels are its argmax (the lowest class on a tie).

Both resizes follow OpenCV's `cv2.resize` INTER_LINEAR rule (half-pixel
centres): output pixel x reads the input at (x + 0.5) * in / out - 0.5,
clamped to [0, in - 1], and blends its two neighbours linearly. Resizing the
probabilities rather than the logits keeps every pixel's scores a
probability distribution.

Tiling: `TtaSegmenter` wraps the tiled segmenter (`tiling.TiledSegmenter`),
so every variant, at its own size, is tiled by the same rule as a plain
image: with --tile auto a scaled copy whose activation estimate exceeds
--memory-budget runs in tiles (`note` says so once per scale above 1).
With --tile off nothing is tiled, and a scaled copy over the budget is
refused before it runs (`limit`).
"""

import collections
import math
import time

import cv2
import numpy as np

from fcn_graph.core.errors import UserError

MIN_SCALE, MAX_SCALE = 0.25, 4.0     # the range of a --tta scale
CV_MAX_CHANNELS = 128                # cv2.resize (Python) takes at most this many channels


class Tta(collections.namedtuple("Tta", "flip scales")):
    """flip (bool) and scales (a tuple of distinct floats in MIN_SCALE ..
    MAX_SCALE, in the order given)."""

    @property
    def variants(self):
        """(scale, flipped) of every variant, in the order they run."""
        return [(scale, flipped) for scale in self.scales
                for flipped in ((False, True) if self.flip else (False,))]

    @property
    def text(self):
        """The canonical --tta value: "flip,scales=0.75,1,1.25"."""
        parts = ["flip"] if self.flip else []
        if self.scales != (1.0,):
            parts.append("scales=" + ",".join(f"{s:g}" for s in self.scales))
        return ",".join(parts) or "scales=1"


def parse_tta(text, flag="--tta"):
    """--tta (or train.val_tta, named by `flag`): "off" -> None, or a `Tta`
    from comma-separated items, in any case: "flip" and/or "scales=S1,S2,..."
    (the numbers after scales= up to the next item). ValueError with a one-line message
    naming `flag` for anything else."""
    if not isinstance(text, str):
        raise ValueError(f"{flag}: expected a string like flip,scales=0.75,1,1.25, found "
                         f"{text!r}")
    words = [word.strip() for word in text.strip().lower().split(",")]
    if words == ["off"]:
        return None
    if words == [""]:
        raise ValueError(f"{flag}: expected flip, scales=S1,S2,... or both (or off), found an "
                         "empty value")
    flip, scales, in_scales = False, None, False
    for word in words:
        key, eq, value = word.partition("=")
        if word == "flip":
            if flip:
                raise ValueError(f"{flag}: flip given twice in {text!r}")
            flip, in_scales = True, False
        elif eq and key.strip() == "scales":
            if scales is not None:
                raise ValueError(f"{flag}: scales= given twice in {text!r}")
            scales, in_scales = [], True
            scales.append(_scale(value.strip(), flag))
        elif in_scales and not eq:
            scales.append(_scale(word, flag))
        else:
            raise ValueError(f"{flag}: unknown variant {word!r} in {text!r}; expected flip "
                             "and/or scales=S1,S2,...")
    if scales is not None:
        seen = set()
        for scale in scales:
            if scale in seen:
                raise ValueError(f"{flag}: scale {scale:g} given twice in {text!r}")
            seen.add(scale)
    return Tta(flip, tuple(scales) if scales else (1.0,))


def _scale(word, flag):
    """One scale of --tta, checked: a finite number in MIN_SCALE .. MAX_SCALE."""
    if not word:
        raise ValueError(f"{flag}: expected a scale after scales= or a comma, found nothing")
    try:
        scale = float(word)
    except ValueError:
        raise ValueError(f"{flag}: expected a scale (a number from {MIN_SCALE:g} to "
                         f"{MAX_SCALE:g}), found {word!r}") from None
    if not (math.isfinite(scale) and MIN_SCALE <= scale <= MAX_SCALE):
        raise ValueError(f"{flag}: expected scales from {MIN_SCALE:g} to {MAX_SCALE:g} (a "
                         f"scaled image's memory grows with the scale squared), found {word}")
    return scale


def scaled_size(height, width, scale):
    """(round(height * scale), round(width * scale)), halves rounded up, at
    least 1 each."""
    return (max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5)))


def resize_bilinear(array, height, width):
    """float32 [N, h, w, C] -> [N, height, width, C] by `cv2.resize`
    INTER_LINEAR (half-pixel centres, edges clamped), image by image, at
    most CV_MAX_CHANNELS channels at a time."""
    array = np.asarray(array, dtype=np.float32)
    n, _, _, channels = array.shape
    out = np.empty((n, height, width, channels), np.float32)
    for index in range(n):
        for first in range(0, channels, CV_MAX_CHANNELS):
            part = np.ascontiguousarray(array[index, :, :, first:first + CV_MAX_CHANNELS])
            resized = cv2.resize(part, (width, height), interpolation=cv2.INTER_LINEAR)
            out[index, :, :, first:first + CV_MAX_CHANNELS] = resized.reshape(
                height, width, part.shape[2])
    return out


def resize_images(batch, height, width):
    """uint8 [N, H, W, 3] -> uint8 [N, height, width, 3]: `resize_bilinear`
    in float32, rounded to the nearest integer."""
    resized = resize_bilinear(np.asarray(batch, dtype=np.float32), height, width)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def softmax(logits):
    """Softmax over the last axis, float32 (the maximum subtracted first)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- the segmenter

class TtaSegmenter:
    """Wraps a segmenter (`.run(batch_uint8, scores=False) -> (labels,
    logits)`, `.close()`; any engine, tiled or not) and averages its softmax
    scores over the variants of `tta` (see the module docstring), with the
    same interface: `.run(batch, scores=True)` gives the labels int64
    [N, H, W] and the mean probabilities float32 [N, H, W, K].

    limit: None, or (spec, budget_bytes): a scaled copy whose activation
    estimate (`tiling.activation_bytes`) exceeds budget_bytes is refused with
    a UserError (for an untiled segmenter). note(text): called once per scale
    above 1 whose copies ran in tiles (for a `tiling.TiledSegmenter`). `seconds` accumulates the time of the plain
    runs and of the other variants with the averaging, for `run_with_plain`.
    """

    def __init__(self, segmenter, tta, *, limit=None, note=None):
        self.segmenter = segmenter
        self.tta = tta
        self.limit = limit
        self.note = note
        self.noted = set()
        self.seconds = {"plain": 0.0, "tta": 0.0}

    def run(self, batch_rgb, *, scores=False):
        """uint8 [N, H, W, 3] RGB -> (labels [N, H, W], mean probabilities
        [N, H, W, K] or None)."""
        labels, probabilities = self._average(np.asarray(batch_rgb))
        return labels, (probabilities if scores else None)

    def run_with_plain(self, batch_rgb):
        """The plain labels (the segmenter's own, one run without augmentation),
        then the augmented labels and mean probabilities, whose unflipped
        scale-1 variant reuses that plain run."""
        batch = np.asarray(batch_rgb)
        start = time.perf_counter()
        plain_labels, logits = self.segmenter.run(batch, scores=True)
        middle = time.perf_counter()
        labels, probabilities = self._average(batch, plain_logits=logits)
        self.seconds["plain"] += middle - start
        self.seconds["tta"] += time.perf_counter() - middle
        return plain_labels, labels, probabilities

    def _average(self, batch, plain_logits=None):
        n, height, width = batch.shape[:3]
        total = None
        for scale, flipped in self.tta.variants:
            if scale == 1.0 and not flipped and plain_logits is not None:
                logits = plain_logits
            else:
                size = scaled_size(height, width, scale)
                images = batch if size == (height, width) else resize_images(batch, *size)
                self._check_memory(scale, n, *size)
                if flipped:
                    images = np.ascontiguousarray(images[:, :, ::-1])
                _, logits = self.segmenter.run(images, scores=True)
                self._note_tiles(scale)
            probabilities = softmax(logits)                       # [N, h, w, K]
            if flipped:
                probabilities = probabilities[:, :, ::-1]
            if probabilities.shape[1:3] != (height, width):
                probabilities = resize_bilinear(probabilities, height, width)  # [N, H, W, K]
            if total is None:
                total = probabilities.astype(np.float32, copy=True)
            else:
                total += probabilities
        mean = total / np.float32(len(self.tta.variants))
        return np.argmax(mean, axis=-1), mean

    def _check_memory(self, scale, n, height, width):
        if self.limit is None or scale <= 1.0:
            return
        from fcn_graph.engines.tiling import activation_bytes
        spec, budget = self.limit
        need = activation_bytes(spec, height, width, batch=n)
        if need > budget:
            raise UserError(f"--tta scale {scale:g}: the {width}x{height} copy needs about "
                            f"{need / 2**30:.2f} GB of activations, over --memory-budget "
                            f"{budget / 2**30:g} GB, and --tile is off; use --tile auto (it "
                            "tiles such copies), a smaller scale or a larger budget")

    def _note_tiles(self, scale):
        tiles = getattr(self.segmenter, "tiles_run", 0)
        if self.note is None or scale <= 1.0 or not tiles or scale in self.noted:
            return
        self.noted.add(scale)
        self.note(f"note: --tta scale {scale:g}: the scaled copy exceeds --memory-budget "
                  f"and runs in {tiles} tiles")

    def close(self):
        self.segmenter.close()


def wrap_tta(segmenter, tta, *, spec, tile, budget_bytes, note=None):
    """`segmenter` (a `tiling.TiledSegmenter` with the --tile value `tile`)
    wrapped in a `TtaSegmenter` for `tta`; unchanged when `tta` is None. With
    --tile off, scaled copies over `budget_bytes` are refused (`limit`)."""
    if tta is None:
        return segmenter
    limit = (spec, budget_bytes) if tile is None else None
    return TtaSegmenter(segmenter, tta, limit=limit, note=note)
