"""Small stand-ins for an insightface model folder (SCRFD detector + ArcFace recogniser).

Real antelopev2/buffalo_l files cannot be downloaded in tests, so this module writes ONNX
models with the same inputs and outputs; insightface's `model_zoo.get_model` routes them to
its SCRFD and ArcFaceONNX classes exactly like the real files, and the real decoding code
(anchor centres, distance2bbox, distance2kps, threshold, NMS, norm_crop) runs on their outputs.

The "faces" they know are synthetic: a saturated green square (G high, R and B low) whose
R/B texture carries the identity; `draw_face` paints one. The detector:

* finds green pixels, then for every anchor of each stride (8, 16, 32) measures the area,
  centroid and spread of the green inside a fixed window around the anchor (one
  convolution), so the square's side is sqrt(area) and its centre the centroid;
* scores high only at the anchor nearest the square's centre, when the side is in the
  stride's size range, the spread is that of one solid square and no green crosses the
  window's border (otherwise the moments would describe a cut-out or two faces at once);
* scores 0 when the square has less than 10 % of its side of image around it on any side,
  which stands in for the real failure this pack works around: tightly cropped faces are not
  found until the photo is padded (faces in one window, closer than about a window apart,
  are not found either: tests keep them apart);
* regresses the box and five landmarks (the ArcFace template stretched over the square), so
  `norm_crop` hands the recogniser exactly the square.

The recogniser is a fixed random projection of the crop's 8x8-pooled, mean-removed colours:
the same texture at any size gives nearly the same embedding, different textures nearly
orthogonal ones.

Public API: `write_face_models(folder)`, `draw_face(image, x, y, size, identity)`,
`synthetic_photo(height, width, faces)`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DETECTOR_FILE = "det_10g.onnx"
RECOGNIZER_FILE = "w600k_r50.onnx"

# (stride, smallest and largest square side in detector-input pixels). Ranges overlap so
# every side from 10 to 320 pixels is found at some stride; NMS merges double finds.
_LEVELS = ((8, 10.0, 44.0), (16, 40.0, 112.0), (32, 100.0, 320.0))
_CONTEXT = 0.1  # image needed around the square, as a fraction of its side
_ARCFACE_TEMPLATE = np.array(  # insightface's arcface_dst: landmark positions in a 112 crop
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32) / 112.0
_OUTPUT_WIDTHS = {"score": 1, "bbox": 4, "kps": 10}
_EMBEDDING_DIM = 512
_OPSET = 13
_IR_VERSION = 8  # readable by onnxruntime releases back to 1.10


class _Graph:
    """Collects nodes and initialisers; each op call returns the new tensor's name."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def _name(self, kind: str) -> str:
        return f"{self.prefix}{kind}_{len(self.nodes) + len(self.initializers)}"

    def const(self, value, dtype=np.float32) -> str:
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs) -> str:
        # Node names never start with "Sub" or "Mul": ArcFaceONNX would take such a graph
        # for an old mxnet export and skip the 127.5 mean / std normalisation.
        name = self._name(op_type.lower())
        out = output or name + "_out"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def model(self, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.prefix + "graph", inputs, outputs,
                                  initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                                  producer_name="hypernet tests")
        model.ir_version = _IR_VERSION
        onnx.checker.check_model(model)
        return model


def _window_kernel(cell: int, half_cells: int) -> np.ndarray:
    """Conv weights [6, 1, 2h+2, 2h+2]: green area, first and second x/y moments (pixels)
    inside the window, and the green fraction of the one-cell ring around it.

    Input cells are `cell` x `cell` averages; the window of 2h cells is centred on the anchor
    (pads h+1 before, h after, stride 2), so cell k's centre lies `cell * (k - h - 0.5)` pixels
    from it. A green ring means the window cuts through a bigger green area, whose cut-out
    would otherwise pass for a square centred on the anchor.
    """
    size = 2 * half_cells + 2
    offsets = cell * (np.arange(size) - half_cells - 0.5)
    inside = np.zeros(size)
    inside[1:-1] = 1.0
    window = inside[None, :] * inside[:, None]
    ring = (1.0 - window) / (size * size - window.sum())
    area = float(cell * cell) * window
    dx, dy = offsets[None, :], offsets[:, None]
    kernel = np.stack([area, area * dx, area * dy, area * dx**2, area * dy**2, ring])
    return kernel[:, None].astype(np.float32)


