"""Tiled inference: any image size in bounded memory.

The receptive field and the stride of the network come from the one model
definition (`definition.network` run with `field_layers()`, on shapes); a tile plan
(`plan_axis`, `plan_tiles`) cuts an image into overlapping tiles; and
`TiledSegmenter` runs any segmenter (`.run(batch_uint8, scores=False) ->
(labels, scores)`, either engine) tile by tile and stitches the results.

Why the tiled labels equal the whole image's:

- Every tile starts at a multiple of the network's stride S (32), so every
  pooled grid of a tile is a sub-grid of the whole image's.
- Every tile is as tall (and as wide) as the image modulo S, so each
  upsampling crops its output exactly as it does on the whole image (the
  SAME padding of a transposed convolution depends on the output size modulo
  its stride; `tf_layers.upsample`).
- Each output pixel is taken from one tile in which its whole receptive field
  lies (the margin below), so no zero padding at a tile's edge reaches it.

What remains is float rounding: the same sums, blocked differently for
another input shape, can differ in the last bits and flip an argmax between
two nearly equal scores.
"""

import collections
import math

import numpy as np

from fcn_graph.core.errors import UserError
from fcn_graph.core.ranges import MEMORY_BUDGET_RANGE, shown

# The model (and so TensorFlow) is imported only where a field or an
# estimate is traced: the flags parse without it.

DEFAULT_MEMORY_BUDGET_GB = 2.0       # --memory-budget: auto tiles above this estimate
MAX_TILE = 65536                     # --tile: the largest size in pixels
FLOAT_BYTES = 4                      # activations are float32


class ReceptiveField(collections.namedtuple("ReceptiveField", "lo hi stride")):
    """Output pixel x (along either axis) depends on input pixels x + lo ..
    x + hi only (lo <= 0 <= hi), whatever the image size; `stride` is the
    coarsest grid of the network (the product of its pools)."""

    @property
    def size(self):
        """Extent of the receptive field in pixels: hi - lo + 1."""
        return self.hi - self.lo + 1

    @property
    def margin(self):
        """max(-lo, hi): a pixel this far from both edges of a tile has its
        whole receptive field in the tile (at least half the field's size)."""
        return max(-self.lo, self.hi)

    @property
    def min_tile(self):
        """The smallest tile size (a multiple of the stride) every image can be
        planned with: one stride of core between two margins, plus the
        stride - 1 rows a tile may give up to keep the image's size modulo
        the stride (`plan_axis`)."""
        need = 2 * self.margin + 2 * self.stride - 1
        return -(-need // self.stride) * self.stride


class _Field(tuple):
    """A shape (N, H, W, C) with the interval of input pixels each of its
    cells depends on: cell i covers input i * jump + lo .. i * jump + hi."""

    def __new__(cls, shape, jump, lo, hi):
        field = super().__new__(cls, shape)
        field.jump, field.lo, field.hi = jump, lo, hi
        return field


def field_layers():
    """A `FieldLayers` (below): `definition.ShapeLayers` that also carries each
    tensor's receptive field."""
    from fcn_graph.network import definition

    class FieldLayers(definition.ShapeLayers):
        """`definition.ShapeLayers` that also carries each tensor's receptive field:
        a stride-1 SAME k x k conv widens it by (k - 1) // 2 cells before and
        k // 2 after; a 2x2/2 SAME pool (padding after only) by one cell after,
        and doubles the jump; a transposed conv (k, stride s) by the input cells
        its output reads, for every output phase and every crop SAME padding can
        make (`_upsample`); an add takes the union."""

        def _centre(self, net, mean_pixel):
            return _Field(net, 1, 0, 0)

        def _conv(self, net, kernel, bias, name):
            k, j = kernel[0], net.jump
            return _Field(super()._conv(net, kernel, bias, name), j,
                          net.lo - (k - 1) // 2 * j, net.hi + k // 2 * j)

        def _pool(self, net, method, name):
            return _Field(super()._pool(net, method, name), 2 * net.jump, net.lo,
                          net.hi + net.jump)

        def _upsample(self, net, kernel, bias, like, channels, stride, name):
            # Output cell o reads input cells i with 0 <= o + top - i * s <= k - 1,
            # where SAME padding crops top = (k - s + r) // 2 rows, r = s * in - out
            # in 0 .. s - 1 (tf.nn.conv2d_transpose; `tf_layers.upsample`). Cell o lies
            # at o * jump' with jump' = jump / s; the bounds are taken over every
            # phase q = o mod s and every r.
            k, s, j = kernel[0], stride, net.jump
            assert j % s == 0 and k >= s, (name, j, s, k)
            out_jump = j // s
            assert getattr(like, "jump", out_jump) == out_jump, (name, like.jump, out_jump)
            lo, hi = math.inf, -math.inf
            for r in range(s):
                top = (k - s + r) // 2
                for q in range(s):
                    first = -((k - 1 - q - top) // s)      # ceil((q + top - k + 1) / s)
                    last = (q + top) // s
                    lo = min(lo, first * j - q * out_jump + net.lo)
                    hi = max(hi, last * j - q * out_jump + net.hi)
            return _Field(super()._upsample(net, kernel, bias, like, channels, stride, name),
                          out_jump, lo, hi)

        def _add(self, a, b, name):
            assert a.jump == b.jump, (name, a.jump, b.jump)
            return _Field(a, a.jump, min(a.lo, b.lo), max(a.hi, b.hi))

    return FieldLayers()


def receptive_field(spec, *, head=None):
    """The `ReceptiveField` of the logits of `spec`'s network, traced through
    the model definition (`definition.network`; `head` as there)."""
    from fcn_graph.network import definition
    layers = definition.trace(spec, height=1, width=1, head=head, layers=field_layers())
    logits = layers.end_points[next(reversed(layers.end_points))]
    stride = max(point.jump for point in layers.end_points.values())
    return ReceptiveField(logits.lo, logits.hi, stride)


def activation_bytes(spec, height, width, *, batch=1, head=None):
    """Estimated activation memory of one forward pass on [batch, height,
    width, 3]: every end point of the traced network (each layer's output,
    ReLUs and pools included) in float32, summed. An over-estimate of what
    is alive at once, which leaves room for the kernels' own workspaces."""
    from fcn_graph.network import definition
    layers = definition.trace(spec, batch=batch, height=height, width=width, head=head)
    return FLOAT_BYTES * sum(math.prod(shape) for shape in layers.end_points.values())


# ---------------------------------------------------------------- the plan

Span = collections.namedtuple("Span", "start stop core_start core_stop")
Span.__doc__ = """One tile along one axis: it reads pixels start .. stop - 1
and supplies the output of core_start .. core_stop - 1."""

Tile = collections.namedtuple("Tile", "rows cols")


def plan_axis(length, tile, field):
    """The tiles along one axis of `length` pixels, as `Span`s.

    Rule: an axis no longer than `tile` is one tile. Otherwise every tile is
    `size` = the largest value <= `tile` with size = length (mod S), S =
    field.stride; the tiles start at multiples of S, the first at 0 and the
    last at length - size, the others spread evenly between, each step at
    most size - 2 * margin rounded down to a multiple of S. Each pixel is
    supplied by the tile in which it is most central: the boundary between
    two neighbours is the middle of their overlap, so every pixel lies at
    least `field.margin` (>= half the receptive field) from the edges of its
    tile, except where a tile's edge is the image's own edge. Exactly: each
    pixel x of a span's core has start <= x + field.lo (or start = 0) and
    x + field.hi < stop (or stop = length), i.e. its whole receptive field
    lies in the tile wherever the tile's edge is not the image's.
    """
    if length <= tile:
        return [Span(0, length, 0, length)]
    s = field.stride
    size = tile - (tile - length) % s
    step = (size - 2 * field.margin) // s * s
    if step < s:
        check_tile(tile, field)
        raise AssertionError((length, tile, field))
    last = (length - size) // s                  # in strides; length - size = 0 (mod s)
    count = 1 + -(-last * s // step)
    starts = [s * round(i * last / (count - 1)) for i in range(count)]
    spans, core_start = [], 0
    for i, start in enumerate(starts):
        stop = start + size
        core_stop = length if i == count - 1 else (starts[i + 1] + stop) // 2
        spans.append(Span(start, stop, core_start, core_stop))
        core_start = core_stop
    return spans


def plan_tiles(height, width, tile, field):
    """Every `Tile` (rows, cols: `Span`s) of a height x width image, row by
    row; their cores cover the image exactly once."""
    return [Tile(rows, cols) for rows in plan_axis(height, tile, field)
            for cols in plan_axis(width, tile, field)]


def auto_tile(spec, budget_bytes, field, *, batch=1):
    """The largest square tile size (a multiple of the stride, at least
    `field.min_tile`) whose `activation_bytes` fits `budget_bytes`."""
    tile = field.min_tile
    while activation_bytes(spec, tile + field.stride, tile + field.stride,
                           batch=batch) <= budget_bytes:
        tile += field.stride
    return tile


# ---------------------------------------------------------------- the flag

def parse_tile(text):
    """--tile: "auto", "off" (-> None) or a size in pixels, a positive
    multiple of 32; ValueError with the one-line message otherwise (the
    commands pass it to parser.error)."""
    text = text.strip().lower()
    if text == "off":
        return None
    if text == "auto":
        return "auto"
    try:
        size = int(text)
    except ValueError:
        raise ValueError(f"--tile: expected auto, off or a tile size in pixels, found "
                         f"{shown(text)}") from None
    if size <= 0 or size % 32 or size > MAX_TILE:
        raise ValueError(f"--tile: expected a positive multiple of 32 (the network's stride) "
                         f"up to {MAX_TILE}, found {size}")
    return size


def check_tile(tile, field):
    """`tile` ("auto", None or a size) if the model's `ReceptiveField` allows
    it; a UserError naming --tile when a size is below `field.min_tile`."""
    if isinstance(tile, int) and tile < field.min_tile:
        raise UserError(f"--tile {tile}: too small for this model: expected at least "
                        f"{field.min_tile} pixels (twice the receptive-field margin of "
                        f"{field.margin} plus {2 * field.stride - 1}), or auto or off")
    return tile


def check_memory_budget(gigabytes):
    """--memory-budget: a number of GB in MEMORY_BUDGET_RANGE; ValueError otherwise."""
    problem = MEMORY_BUDGET_RANGE.problem(gigabytes)
    if problem is not None:
        raise ValueError(f"--memory-budget: {problem}")
    return gigabytes


# ---------------------------------------------------------------- the segmenter

class TiledSegmenter:
    """Wraps a segmenter (`.run(batch_uint8, scores=False) -> (labels,
    scores)`, `.close()`) of the model `spec` and runs large images tile by
    tile (`plan_tiles`), with the same interface.

    tile: a size in pixels (tiles every image larger than it), "auto" (tiles
    with `auto_tile` when `activation_bytes` of the whole batch exceeds
    `budget_bytes`) or None (never tiles). field: the `ReceptiveField` the
    plan keeps (default: `spec`'s, traced).

    Memory: only one tile's activations exist at a time. The result is held
    whole: labels [N, H, W] (the engine's integer type), and with scores
    the logits [N, H, W, K] float32 (K = 21 at 24 megapixels: 2 GB). Each
    output pixel is copied from the one tile in which it is most central,
    never blended: in that tile its scores are the whole image's, while a
    blend would mix in scores from tiles where the pixel's receptive field
    crosses the tile's edge.
    """

    def __init__(self, segmenter, spec, *, tile="auto", budget_bytes=None, field=None):
        self.segmenter = segmenter
        self.spec = spec
        self.field = receptive_field(spec) if field is None else field
        self.budget_bytes = (DEFAULT_MEMORY_BUDGET_GB * 2**30 if budget_bytes is None
                             else budget_bytes)
        self.tile = check_tile(tile, self.field)
        self.tiles_run = 0          # tiles of the last call; 0 when it ran whole

    def tile_size(self, batch, height, width):
        """The tile size for a [batch, height, width] call, or None to run it whole."""
        if self.tile is None:
            return None
        if self.tile == "auto":
            if activation_bytes(self.spec, height, width, batch=batch) <= self.budget_bytes:
                return None
            tile = auto_tile(self.spec, self.budget_bytes, self.field, batch=batch)
        else:
            tile = self.tile
        return None if height <= tile and width <= tile else tile

    def run(self, batch_rgb, *, scores=False):
        """uint8 [N, H, W, 3] RGB -> (labels [N, H, W], logits [N, H, W, K] or None)."""
        batch = np.asarray(batch_rgb)
        n, height, width = batch.shape[:3]
        tile = self.tile_size(n, height, width)
        self.tiles_run = 0
        if tile is None:
            return self.segmenter.run(batch, scores=scores)
        labels = logits = None
        for rows, cols in plan_tiles(height, width, tile, self.field):
            part = batch[:, rows.start:rows.stop, cols.start:cols.stop]
            part_labels, part_logits = self.segmenter.run(part, scores=scores)
            core = (slice(None), slice(rows.core_start, rows.core_stop),
                    slice(cols.core_start, cols.core_stop))
            inner = (slice(None), slice(rows.core_start - rows.start, rows.core_stop - rows.start),
                     slice(cols.core_start - cols.start, cols.core_stop - cols.start))
            if labels is None:
                labels = np.empty((n, height, width), part_labels.dtype)
                if scores:
                    logits = np.empty((n, height, width, part_logits.shape[3]), np.float32)
            labels[core] = part_labels[inner]
            if scores:
                logits[core] = part_logits[inner]
            self.tiles_run += 1
        return labels, logits

    def close(self):
        self.segmenter.close()