def _geometry_heads(stride: int) -> tuple[np.ndarray, np.ndarray]:
    """1x1 conv weights mapping (cx, cy, side) to SCRFD's bbox and kps outputs, 2 anchors.

    SCRFD decodes distances in stride units: box = anchor -/+ (left, top, right, bottom),
    landmark = anchor + (dx, dy).
    """
    half = 0.5
    bbox = [[-1, 0, half], [0, -1, half], [1, 0, half], [0, 1, half]]
    kps = []
    for tx, ty in _ARCFACE_TEMPLATE:
        kps += [[1, 0, tx - half], [0, 1, ty - half]]

    def two_anchors(rows) -> np.ndarray:
        rows = np.array(rows, dtype=np.float32) / stride
        return np.concatenate([rows, rows])[:, :, None, None]

    return two_anchors(bbox), two_anchors(kps)


def _detector_level(g: _Graph, green: str, stride: int, smallest: float, largest: float):
    """Score [n,1], bbox [n,4] and kps [n,10] outputs of one stride, n = h*w*2 anchors."""
    cell = stride // 2
    half_cells = int(np.ceil((largest / 2 + stride / 2) / cell))  # square fits in the window
    cells = g.op("AveragePool", green, kernel_shape=[cell, cell], strides=[cell, cell])
    pad = half_cells + 1
    moments = g.op("Conv", cells, g.const(_window_kernel(cell, half_cells)),
                   strides=[2, 2], pads=[pad, pad, pad - 1, pad - 1])
    area, mx, my, mxx, myy, ring = (
        g.op("Slice", moments, g.const([i], np.int64), g.const([i + 1], np.int64),
             g.const([1], np.int64)) for i in range(6))
    safe_area = g.op("Max", area, g.const(1.0))
    cx = g.op("Div", mx, safe_area)
    cy = g.op("Div", my, safe_area)
    side = g.op("Sqrt", area)
    geometry = g.op("Concat", cx, cy, side, axis=1)

    # Score: the minimum of soft conditions, each 0.5 exactly at its limit.
    off_centre = g.op("Max", g.op("Abs", cx), g.op("Abs", cy))
    centred = g.op("Sub", g.const(1.5), g.op("Mul", off_centre, g.const(2.0 / stride)))
    big_enough = g.op("Add", g.op("Div", g.op("Sub", side, g.const(smallest)),
                                  g.const(0.1 * smallest)), g.const(0.5))
    small_enough = g.op("Add", g.op("Div", g.op("Sub", g.const(largest), side),
                                    g.const(0.1 * largest)), g.const(0.5))
    # Distance from the square to each image edge, with anchor positions from cumulative sums.
    ones = g.op("ConstantOfShape", g.op("Shape", area),
                value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    axis_w, axis_h = g.const(3, np.int64), g.const(2, np.int64)
    half_side = g.op("Mul", side, g.const(0.5))
    margins = []
    for axis, centre in ((axis_w, cx), (axis_h, cy)):
        # Anchor position / stride counted from the start, and (size - position) / stride.
        before = g.op("Sub", g.op("CumSum", ones, axis), g.const(1.0))
        after = g.op("CumSum", ones, axis, reverse=1)
        for cells, toward_edge in ((before, "Add"), (after, "Sub")):
            anchor_to_edge = g.op("Mul", cells, g.const(float(stride)))
            margins.append(g.op("Sub", g.op(toward_edge, anchor_to_edge, centre), half_side))
    margin = g.op("Min", *margins)
    context = g.op("Add", g.op("Div", g.op("Sub", margin, g.op("Mul", side, g.const(_CONTEXT))),
                               g.op("Max", g.op("Mul", side, g.const(_CONTEXT / 2)), g.const(1.0))),
                   g.const(0.5))
    # One solid square has variance side**2 / 12 along x and y; other green in the window
    # (another face, a non-square blob) inflates it. Cells lose cell**2 / 12 of it.
    solid = []
    for moment2, centre in ((mxx, cx), (myy, cy)):
        variance = g.op("Sub", g.op("Div", moment2, safe_area), g.op("Mul", centre, centre))
        ratio = g.op("Div", g.op("Add", g.op("Mul", variance, g.const(12.0)),
                                 g.const(float(cell * cell))), safe_area)
        solid.append(g.op("Sub", g.const(1.0),
                          g.op("Mul", g.op("Abs", g.op("Sub", ratio, g.const(1.0))), g.const(2.0))))
    isolated = g.op("Sub", g.const(1.0), g.op("Mul", ring, g.const(10.0)))  # 0.5 at 5 % green
    score = g.op("Clip", g.op("Min", centred, big_enough, small_enough, *solid, isolated,
                              context),
                 g.const(0.0), g.const(1.0))

    bbox_w, kps_w = _geometry_heads(stride)
    maps = {
        "score": g.op("Concat", score, score, axis=1),
        "bbox": g.op("Conv", geometry, g.const(bbox_w)),
        "kps": g.op("Conv", geometry, g.const(kps_w)),
    }
    # [1, 2*c, h, w] -> [h*w*2, c]: anchors of one location are consecutive, as SCRFD expects.
    return {key: g.op("Reshape", g.op("Transpose", value, perm=[0, 2, 3, 1]),
                      g.const([-1, _OUTPUT_WIDTHS[key]], np.int64), output=f"{key}_{stride}")
            for key, value in maps.items()}


def detector_model() -> onnx.ModelProto:
    """SCRFD-shaped detector: input.1 [1,3,?,?] -> scores, bboxes, kps for strides 8/16/32."""
    g = _Graph("det_")
    # SCRFD's input is (BGR->RGB pixel - 127.5) / 128. Green where G exceeds both R and B
    # by more than 0.5 (64 pixel levels), fully green from 0.75 on.
    difference = g.op("Conv", "input.1",
                      g.const(np.array([[-4, 4, 0], [0, 4, -4]])[:, :, None, None]),
                      g.const([-2.0, -2.0]))
    green = g.op("Clip", g.op("ReduceMin", difference, axes=[1], keepdims=1),
                 g.const(0.0), g.const(1.0))
    levels = [_detector_level(g, green, *level) for level in _LEVELS]
    output_names = [level[key] for key in ("score", "bbox", "kps") for level in levels]
    # Rank 2 [anchors, width] like det_10g: 0.7.3 reads no batch axis, 2.1 fixes these dims.
    outputs = []
    for name in output_names:
        key, stride = name.split("_")
        outputs.append(helper.make_tensor_value_info(
            name, TensorProto.FLOAT, [f"anchors_{stride}", _OUTPUT_WIDTHS[key]]))
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])]
    return g.model(inputs, outputs)


def recognizer_model(seed: int = 0) -> onnx.ModelProto:
    """ArcFace-shaped recogniser: input.1 [N,3,112,112] -> [N,512], a fixed random projection."""
    g = _Graph("rec_")
    pooled = g.op("AveragePool", "input.1", kernel_shape=[8, 8], strides=[8, 8])  # [N,3,14,14]
    centred = g.op("Sub", pooled, g.op("ReduceMean", pooled, axes=[2, 3], keepdims=1))
    features = g.op("Flatten", centred, axis=1)
    projection = np.random.default_rng(seed).standard_normal((3 * 14 * 14, _EMBEDDING_DIM))
    g.op("MatMul", features, g.const(projection / np.sqrt(projection.shape[0])), output="embedding")
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                             ["None", _EMBEDDING_DIM])]
    return g.model(inputs, outputs)


def write_face_models(folder, *, detector_file: str = DETECTOR_FILE,
                      recognizer_file: str = RECOGNIZER_FILE) -> dict[str, Path]:
    """Write the detector and recogniser into `folder` (created); returns their paths.

    Keys: "folder", "detector", "recognizer". The default file names are buffalo_l's.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"folder": folder, "detector": folder / detector_file,
             "recognizer": folder / recognizer_file}
    onnx.save(detector_model(), paths["detector"])
    onnx.save(recognizer_model(), paths["recognizer"])
    return paths


def draw_face(image: np.ndarray, x: int, y: int, size: int, identity: int = 0) -> np.ndarray:
    """Paint a synthetic face (green square, identity-specific R/B texture) in place.

    `image` is RGB uint8 HxWx3; (x, y) is the top-left corner; the square is clipped to the
    image. The texture is an 8x8 pattern scaled to `size`, so one identity looks the same
    at any size.
    """
    pattern = np.random.default_rng(identity).integers(0, 110, size=(8, 8, 2))
    rows = np.arange(size) * 8 // size
    texture = pattern[rows][:, rows]
    face = np.empty((size, size, 3), dtype=np.uint8)
    face[..., 0], face[..., 1], face[..., 2] = texture[..., 0], 230, texture[..., 1]
    height, width = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size, width), min(y + size, height)
    image[y0:y1, x0:x1] = face[y0 - y:y1 - y, x0 - x:x1 - x]
    return image


def synthetic_photo(height: int, width: int, faces=(), seed: int = 0) -> np.ndarray:
    """A dark, noisy RGB uint8 background with faces drawn from (x, y, size, identity) tuples."""
    image = np.random.default_rng(seed).integers(20, 70, size=(height, width, 3)).astype(np.uint8)
    for x, y, size, identity in faces:
        draw_face(image, x, y, size, identity)
    return image
